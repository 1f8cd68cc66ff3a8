"""The typed session events: every type documented, frozen, discriminated by ``type``,
and flat on the wire (``type``, ``seq``, ``ts`` and the event's own fields)."""

from __future__ import annotations

import re
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic
import pytest

from sophon.events import types

DOC = Path(__file__).resolve().parents[2] / "docs" / "EVENTS.md"
ENVELOPE = {"type", "seq", "ts"}

# One valid wire dict per type, with every required field (and a few optional ones).
SAMPLES: dict[str, dict[str, Any]] = {
    "session_start": {"name": "demo", "base": "python", "model": "sonnet",
                      "runtime": "native", "starter": {"type": "empty"}},
    "session_end": {"reason": "deleted"},
    "session_error": {"code": "interrupted", "message": "cut off"},
    "status": {"status": "sleeping", "detail": "box stopped after idle"},
    "user": {"content": "hello"},
    "assistant": {"text": "hi"},
    "thinking": {"text": "hmm", "signature": "sig"},
    "tool_use": {"tool_use_id": "toolu_1", "tool": "Bash", "input": {"command": "ls"}},
    "tool_output": {"tool_use_id": "toolu_1", "stream": "stdout", "data": "step 1\n",
                    "index": 0},
    "tool_result": {"tool_use_id": "toolu_1", "content": "a.txt", "is_error": False},
    "file_change": {"path": "a.txt", "change": "modified", "size": 3,
                    "diff": "--- a/a.txt\n+++ b/a.txt\n", "diff_truncated": False,
                    "binary": False},
    "approval_request": {"approval_id": "apr_1", "tool": "Bash",
                         "input": {"command": "rm -rf build"}, "reason": "first shell use"},
    "approval_decision": {"approval_id": "apr_1", "decision": "allow", "remember": True,
                          "by": "alice"},
    "exec_start": {"exec_id": "exe_1", "command": "echo hi"},
    "exec_output": {"exec_id": "exe_1", "stream": "stderr", "data": "hi\n"},
    "exec_end": {"exec_id": "exe_1", "exit_code": 0, "duration_ms": 12},
    "usage": {"model": "claude-sonnet-4-5", "input_tokens": 10, "output_tokens": 5,
              "cost_usd": 0.001},
    "task_update": {"task_id": "1", "subject": "tests", "status": "in_progress"},
    "file_changes_coalesced": {"changes": 450, "files": 150, "paths": ["a.txt", "b.txt"],
                               "seconds": 5.0},
    "network_denied": {"host": "example.com", "port": 443, "rule": "not_allowed",
                       "message": "example.com:443 is not on this sandbox's network list"},
    "checkpoint": {"checkpoint_id": "cp_0123456789abcdef", "commit": "a" * 40, "turn": 2,
                   "step": 1, "reason": "tool", "tool_use_id": "toolu_1",
                   "files": [{"path": "a.txt", "change": "added"}], "files_changed": 1},
    "rewind": {"checkpoint_id": "cp_0123456789abcdef", "to_seq": 7, "files": True,
               "conversation": True, "undo": "cp_fedcba9876543210"},
    "review": {"turn": 2, "rejected": [{"path": "a.py", "hunk": 0,
                                        "patch": "diff --git a/a.py b/a.py\n"}],
               "comments": [{"path": "a.py", "line": 3, "text": "name it better"}]},
}


def union_classes() -> dict[str, type[pydantic.BaseModel]]:
    """The members of the ``Event`` union, by their ``type`` tag."""
    union, *_ = typing.get_args(types.Event)
    classes = typing.get_args(union)
    assert classes, "Event is not an Annotated union"
    return {cls.model_fields["type"].default: cls for cls in classes}


def own_fields(cls: type[pydantic.BaseModel]) -> set[str]:
    return set(cls.model_fields) - ENVELOPE


def documented(doc: Path = DOC) -> dict[str, set[str]]:
    """Each type named in the first column of a table under "## Types" in EVENTS.md,
    with the fields its second column names (values in parentheses left out)."""
    text = doc.read_text()
    section = text.split("\n## Types", 1)[1].split("\n## ", 1)[0]
    found: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not re.fullmatch(r"`[a-z_]+`", cells[0]):
            continue
        fields = re.sub(r"\([^)]*\)", "", cells[1])
        name = cells[0].strip("`")
        assert name not in found, f"{name} is documented twice"
        found[name] = set(re.findall(r"`([a-z_]+)`", fields))
    return found


ALL = sorted(union_classes())


def test_the_union_and_event_types_agree() -> None:
    assert sorted(types.EVENT_TYPES) == ALL
    assert len(set(types.EVENT_TYPES)) == len(types.EVENT_TYPES)
    # Every model defined in the module is in the union (none forgotten there).
    defined = {obj.model_fields["type"].default for obj in vars(types).values()
               if isinstance(obj, type) and issubclass(obj, types._Event)
               and obj is not types._Event}
    assert defined == set(ALL)
    assert set(SAMPLES) == set(ALL), "add a sample for each new event type"


def check_documented(docs: dict[str, set[str]]) -> None:
    missing = set(ALL) - set(docs)
    assert not missing, f"event types missing from docs/EVENTS.md: {sorted(missing)}"
    stale = set(docs) - set(ALL)
    assert not stale, f"docs/EVENTS.md documents types that do not exist: {sorted(stale)}"
    classes = union_classes()
    for name in ALL:
        assert docs[name] == own_fields(classes[name]), (
            f"{name}: documented fields {sorted(docs[name])}, "
            f"model fields {sorted(own_fields(classes[name]))}")


def test_every_type_is_documented_with_its_fields() -> None:
    check_documented(documented())


def test_the_envelope_is_documented() -> None:
    text = DOC.read_text()
    envelope = text.split("## The envelope", 1)[1].split("\n## ", 1)[0]
    for field in ENVELOPE:
        assert f"| `{field}` |" in envelope, field


def test_the_doc_check_can_fail(tmp_path: Path) -> None:
    """A doc without one type's row, or missing one field, is caught."""
    lines = DOC.read_text().splitlines()
    fake = tmp_path / "EVENTS.md"
    fake.write_text("\n".join(x for x in lines if not x.startswith("| `exec_output` |")))
    with pytest.raises(AssertionError, match="missing.*exec_output"):
        check_documented(documented(fake))
    fake.write_text("\n".join(x.replace("`duration_ms`, ", "") for x in lines))
    with pytest.raises(AssertionError, match="exec_end.*duration_ms"):
        check_documented(documented(fake))


@pytest.mark.parametrize("name", ALL)
def test_wire_dict_validates_to_the_right_class(name: str) -> None:
    classes = union_classes()
    wire = {"type": name, "seq": 7, "ts": "2025-01-02T03:04:05.000006Z", **SAMPLES[name]}
    event = types.from_wire(wire)
    assert type(event) is classes[name]
    assert event.seq == 7
    assert event.ts == datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    # The same from JSON text, as it is stored and streamed.
    assert types.from_wire(pydantic.TypeAdapter(dict).dump_json(wire)) == event


@pytest.mark.parametrize("name", ALL)
def test_events_are_frozen(name: str) -> None:
    event = types.from_wire({"type": name, **SAMPLES[name]})
    for field in ("seq", "ts", *own_fields(type(event))):
        with pytest.raises(pydantic.ValidationError, match="frozen"):
            setattr(event, field, getattr(event, field))
    with pytest.raises(pydantic.ValidationError):
        event.type = "user"  # type: ignore[misc]
    with pytest.raises((pydantic.ValidationError, AttributeError)):
        event.not_a_field = 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ALL)
def test_wire_form_is_flat(name: str) -> None:
    cls = union_classes()[name]
    event = cls.model_validate(SAMPLES[name])
    assert event.seq == 0  # set by the log when appended
    wire = types.to_wire(event.model_copy(update={"seq": 3}))
    assert set(wire) == ENVELOPE | own_fields(cls)
    assert wire["type"] == name and wire["seq"] == 3
    ts = datetime.fromisoformat(wire["ts"].replace("Z", "+00:00"))
    assert ts.utcoffset() is not None and ts.utcoffset().total_seconds() == 0
    for key, value in SAMPLES[name].items():
        assert wire[key] == value, key  # the event's own fields, at the top level
    assert types.from_wire(wire) == event.model_copy(update={"seq": 3})


def test_the_wire_fields_the_issue_names() -> None:
    request = types.to_wire(types.from_wire({"type": "approval_request",
                                              **SAMPLES["approval_request"]}))
    assert {"approval_id", "tool", "input", "reason"} <= set(request)
    change = types.to_wire(types.from_wire({"type": "file_change", **SAMPLES["file_change"]}))
    assert {"path", "change", "diff"} <= set(change)


@pytest.mark.parametrize("bad", [
    {"type": "no_such_event"},
    {"content": "no type"},
    {"type": "user"},                                     # a required field missing
    {"type": "user", "content": "x", "text": "extra"},    # a field of another type
    {"type": "file_change", "path": "a", "change": "renamed"},
    {"type": "exec_output", "exec_id": "e", "stream": "stdin", "data": ""},
])
def test_invalid_wire_dicts_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        types.from_wire(bad)


def test_the_union_is_discriminated_by_type() -> None:
    schema = types.event_adapter().json_schema()
    assert schema["discriminator"]["propertyName"] == "type"
    assert set(schema["discriminator"]["mapping"]) == set(ALL)
    # A wrong tag is reported as such, not as a failure of every member.
    with pytest.raises(pydantic.ValidationError) as exc:
        types.from_wire({"type": "nope"})
    assert [e["type"] for e in exc.value.errors()] == ["union_tag_invalid"]
