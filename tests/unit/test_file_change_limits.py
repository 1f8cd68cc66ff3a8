"""The per-session bounds on file-change events (sessions/file_changes.py), on a fake
clock: a burst, then the rate; beyond it, one coalesced event per window; diffs cut
and budgeted."""

from __future__ import annotations

from sophon.box.protocol import Change
from sophon.config import Settings
from sophon.events.types import FileChange
from sophon.sessions.file_changes import ChangeLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def change(path: str, diff: str | None = "+x\n") -> Change:
    return Change(id=1, kind="change", path=path, change="modified", size=1, diff=diff)


def limiter(clock: Clock, **kw: object) -> ChangeLimiter:
    base: dict[str, object] = {"file_changes_per_second": 10, "file_changes_burst": 5,
                               "file_changes_window_seconds": 2}
    return ChangeLimiter(Settings(**{**base, **kw}), clock)  # type: ignore[arg-type]


def test_a_burst_then_one_coalesced_event_per_window_then_single_events_again() -> None:
    clock = Clock()
    lim = limiter(clock)
    got = [lim.admit(change(f"f{i}")) for i in range(5)]
    assert all(isinstance(e, FileChange) for e in got)
    assert [lim.admit(change(f"f{i % 3}")) for i in range(7)] == [None] * 7
    assert lim.due() is None
    clock.now += 2
    folded = lim.due()
    assert folded is not None
    assert (folded.changes, folded.files, folded.paths) == (7, 3, ["f0", "f1", "f2"])
    assert lim.due() is None and lim.flush() is None
    # The window refilled the bucket (2 s at 10/s, at most the burst of 5).
    assert all(lim.admit(change("g")) is not None for _ in range(5))
    assert lim.admit(change("g")) is None


def test_diffs_are_cut_and_budgeted() -> None:
    clock = Clock()
    lim = limiter(clock, file_changes_burst=100, file_diff_max_bytes=1024,
                  file_diff_burst_bytes=3000, file_diff_bytes_per_second=1000)
    first = lim.admit(change("a", "x" * 5000))
    assert first is not None and first.diff == "x" * 1024 and first.diff_truncated
    second = lim.admit(change("b", "y" * 1024))
    assert second is not None and second.diff == "y" * 1024
    third = lim.admit(change("c", "z" * 1024))  # 952 bytes left: over the budget
    assert third is not None and third.diff is None and third.diff_truncated
    clock.now += 1
    fourth = lim.admit(change("d", "w" * 1024))
    assert fourth is not None and fourth.diff == "w" * 1024 and not fourth.diff_truncated
