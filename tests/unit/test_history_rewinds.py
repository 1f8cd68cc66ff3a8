"""The conversation through rewinds (agent/history.py ``effective``): a rewind puts it
back as it stood at its ``to_seq``; what follows goes on from there; a rewind to a point
inside a rewound stretch, or an undo, resolves the same way."""

from __future__ import annotations

from typing import Any

from sophon.agent import history
from sophon.events.types import Assistant, Rewind, User


def log(*items: Any) -> list[Any]:
    """Events numbered 1, 2, ...: a str is a user message, ("a", text) the agent's
    answer, ("rw", to_seq) a rewind of the conversation, ("files", to_seq) of files."""
    out: list[Any] = []
    for seq, item in enumerate(items, 1):
        if isinstance(item, str):
            out.append(User(content=item, seq=seq))
        elif item[0] == "a":
            out.append(Assistant(text=item[1], seq=seq))
        else:
            out.append(Rewind(checkpoint_id="cp_0123456789abcdef", to_seq=item[1],
                              files=True, conversation=item[0] == "rw", undo="cp_x"))
            out[-1] = out[-1].model_copy(update={"seq": seq})
    return out


def said(events: list[Any]) -> list[str]:
    """What the conversation holds: the messages of ``effective``'s events."""
    return [e.content if e.type == "user" else e.text for e in history.effective(events)
            if e.type in ("user", "assistant")]


def test_no_rewind_is_the_whole_log() -> None:
    assert said(log("one", ("a", "1"), "two")) == ["one", "1", "two"]


def test_a_rewind_cuts_back_and_the_conversation_goes_on() -> None:
    events = log("one", ("a", "1"), "two", ("a", "2"), ("rw", 2), "three")
    assert said(events) == ["one", "1", "three"]
    assert history.rebuild(events)[-1]["content"][-1]["text"] == "three"


def test_a_files_only_rewind_leaves_the_conversation() -> None:
    assert said(log("one", ("a", "1"), ("files", 1), "two")) == ["one", "1", "two"]


def test_an_undo_brings_back_what_a_rewind_cut() -> None:
    # Seq 4 is where the conversation stood just before the rewind at 5: going back to
    # it (the undo) brings "two" and "2" back, and drops what came after the rewind.
    events = log("one", ("a", "1"), "two", ("a", "2"), ("rw", 2), "three", ("rw", 4), "four")
    assert said(events) == ["one", "1", "two", "2", "four"]


def test_a_rewind_into_a_point_after_an_earlier_rewind() -> None:
    events = log("one", ("a", "1"), "two", ("rw", 2), "three", ("a", "3"), "four",
                 ("rw", 6), "five")
    assert said(events) == ["one", "1", "three", "3", "five"]


def test_a_rewind_to_before_everything_empties_it() -> None:
    assert said(log("one", ("a", "1"), ("rw", 0), "fresh")) == ["fresh"]
