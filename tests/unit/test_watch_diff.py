"""boxd's file-change diffs: a real unified diff, in linear time for large rewrites."""

from __future__ import annotations

import difflib
import random
import re
import time

import pytest

from sophon.box.agent import watch

HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def apply(a: list[str], diff: str) -> list[str]:
    """Apply a one-hunk unified diff to ``a``, checking its removed lines match."""
    header, *body = diff.splitlines(keepends=True)[2:]
    m = HUNK.match(header)
    assert m is not None, header
    start, length = int(m.group(1)), int(m.group(2) or 1)
    at = start - 1 if length else start
    old = [line[1:] for line in body if line[0] in " -"]
    new = [line[1:] for line in body if line[0] in " +"]
    assert a[at:at + length] == old
    return a[:at] + new + a[at + length:]


@pytest.mark.parametrize("seed", range(300))
def test_the_linear_diff_turns_the_old_text_into_the_new(seed: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "MATCH_LIMIT", 0)  # the linear path for every change
    rnd = random.Random(seed)
    a = [f"{rnd.randint(0, 5)}\n" for _ in range(rnd.randint(0, 15))]
    b = list(a)
    i = rnd.randint(0, len(b))
    j = rnd.randint(i, len(b))
    b[i:j] = [f"n{rnd.randint(0, 9)}\n" for _ in range(rnd.randint(0, 4))]
    if a != b:
        assert apply(a, watch.unified(a, b, "a/f", "b/f")) == b


@pytest.mark.parametrize("a, b", [
    ([f"{i}\n" for i in range(50)], [f"x{i}\n" for i in range(50)]),  # every line
    ([], [f"{i}\n" for i in range(50)]),                                # created
    ([f"{i}\n" for i in range(50)], []),                                # emptied
])
def test_whole_file_changes_match_difflib_exactly(a: list[str], b: list[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "MATCH_LIMIT", 0)
    assert watch.unified(a, b, "a/f", "b/f") == "".join(difflib.unified_diff(a, b, "a/f", "b/f"))


def test_a_large_rewrite_is_diffed_quickly() -> None:
    assert watch.MATCH_LIMIT < 20000
    # Line i becomes "i0", which was line 10*i: difflib alone takes seconds on this.
    a = [f"{i}\n" for i in range(1, 20001)]
    b = [f"{i}0\n" for i in range(1, 20001)]
    started = time.monotonic()
    diff = watch.unified(a, b, "a/big.txt", "b/big.txt")
    assert time.monotonic() - started < 0.5
    assert apply(a, diff) == b


def test_small_changes_still_get_difflibs_minimal_hunks() -> None:
    a = [f"{i}\n" for i in range(1, 20001)]
    b = list(a)
    b[10], b[4000] = "ten\n", "four thousand\n"  # a changed stretch under MATCH_LIMIT
    diff = watch.unified(a, b, "a/f", "b/f")
    assert diff == "".join(difflib.unified_diff(a, b, "a/f", "b/f"))
    assert diff.count("@@ -") == 2
