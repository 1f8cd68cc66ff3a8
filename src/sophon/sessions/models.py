"""Wire models of the sessions API."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from sophon.images.sizing import SizeRequest

MODEL_ALIASES = ("opus", "sonnet", "haiku")
# Whole-string patterns: checked with ``fullmatch`` (``re.match`` with ``$`` lets a
# trailing newline through); pydantic's ``pattern`` (Rust regex) anchors ``$`` at the end.
SECRET_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,127}")
MODEL_ID = re.compile(r"claude-[a-z0-9.\-]+")
WEBHOOK_URL = r"^https?://[^\s\x00-\x1f\x7f]*$"
# Request bodies: no unknown fields, no coercion ("10" or true is not a number of
# seconds or turns, 0 is not false), and no infinite numbers (1e999 is not a budget).
REQUEST = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class EmptyStarter(BaseModel):
    type: Literal["empty"] = "empty"


class GitStarter(BaseModel):
    type: Literal["git"]
    url: str = Field(min_length=1, max_length=2048)
    ref: str | None = Field(None, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")


class TemplateStarter(BaseModel):
    type: Literal["template"]
    name: str = Field(min_length=1, max_length=64)


Starter = Annotated[EmptyStarter | GitStarter | TemplateStarter, Field(discriminator="type")]

ShellPolicy = Literal["ask_once", "allow", "deny"]
ToolPolicy = Literal["allow", "ask", "deny"]


class ApprovalPolicy(BaseModel):
    model_config = REQUEST

    shell: ShellPolicy = "ask_once"
    tools: dict[str, ToolPolicy] = Field(default_factory=dict)
    # An approval nobody answers in this long gets on_timeout as its answer (by
    # "timeout"); none: it waits for the owner.
    timeout_seconds: int | None = Field(None, ge=5, le=7 * 86400)
    on_timeout: Literal["allow", "deny"] = "deny"
    # Only its form here (this model also shows stored policies); where it may go is the
    # outbound-webhook policy of sophon.webhooks, checked by the session service when
    # it is given and again before each call.
    webhook: str | None = Field(None, max_length=2048, pattern=WEBHOOK_URL)


class NetworkSettings(BaseModel):
    """What a session's box may reach beyond its base's list (sophon/egress)."""

    model_config = REQUEST

    # host, host:port, *.domain (ports 80 and 443 unless one is named); checked against
    # the admin's ceiling by the session service.
    allow: list[Annotated[str, Field(min_length=1, max_length=260)]] = Field(
        default_factory=list, max_length=200)
    # A host outside the list becomes an approval request instead of a refusal.
    ask: bool = False


ConnectorName = Annotated[str, Field(min_length=1, max_length=63)]


class McpServer(BaseModel):
    """An MCP server whose tools the session's agent gets, as ``mcp__<name>__<tool>``
    (each gated by the approval policy: ask unless it says otherwise): a ``command`` run
    in the session's sandbox (spoken to on its standard input and output), or a ``url``
    reached from the sandbox through its egress door (its host joins the session's
    network list)."""

    model_config = REQUEST

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$",
                      description="Its tools are called mcp__<name>__<tool>")
    command: list[Annotated[str, Field(min_length=1, max_length=4096)]] | None = Field(
        None, min_length=1, max_length=64, description="The program and its arguments, "
                                                       "run in /workspace")
    url: str | None = Field(None, max_length=2000, pattern=r"^https?://[^\s/]+",
                            description="An MCP server over streamable HTTP")
    # Not secret: shown back, and the sandbox holds them. A credential for the host
    # belongs in an http connector, which the door puts in and no box ever holds.
    headers: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9-]{1,64}$")],
                  Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict, max_length=16,
        description="Sent to a url server; not secret (use an http connector for a token)")
    env: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")],
              Annotated[str, Field(max_length=4096)]] = Field(default_factory=dict,
                                                              max_length=32)

    @model_validator(mode="after")
    def _one_kind(self) -> McpServer:
        if (self.command is None) == (self.url is None):
            raise ValueError(f"MCP server {self.name}: give a command or a url, one of them")
        try:
            self.host()
        except ValueError as exc:  # a port that is not a number
            raise ValueError(f"MCP server {self.name}: {exc}") from None
        return self

    def host(self) -> str | None:
        """host:port of a url server (what its session's network list must allow)."""
        if self.url is None:
            return None
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.hostname}:{port}"


def _unique_names(servers: list[McpServer] | None) -> list[McpServer] | None:
    names = [s.name for s in servers or []]
    if len(names) != len(set(names)):
        raise ValueError("each MCP server needs a name of its own")
    return servers


class CreateSession(BaseModel):
    model_config = REQUEST

    name: str = Field(min_length=1, max_length=200)
    starter: Starter = Field(default_factory=EmptyStarter)
    base: str = "generic"
    model: str = Field("sonnet", min_length=1, max_length=100)
    system_prompt: str | None = Field(None, max_length=100_000)
    runtime: Literal["native", "claude-code"] = "native"
    approval: ApprovalPolicy = Field(default_factory=ApprovalPolicy)
    max_turns: int | None = Field(None, ge=1, le=10_000)
    max_budget_usd: float | None = Field(None, gt=0)
    # The hard quota of /workspace and /home/user together; default the base's (else
    # SOPHON_BOX_DISK_MB), at most SOPHON_BOX_DISK_MAX_MB (checked by the service: a 400
    # naming the ceiling). ``limits``: memory, CPU and processes, likewise (images/sizing).
    disk_mb: int | None = Field(None, ge=16, le=1024 * 1024)
    limits: SizeRequest | None = None
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    connectors: list[ConnectorName] = Field(default_factory=list, max_length=50)
    mcp_servers: list[McpServer] = Field(default_factory=list, max_length=10)

    _names = field_validator("mcp_servers")(_unique_names)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if v in MODEL_ALIASES or MODEL_ID.fullmatch(v):
            return v
        raise ValueError("model must be opus, sonnet, haiku or a full model id (claude-...)")


class UpdateSession(BaseModel):
    model_config = REQUEST

    name: str | None = Field(None, min_length=1, max_length=200)
    system_prompt: str | None = Field(None, max_length=100_000)
    approval: ApprovalPolicy | None = None
    max_turns: int | None = Field(None, ge=1, le=10_000)
    max_budget_usd: float | None = Field(None, gt=0)
    network: NetworkSettings | None = None
    connectors: list[ConnectorName] | None = Field(None, max_length=50)
    mcp_servers: list[McpServer] | None = Field(None, max_length=10)
    # The conversation carries over (agent/service.py, switch_runtime); not during a turn.
    runtime: Literal["native", "claude-code"] | None = None

    _names = field_validator("mcp_servers")(_unique_names)

    @model_validator(mode="after")
    def _no_null_for_required(self) -> UpdateSession:
        # null clears an optional limit or the system prompt; a session always has these.
        for name in ("name", "approval", "network", "connectors", "mcp_servers", "runtime"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null; leave it out to keep it")
        return self


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class DiskInfo(BaseModel):
    used_bytes: int
    limit_bytes: int | None  # None: this box has no quota (an unprivileged server)


class BoxSize(BaseModel):
    memory_mb: int
    cpus: float
    pids: int


class SessionView(BaseModel):
    id: str
    name: str
    status: Literal["idle", "running", "waiting_approval", "sleeping", "error"]
    base: str
    image: str | None = Field(None, description=(
        "The digest of the base's image the box runs on; null: the host's own /usr (a "
        "session made before images, or a server without them)"))
    limits: BoxSize | None = Field(None, description=(
        "The box's memory (MiB), CPUs and processes: its base's defaults or what the "
        "session asked for"))
    image_name: str | None = Field(None, description=(
        "The image of yours the session was made on (its `base` is then that image's "
        "built-in base); null: the base's own image"))
    model: str
    runtime: str
    system_prompt: str | None
    starter: dict[str, object]
    approval: ApprovalPolicy
    created_at: datetime
    last_activity_at: datetime
    usage: Usage
    max_turns: int | None = None
    max_budget_usd: float | None = None
    last_seq: int
    disk: DiskInfo
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    connectors: list[str] = Field(default_factory=list)
    mcp_servers: list[McpServer] = Field(default_factory=list)


class SendMessage(BaseModel):
    model_config = REQUEST

    content: str = Field(min_length=1, max_length=1_000_000)
    queue: bool = False


class SessionPage(BaseModel):
    sessions: list[SessionView]
    next_cursor: str | None = None


class ExecRequest(BaseModel):
    model_config = REQUEST

    command: str = Field(min_length=1, max_length=100_000)
    timeout: int = Field(600, ge=1, le=3600)


class Decision(BaseModel):
    model_config = REQUEST

    decision: Literal["allow", "deny"]
    remember: bool = False
    reason: str | None = Field(None, max_length=2000)


class SecretValue(BaseModel):
    model_config = REQUEST

    value: str = Field(min_length=1, max_length=65_536)


def check_secret_name(name: str) -> str:
    if not SECRET_NAME.fullmatch(name):
        raise ValueError("secret names are uppercase letters, digits and '_', "
                         "starting with a letter (e.g. GITHUB_TOKEN)")
    return name


class FileEntry(BaseModel):
    path: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mtime: float


class FileTree(BaseModel):
    entries: list[FileEntry]
    truncated: bool = False


class FileContent(BaseModel):
    path: str
    size: int
    etag: str | None
    binary: bool = False
    truncated: bool = False
    content: str | None = None
    encoding: Literal["utf-8", "base64"] | None = None


CHECKPOINT_ID = re.compile(r"^cp_[0-9a-f]{16}$")


def _checkpoint_id(value: str) -> str:
    if not CHECKPOINT_ID.fullmatch(value):
        raise ValueError(f"{value!r} is not a checkpoint id: they look like "
                         "cp_0123456789abcdef (GET /v1/sessions/{id}/checkpoints lists them)")
    return value


CheckpointId = Annotated[str, Field(max_length=64, description="A checkpoint's id (GET "
                                    ".../checkpoints)", json_schema_extra={
                                        "pattern": CHECKPOINT_ID.pattern}),
                         AfterValidator(_checkpoint_id)]


class CheckpointView(BaseModel):
    id: str
    seq: int  # the checkpoint event's place in the log
    turn: int
    step: int | None
    reason: str
    tool_use_id: str | None
    ts: datetime
    commit: str
    files: list[dict[str, str]]
    files_changed: int


class CheckpointList(BaseModel):
    checkpoints: list[CheckpointView]


class RewindRequest(BaseModel):
    model_config = REQUEST

    checkpoint: CheckpointId
    files: bool = True
    conversation: bool = True


class ForkRequest(BaseModel):
    model_config = REQUEST

    checkpoint: CheckpointId
    name: str | None = Field(None, min_length=1, max_length=200)


class CheckpointDiff(BaseModel):
    base: str  # the commits compared (a checkpoint's, or git's empty tree)
    head: str
    diff: str


class RejectHunk(BaseModel):
    model_config = REQUEST

    path: str = Field(min_length=1, max_length=4096)
    hunk: int = Field(ge=0, le=100_000, description="The hunk's place in the file's diff, "
                                                    "from 0 (GET .../turns/{n}/diff)")


class LineComment(BaseModel):
    model_config = REQUEST

    path: str = Field(min_length=1, max_length=4096)
    line: int = Field(ge=1, le=10_000_000, description="A line of the file after the turn")
    text: str = Field(min_length=1, max_length=20_000)


class ReviewRequest(BaseModel):
    model_config = REQUEST

    reject: list[RejectHunk] = Field(default_factory=list, max_length=1000)
    comments: list[LineComment] = Field(default_factory=list, max_length=200)
