"""The SQL schema. Changes go through an Alembic migration in ``migrations/versions``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    """A stored time as the API shows times: UTC, ending in Z (SQLite hands times back
    without their zone; they were written in UTC)."""
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).isoformat().replace("+00:00", "Z")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # sha256 of the key: keys are 256 random bits, so a fast hash is enough.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Thread(Base):
    """A Baponi thread: a user's named, persistent box."""

    __tablename__ = "threads"
    __table_args__ = (UniqueConstraint("user_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # also the box id
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Written at most hourly (sandbox/threads.py); what thread expiry goes by.
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                          nullable=True, default=utcnow)
    # The node that runs its box (sophon/cluster/ownership.py); None: none yet.
    node_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)


class Execution(Base):
    __tablename__ = "executions"
    trace_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    thread_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    language: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    delivery_mode: Mapped[str] = mapped_column(String(16), default="inline")
    stdout: Mapped[str] = mapped_column(Text, default="")
    stderr: Mapped[str] = mapped_column(Text, default="")
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(String(64), nullable=True)
    output_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    meta: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 index=True)  # pruned by age
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Where the result is POSTed when the execution ends (sophon.webhooks), and
    # how that went: pending, delivered or failed. None without a webhook.
    webhook_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    webhook_delivery_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # The node it runs on: a node that dies cuts off only its own.
    node_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)


class SessionRow(Base):
    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    base: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(100))
    runtime: Mapped[str] = mapped_column(String(32))
    system_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    starter: Mapped[dict[str, Any]] = mapped_column(JSON)
    approval: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(32))
    box_id: Mapped[str] = mapped_column(String(40))
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    max_turns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_budget_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    # sha256 of the token a runtime inside the box uses to reach the model gateway.
    gateway_token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True,
                                                           unique=True)
    # What the box may reach beyond its base's list ({"allow": [...], "ask": bool}), and
    # the names of the user's connectors it uses (sophon/egress).
    network: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    connectors: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    # The MCP servers whose tools its agent gets (agent/mcp_servers.py), as given.
    mcp_servers: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    # The user's own image it was made on (``base`` is then that image's built-in base).
    image: Mapped[str | None] = mapped_column(String(63), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 index=True)
    last_activity_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The node that runs its box, watcher and turns (sophon/cluster/ownership.py).
    node_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)


class EventRow(Base):
    __tablename__ = "events"
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    data: Mapped[str] = mapped_column(Text)  # the event's wire JSON, already redacted

    __table_args__ = (Index("ix_events_session_type", "session_id", "type", "seq"),)


class SecretRow(Base):
    __tablename__ = "secrets"
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)  # encrypted (Fernet)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApprovalRow(Base):
    __tablename__ = "approvals"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    tool: Mapped[str] = mapped_column(String(64))
    input: Mapped[dict[str, Any]] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # pending | allow | deny
    remember: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class OpenExec(Base):
    """An exec that started and has not ended: one a crash cut off, if still here at start."""

    __tablename__ = "open_execs"
    exec_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))


class UsageRecord(Base):
    """One metered model call. Kept when its session is deleted: budgets are per user."""

    __tablename__ = "usage_records"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    session_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    model: Mapped[str] = mapped_column(String(100))
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    cache_read_tokens: Mapped[int] = mapped_column(Integer)
    cache_write_tokens: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[float] = mapped_column(Float)


class WebSession(Base):
    """A browser's sign-in (the dashboard's cookie). Only the cookie's sha256 is kept."""

    __tablename__ = "web_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the cookie
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # The key it was made with: deleting (revoking) the key ends the sign-in. None for a
    # sign-in made with a one-time link.
    api_key_id: Mapped[str | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=True, index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class SignInLink(Base):
    """A one-time sign-in link (`sophon users sign-in-link`). Only the token's sha256."""

    __tablename__ = "sign_in_links"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the token
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WebhookSecret(Base):
    """A user's webhook signing secret (``whsec_...``), Fernet-encrypted with the key of
    session secrets: the server signs with it, so it cannot be kept as a hash."""

    __tablename__ = "webhook_secrets"
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    secret: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Volume(Base):
    """A user's named, persistent storage, mounted at /data/<name>/ in that user's boxes
    (``volumes/<id>/`` under the data directory; see docs/ARCHITECTURE.md, "Volumes")."""

    __tablename__ = "volumes"
    __table_args__ = (UniqueConstraint("user_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    size_mb: Mapped[int] = mapped_column(Integer)
    # The host group that owns its files: every box that mounts it gets this group.
    gid: Mapped[int] = mapped_column(Integer, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Connector(Base):
    """A user's credential for a host (sophon/egress/connectors.py): the door puts it on
    the wire; no box ever holds it. ``value`` is sealed like session secrets."""

    __tablename__ = "connectors"
    __table_args__ = (UniqueConstraint("user_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    type: Mapped[str] = mapped_column(String(16))
    value: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    header: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # Whether the execution API's threads of every one of the user's keys get it.
    execute: Mapped[bool] = mapped_column(Boolean, default=False)
    # Type-specific rules, e.g. github's {"push": ["owner/repo:branch", ...]}.
    rules: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class NetworkUsage(Base):
    """What a session's or a thread's boxes sent and received through the egress door."""

    __tablename__ = "network_usage"
    owner_id: Mapped[str] = mapped_column(String(40), primary_key=True)  # session or thread
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)  # box to the network
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    connections: Mapped[int] = mapped_column(Integer, default=0)
    denied: Mapped[int] = mapped_column(Integer, default=0)


class ImageRow(Base):
    """A user's image (sophon/images/service.py): a built-in base and what is added to
    it. The built image is kept by its digest (sophon/images/store.py), shared by every
    user whose definition is the same."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("user_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    base: Mapped[str] = mapped_column(String(16))
    # apt, pip, npm, run, env, allow, description: as the user gave them.
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    digest: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16))  # building | ready | failed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class NodeRow(Base):
    """A server sharing this database (sophon/cluster/nodes.py): where other nodes reach
    it, its last heartbeat, and its load then."""

    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                   index=True)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    boxes_awake: Mapped[int] = mapped_column(Integer, default=0)
    memory_available_mb: Mapped[int] = mapped_column(Integer, default=0)
    # Being drained (``sophon node drain``): given no new work, handing its sessions on.
    draining: Mapped[bool] = mapped_column(Boolean, default=False)
