"""The conversation, rebuilt from a session's events: the log is the memory.

After a restart the next turn continues with exactly what the log holds. Blocks of one
model reply (thinking, text, tool uses) form one assistant message; tool results form
the user message after it. A tool use whose result never came (a turn cut off) gets an
error result, so the history is always one the API accepts.
"""

from __future__ import annotations

import bisect
from typing import Any

INTERRUPTED = "The tool call was interrupted before it finished."


def block_of(ev: Any) -> dict[str, Any] | None:
    if ev.type == "assistant":
        return {"type": "text", "text": ev.text} if ev.text else None
    if ev.type == "thinking":
        if not ev.signature:
            return None  # an unsigned (cut off) thinking block cannot be sent back
        return {"type": "thinking", "thinking": ev.text, "signature": ev.signature}
    if ev.type == "tool_use":
        return {"type": "tool_use", "id": ev.tool_use_id, "name": ev.tool, "input": ev.input}
    if ev.type == "tool_result":
        return {"type": "tool_result", "tool_use_id": ev.tool_use_id, "content": ev.content,
                "is_error": ev.is_error}
    if ev.type == "user":
        return {"type": "text", "text": ev.content}
    return None


def effective(events: list[Any]) -> list[Any]:
    """The events that make the conversation now: a conversation rewind (a ``rewind``
    event) puts it back as it was at its ``to_seq``, and what follows goes on from
    there. Rewinds nest (a rewind to a point inside a rewound stretch, or an undo, which
    is a rewind to the checkpoint taken just before one): each event points at the one
    before it in the conversation, and the conversation as of any seq is where it stood."""
    parent: dict[int, int] = {}  # seq -> the seq before it in the conversation (0: none)
    head_at: list[tuple[int, int]] = []  # (seq, the conversation's last seq after it)
    by_seq: dict[int, Any] = {}
    head = 0
    for ev in events:
        if ev.type == "rewind" and ev.conversation:
            head = _head_as_of(head_at, ev.to_seq)
        else:
            by_seq[ev.seq] = ev
            parent[ev.seq] = head
            head = ev.seq
        head_at.append((ev.seq, head))
    out: list[Any] = []
    while head:
        out.append(by_seq[head])
        head = parent[head]
    out.reverse()
    return out


def _head_as_of(head_at: list[tuple[int, int]], seq: int) -> int:
    i = bisect.bisect_right(head_at, (seq, float("inf"))) - 1
    return head_at[i][1] if i >= 0 else 0


def rebuild(events: list[Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for ev in effective(events):
        block = block_of(ev)
        if block is None:
            continue
        role = "assistant" if ev.type in ("assistant", "thinking", "tool_use") else "user"
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].append(block)
        else:
            messages.append({"role": role, "content": [block]})
    return _repair(messages)


def _repair(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        out.append(msg)
        if msg["role"] != "assistant":
            continue
        asked = [b["id"] for b in msg["content"] if b["type"] == "tool_use"]
        if not asked:
            continue
        nxt = messages[i + 1] if i + 1 < len(messages) else None
        answered = {b.get("tool_use_id") for b in nxt["content"]} if nxt else set()
        missing = [{"type": "tool_result", "tool_use_id": tid, "content": INTERRUPTED,
                    "is_error": True} for tid in asked if tid not in answered]
        if not missing:
            continue
        if nxt is not None and nxt["role"] == "user":
            # Results first: the API wants them at the start of the next user message.
            nxt["content"][:0] = missing
        else:
            out.append({"role": "user", "content": missing})
    # Tool results must lead their message, before any text the user sent afterwards.
    for msg in out:
        if msg["role"] == "user":
            msg["content"].sort(key=lambda b: b["type"] != "tool_result")
    return out


def tasks_of(events: list[Any]) -> dict[str, dict[str, Any]]:
    tasks: dict[str, dict[str, Any]] = {}
    for ev in events:
        if ev.type == "task_update":
            tasks[ev.task_id] = {"subject": ev.subject, "status": ev.status,
                                 "description": ev.description}
    return tasks


def review_note(reviews: list[Any]) -> str:
    """What the agent is told of reviews since its last message, before that message."""
    parts: list[str] = []
    for r in reviews:
        if r.rejected:
            patches = "".join(h.patch for h in r.rejected)
            parts.append(f"I reviewed what turn {r.turn} changed and rejected these hunks; "
                         f"they have been reverted in the workspace, so do not make them "
                         f"again as they were:\n```diff\n{patches}```")
        if r.comments:
            lines = "\n".join(f"- {c.path}:{c.line}: {c.text}" for c in r.comments)
            parts.append(f"My comments on what turn {r.turn} changed:\n{lines}")
    return "\n\n".join(parts)
