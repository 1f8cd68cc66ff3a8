"""The script a scripted model server plays: what to answer to each request, in order.

A script is data (YAML or JSON) rather than Python so that tests, demos and bug reports can
share one format, and so that a script can be pushed to a server running in another process.
Every model forbids unknown keys: a misspelt ``last_tool_result_contain`` should fail loudly
when the script loads, not silently never match.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sophon.testing.conversation import Conversation

StopReason = Literal["end_turn", "tool_use", "max_tokens", "stop_sequence", "pause_turn",
                     "refusal"]

# The status the real API uses for each error type, so a script can name just one of them.
ERROR_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_STATUS_ERROR = {status: kind for kind, status in ERROR_STATUS.items()}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextBlock(_Strict):
    type: Literal["text"] = "text"
    text: str


class ThinkingBlock(_Strict):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None  # None: the server makes one up


class ToolUseBlock(_Strict):
    type: Literal["tool_use"]
    name: str
    input: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None  # None: the server makes up a toolu_... id on each reply


Block = Annotated[TextBlock | ThinkingBlock | ToolUseBlock, Field(discriminator="type")]


class Usage(_Strict):
    """Token counts to report; any left out are estimated (~4 characters a token)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class ErrorSpec(_Strict):
    """An HTTP error answered instead of a message. Name the status, the type, or both."""

    status: int | None = None
    type: str | None = None
    message: str = "Overloaded"
    headers: dict[str, str] = Field(default_factory=dict)  # e.g. {"x-should-retry": "false"}

    @model_validator(mode="after")
    def _fill_in(self) -> ErrorSpec:
        if self.status is None and self.type is None:
            self.status, self.type = 529, "overloaded_error"
        elif self.status is None:
            self.status = ERROR_STATUS.get(self.type or "", 500)
        elif self.type is None:
            self.type = _STATUS_ERROR.get(self.status, "api_error")
        return self


class StreamErrorSpec(_Strict):
    """An ``event: error`` sent mid-stream, after the first delta of block ``in_block``.

    With ``in_block`` at or past the number of blocks, every block is sent first and the error
    replaces ``message_delta``. A non-streaming request gets the matching HTTP error instead.
    """

    type: str = "overloaded_error"
    message: str = "Overloaded"
    in_block: int = Field(default=0, ge=0)


class Reply(_Strict):
    content: list[Block] = Field(default_factory=list)
    stop_reason: StopReason | None = None  # None: tool_use if any tool_use block, else end_turn
    usage: Usage = Field(default_factory=Usage)
    delay_ms: int = Field(default=0, ge=0)  # pause before answering
    chunk_delay_ms: int = Field(default=0, ge=0)  # pause between streamed events (for demos)
    error: ErrorSpec | None = None
    stream_error: StreamErrorSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """A bare string is a text reply; a bare string in ``content`` is a text block."""
        if isinstance(data, str):
            return {"content": [{"type": "text", "text": data}]}
        if isinstance(data, Mapping) and isinstance(data.get("content"), str | list):
            content = data["content"]
            items = [content] if isinstance(content, str) else content
            data = {**data, "content": [{"type": "text", "text": item} if isinstance(item, str)
                                        else item for item in items]}
        return data

    @model_validator(mode="after")
    def _one_failure(self) -> Reply:
        if self.error is not None and self.stream_error is not None:
            raise ValueError("a reply has either error or stream_error, not both")
        return self

    @property
    def resolved_stop_reason(self) -> StopReason:
        if self.stop_reason is not None:
            return self.stop_reason
        if any(isinstance(block, ToolUseBlock) for block in self.content):
            return "tool_use"
        return "end_turn"


class Condition(_Strict):
    """All the fields given must hold; an empty condition always holds.

    ``last_user_contains`` looks at the text of the latest user message that has text (so
    after a tool round trip it still sees the prompt); the tool-result fields look at the
    tool_result blocks of the latest message that has any, and fail when there are none.
    """

    last_tool_result_contains: str | None = None
    last_user_contains: str | None = None
    system_contains: str | None = None
    tool_result_is_error: bool | None = None

    def matches(self, conversation: Conversation) -> bool:
        results = conversation.last_tool_results
        checks = [
            self.last_tool_result_contains is None
            or any(self.last_tool_result_contains in r.text for r in results),
            self.last_user_contains is None
            or self.last_user_contains in conversation.last_user_text,
            self.system_contains is None or self.system_contains in conversation.system_text,
            self.tool_result_is_error is None
            or (bool(results)
                and any(r.is_error for r in results) == self.tool_result_is_error),
        ]
        return all(checks)


class Rule(_Strict):
    when: Condition = Field(default_factory=Condition)
    reply: Reply


class Turn(_Strict):
    """One request's answer: a fixed ``reply``, or ``rules`` tried in order then ``default``."""

    reply: Reply | None = None
    rules: list[Rule] | None = None
    default: Reply | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """A string, or a mapping without ``reply``/``rules``, is the reply itself."""
        if isinstance(data, str) or (isinstance(data, Mapping)
                                     and "reply" not in data and "rules" not in data):
            return {"reply": data}
        return data

    @model_validator(mode="after")
    def _one_kind(self) -> Turn:
        if (self.reply is None) == (self.rules is None):
            raise ValueError("a turn has either reply or rules")
        if self.reply is not None and self.default is not None:
            raise ValueError("default only goes with rules")
        return self

    def choose(self, conversation: Conversation) -> Reply | None:
        """The reply for this request, or None when no rule matches and there is no default."""
        if self.reply is not None:
            return self.reply
        for rule in self.rules or []:
            if rule.when.matches(conversation):
                return rule.reply
        return self.default


class Script(_Strict):
    turns: list[Turn] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """A bare list is the list of turns."""
        return {"turns": data} if isinstance(data, list) else data


SCRIPT_ENDED = Reply(content=[TextBlock(text="(the script has ended)")], stop_reason="end_turn")


def parse_script(data: Script | Mapping[str, Any] | list[Any]) -> Script:
    """A script from already-parsed data (what ``yaml.safe_load`` or ``json.loads`` give)."""
    return data if isinstance(data, Script) else Script.model_validate(data)


def loads_script(text: str) -> Script:
    """A script from YAML or JSON text (JSON is read by the YAML parser too)."""
    return parse_script(yaml.safe_load(text) or {})


def load_script(path: str | Path) -> Script:
    """A script from a ``.json`` file, or a YAML file (any other suffix)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        return parse_script(json.loads(text))
    return loads_script(text)
