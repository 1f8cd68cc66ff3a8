"""Box ids: the first letter says what a box is for, the rest tells boxes apart.

The letter is how start-up recovery, the manager and the files API tell a thread's box
from a session's without a database read, so every id is made and read here.
"""

from __future__ import annotations

import uuid
from enum import StrEnum


class Kind(StrEnum):
    EXECUTION = "x"  # the execution API's: a thread's, a one-off's, the pool's
    SESSION = "s"    # a session's: "s" + the session id's hex
    STAGING = "g"    # a clone's staging box, never kept
    VOLUME = "v"     # a volume's files box: "v" + the volume's id
    BUILD = "b"      # a user image's build box (box/builds.py), never kept


def new_id(kind: Kind) -> str:
    """A fresh id for a box of ``kind`` (32 characters, as every box id is)."""
    return kind + uuid.uuid4().hex[:31]


def box_id(kind: Kind, key: str) -> str:
    """The id of the box of ``kind`` that belongs to ``key`` (a session's or volume's)."""
    return kind + key


def kind_of(box_id: str) -> Kind | None:
    """The kind of a box, or None for an id none of ours has."""
    try:
        return Kind(box_id[:1])
    except ValueError:
        return None


def key_of(box_id: str, kind: Kind) -> str | None:
    """What ``box_id(kind, key)`` was made from, or None for a box of another kind."""
    return box_id[1:] if kind_of(box_id) is kind else None
