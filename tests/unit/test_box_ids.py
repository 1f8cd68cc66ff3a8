"""Box ids: what start-up recovery, the manager and the files API read a box's kind from."""

from __future__ import annotations

from sophon.box import ids
from sophon.sessions.service import box_id_of, session_id_of


def test_every_kind_round_trips_and_strangers_have_none() -> None:
    for kind in ids.Kind:
        made = ids.new_id(kind)
        assert len(made) == 32 and ids.kind_of(made) is kind
        assert ids.key_of(ids.box_id(kind, "abc"), kind) == "abc"
    assert ids.kind_of("q123") is None and ids.kind_of("") is None
    assert ids.key_of(ids.new_id(ids.Kind.EXECUTION), ids.Kind.VOLUME) is None


def test_a_session_and_its_box_name_each_other() -> None:
    box = box_id_of("ses_0123abcd")
    assert box == "s0123abcd" and session_id_of(box) == "ses_0123abcd"
    assert session_id_of(ids.new_id(ids.Kind.STAGING)) is None
