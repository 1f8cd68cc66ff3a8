"""Box uids from one range, shared by the nodes of a cluster (one data directory): no
two boxes ever get the same uid, whichever node gives it, and a box keeps its uid
whichever node runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sophon.box.uids import UidPool
from sophon.errors import BoxUnavailable


def test_two_nodes_never_give_one_uid_twice_and_read_each_others(tmp_path: Path) -> None:
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    a, b = UidPool(boxes, 1000, 4), UidPool(boxes, 1000, 4)
    given = [a.get("x1")[0], b.get("x2")[0], a.get("x3")[0], b.get("x4")[0]]
    assert sorted(given) == [1000, 1001, 1002, 1003]
    with pytest.raises(BoxUnavailable):
        a.get("x5")
    # A box made by one node keeps its uid on the other, and is not new there.
    assert b.get("x1") == (given[0], False)
    # A uid given back (its box deleted) is given again.
    (boxes / "x2" / "uid").unlink()
    b.release("x2")
    assert a.get("x6") == (given[1], True)


def test_a_box_whose_uid_file_went_gets_the_uid_it_had_claimed(tmp_path: Path) -> None:
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    first = UidPool(boxes, 1000, 4).get("old")[0]
    UidPool(boxes, 1000, 4).get("other")
    (boxes / "old" / "uid").unlink()
    assert UidPool(boxes, 1000, 4).get("old") == (first, True)
    assert oct((tmp_path / "box-uids" / str(first)).stat().st_mode & 0o777) == "0o600"
