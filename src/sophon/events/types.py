"""The typed events of a session. Every fact about a session is one of these.

On the wire (SSE, JSON pages, events.jsonl) an event is one JSON object with ``type``,
``seq`` and ``ts`` and its own fields at the top level. docs/EVENTS.md documents each.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


def _now() -> datetime:
    return datetime.now(UTC)


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int = 0  # assigned by the log when the event is appended
    ts: datetime = Field(default_factory=_now)


class SessionStart(_Event):
    type: Literal["session_start"] = "session_start"
    name: str
    base: str
    model: str
    runtime: str
    starter: dict[str, Any]


class SessionEnd(_Event):
    type: Literal["session_end"] = "session_end"
    reason: str


class SessionError(_Event):
    type: Literal["session_error"] = "session_error"
    code: str
    message: str


class Status(_Event):
    type: Literal["status"] = "status"
    status: str
    detail: str | None = None


class User(_Event):
    type: Literal["user"] = "user"
    content: str


class Assistant(_Event):
    type: Literal["assistant"] = "assistant"
    text: str


class Thinking(_Event):
    type: Literal["thinking"] = "thinking"
    text: str
    signature: str | None = None


class ToolUse(_Event):
    type: Literal["tool_use"] = "tool_use"
    tool_use_id: str
    tool: str
    input: dict[str, Any]


class ToolResult(_Event):
    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str
    content: str
    is_error: bool = False


class ToolOutput(_Event):
    """What a running tool call (the agent's Bash) printed, as it prints; its
    ``tool_result`` follows when it ends. ``index`` counts the call's pieces from 0."""

    type: Literal["tool_output"] = "tool_output"
    tool_use_id: str
    stream: Literal["stdout", "stderr"]
    data: str
    index: int


class FileChange(_Event):
    type: Literal["file_change"] = "file_change"
    path: str
    change: Literal["created", "modified", "deleted"]
    size: int | None = None
    diff: str | None = None
    diff_truncated: bool = False
    binary: bool = False


class FileChangesCoalesced(_Event):
    """Files changed faster than the session's file_change rate: the changes of one
    window, folded into this one event instead of one event each."""

    type: Literal["file_changes_coalesced"] = "file_changes_coalesced"
    changes: int  # changes folded in
    files: int  # distinct files among them
    paths: list[str]  # the first of those files, sorted (up to 100)
    seconds: float  # the window they were seen in


class ApprovalRequest(_Event):
    type: Literal["approval_request"] = "approval_request"
    approval_id: str
    tool: str
    input: dict[str, Any]
    reason: str
    # When it is answered for the owner, if nobody has by then (and with what).
    expires_at: datetime | None = None
    on_timeout: Literal["allow", "deny"] | None = None


class ApprovalDecision(_Event):
    type: Literal["approval_decision"] = "approval_decision"
    approval_id: str
    decision: Literal["allow", "deny"]
    remember: bool = False
    by: str
    reason: str | None = None


class ExecStart(_Event):
    type: Literal["exec_start"] = "exec_start"
    exec_id: str
    command: str


class ExecOutput(_Event):
    type: Literal["exec_output"] = "exec_output"
    exec_id: str
    stream: Literal["stdout", "stderr"]
    data: str


class ExecEnd(_Event):
    type: Literal["exec_end"] = "exec_end"
    exec_id: str
    exit_code: int
    error: str | None = None
    duration_ms: int = 0
    truncated: bool = False


class Usage(_Event):
    type: Literal["usage"] = "usage"
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0


class TaskUpdate(_Event):
    type: Literal["task_update"] = "task_update"
    task_id: str
    subject: str
    status: Literal["pending", "in_progress", "completed"]
    description: str | None = None


class NetworkDenied(_Event):
    """A connection from the session's box that the egress door refused."""

    type: Literal["network_denied"] = "network_denied"
    host: str
    port: int
    rule: str  # not_allowed, private_address, sophon_server, denied, approval_denied, ...
    message: str


class CheckpointFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    change: Literal["added", "modified", "deleted"]


class Checkpoint(_Event):
    """The whole working tree (untracked files in, ignored ones out) as it was at this
    point, kept as a commit under the repository's hidden ``refs/sophon/checkpoints/``;
    taken after a tool call that can change files, a save, an exec, at a turn's start and
    end, and around a rewind, when something changed. ``files`` is what changed since the
    checkpoint before it (the first ``FILES_LISTED``; ``files_changed`` counts them all)."""

    type: Literal["checkpoint"] = "checkpoint"
    checkpoint_id: str
    commit: str
    turn: int  # the turn it was taken in or after, counted from 1 (0: before the first)
    step: int | None = None  # the tool call in that turn, counted from 1
    reason: Literal["tool", "turn_start", "turn_end", "save", "exec", "before_rewind",
                    "rewind", "review"]
    tool_use_id: str | None = None
    files: list[CheckpointFile] = Field(default_factory=list)
    files_changed: int = 0
    # Older checkpoints removed as this one was taken (SOPHON_CHECKPOINT_KEEP).
    pruned: list[str] = Field(default_factory=list)


class Rewind(_Event):
    """The session went back to a checkpoint: its files (restored exactly), its
    conversation (the agent's history is cut back to ``to_seq``: the events after it, up to
    this one, are rewound, kept in the log but no longer part of what the agent is sent),
    or both. ``undo`` is the checkpoint taken just before, which a rewind to undoes it."""

    type: Literal["rewind"] = "rewind"
    checkpoint_id: str
    to_seq: int
    files: bool
    conversation: bool
    undo: str


class ReviewHunk(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    hunk: int  # its place among the file's hunks in the turn's diff, from 0
    patch: str  # the file's header and that hunk, as the turn's diff had them


class ReviewComment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    line: int
    text: str


class Review(_Event):
    """The owner reviewed a turn's changes: ``rejected`` hunks were reverted in the
    workspace, and they and the ``comments`` are told to the agent with the next message
    (at once, when there are comments: they are a message of their own)."""

    type: Literal["review"] = "review"
    turn: int
    rejected: list[ReviewHunk] = Field(default_factory=list)
    comments: list[ReviewComment] = Field(default_factory=list)


Event = Annotated[
    SessionStart | SessionEnd | SessionError | Status | User | Assistant | Thinking
    | ToolUse | ToolOutput | ToolResult | FileChange | ApprovalRequest | ApprovalDecision
    | ExecStart | ExecOutput | ExecEnd | Usage | TaskUpdate | FileChangesCoalesced
    | NetworkDenied | Checkpoint | Rewind | Review,
    Field(discriminator="type"),
]
_adapter: list[TypeAdapter[Any]] = []


def event_adapter() -> TypeAdapter[Any]:
    """Built on first use: the union's schema costs tens of ms, which a CLI that never
    parses an event should not pay at start-up."""
    if not _adapter:
        _adapter.append(TypeAdapter(Event))
    return _adapter[0]


EVENT_TYPES: tuple[str, ...] = tuple(
    m.model_fields["type"].default for m in _Event.__subclasses__()
)


def to_wire(event: BaseModel) -> dict[str, Any]:
    return event.model_dump(mode="json")


def from_wire(data: dict[str, Any] | str | bytes) -> Any:
    if isinstance(data, str | bytes):
        return event_adapter().validate_json(data)
    return event_adapter().validate_python(data)
