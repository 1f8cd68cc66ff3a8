"""How much of a session's file activity goes into its log.

boxd reports every change it sees, with a diff. A workload that rewrites many files over
and over would otherwise fill the database (150 files every 0.3 s once grew it by 535 MB
in 45 s). Two token buckets per session bound what is stored:

- events: a burst of ``file_changes_burst``, then ``file_changes_per_second``. When it
  is empty, the changes of the next ``file_changes_window_seconds`` are not logged one by
  one: they are folded into one ``file_changes_coalesced`` event (how many changes, to
  how many files, and the first paths), written when the window ends;
- diff bytes: a burst of ``file_diff_burst_bytes``, then ``file_diff_bytes_per_second``.
  A change whose diff does not fit is logged without it (``diff`` null,
  ``diff_truncated`` true). Each diff is cut at ``file_diff_max_bytes`` whatever boxd
  sent.

The buckets belong to the session, not to one watcher, so a box restart does not
refill them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sophon.box.protocol import Change
from sophon.config import Settings
from sophon.events.types import FileChange, FileChangesCoalesced

LISTED_PATHS = 100  # paths named in one coalesced event
LISTED_BYTES = 16 * 1024  # ... and at most this much text of them
TRACKED_PATHS = 10_000  # distinct paths counted exactly in one window; more are "at least"


class _Bucket:
    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.level, self.at = burst, now

    def refill(self, now: float) -> float:
        self.level = min(self.burst, self.level + (now - self.at) * self.rate)
        self.at = now
        return self.level


class ChangeLimiter:
    def __init__(self, settings: Settings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        now = clock()
        self.events = _Bucket(settings.file_changes_per_second, settings.file_changes_burst,
                              now)
        self.diff_bytes = _Bucket(settings.file_diff_bytes_per_second,
                                  settings.file_diff_burst_bytes, now)
        self.diff_max = settings.file_diff_max_bytes
        self.window = settings.file_changes_window_seconds
        self._opened: float | None = None  # when the current window of folding began
        self._paths: set[str] = set()
        self._untracked = 0
        self._changes = 0

    def admit(self, ch: Change) -> FileChange | None:
        """The event to log for this change, or None if it was folded into the window."""
        now = self.clock()
        if self._opened is None and self.events.refill(now) >= 1:
            self.events.level -= 1
            return self._event(ch, now)
        if self._opened is None:
            self._opened = now
        self._changes += 1
        if ch.path in self._paths or len(self._paths) < TRACKED_PATHS:
            self._paths.add(ch.path)
        else:
            self._untracked += 1
        return None

    def _event(self, ch: Change, now: float) -> FileChange:
        diff, cut = ch.diff, ch.diff_truncated
        if diff is not None and len(diff) > self.diff_max:
            diff, cut = diff[:self.diff_max], True
        if diff is not None:
            if self.diff_bytes.refill(now) >= len(diff):
                self.diff_bytes.level -= len(diff)
            else:
                diff, cut = None, True
        return FileChange(path=ch.path, change=ch.change, size=ch.size, diff=diff,
                          diff_truncated=cut, binary=ch.binary)

    def wait(self) -> float:
        """Seconds until the open window ends (a whole window if none is open)."""
        if self._opened is None:
            return self.window
        return max(0.0, self._opened + self.window - self.clock())

    def due(self) -> FileChangesCoalesced | None:
        """The coalesced event, once the open window has ended."""
        if self._opened is None or self.clock() < self._opened + self.window:
            return None
        return self.flush()

    def flush(self) -> FileChangesCoalesced | None:
        """Whatever was folded so far, as one event; the window closes."""
        if self._opened is None:
            return None
        listed: list[str] = []
        size = 0
        for path in sorted(self._paths):
            if len(listed) >= LISTED_PATHS or size + len(path) > LISTED_BYTES:
                break
            listed.append(path)
            size += len(path)
        event = FileChangesCoalesced(
            changes=self._changes, files=len(self._paths) + self._untracked, paths=listed,
            seconds=round(self.clock() - self._opened, 3))
        self._opened, self._paths, self._untracked, self._changes = None, set(), 0, 0
        return event
