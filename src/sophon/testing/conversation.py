"""What script conditions look at in a Messages request: system text, user text, tool results.

Requests come from clients under test, so nothing here assumes a well-formed body beyond what
the server has already validated; odd shapes simply contribute no text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolResult:
    tool_use_id: str
    text: str
    is_error: bool


@dataclass(frozen=True)
class Conversation:
    system_text: str = ""
    last_user_text: str = ""
    last_tool_results: list[ToolResult] = field(default_factory=list)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Conversation:
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        user_texts = [_text(m.get("content")) for m in messages if m.get("role") == "user"]
        results: list[ToolResult] = []
        for message in reversed(messages):
            results = _tool_results(message.get("content"))
            if results:
                break
        return cls(system_text=_text(body.get("system")),
                   last_user_text=next((t for t in reversed(user_texts) if t), ""),
                   last_tool_results=results)


def _text(content: Any) -> str:
    """The text of a string or of the text blocks in a list (tool results excluded)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "\n".join(block["text"] for block in content
                     if isinstance(block, dict) and block.get("type") == "text"
                     and isinstance(block.get("text"), str))


def _tool_results(content: Any) -> list[ToolResult]:
    if not isinstance(content, list):
        return []
    return [ToolResult(tool_use_id=str(block.get("tool_use_id", "")),
                       text=_text(block.get("content")),
                       is_error=block.get("is_error") is True)
            for block in content
            if isinstance(block, dict) and block.get("type") == "tool_result"]
