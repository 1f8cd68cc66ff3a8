"""One host uid per box, from a configured range.

A box runs as its own unprivileged host uid, and its files are owned by it, so an escape
from one box's namespaces reaches no other box's files. The uid of a box is recorded in
``boxes/<id>/uid`` (root-owned, outside the directories the box can see), so it survives
restarts; deleting the box's directory releases it. A uid is only handed out again once
the directory of its former box is gone, so a new owner never meets old files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sophon.errors import BoxUnavailable

log = logging.getLogger(__name__)


class UidPool:
    def __init__(self, boxes_dir: Path, first: int, count: int) -> None:
        self.boxes_dir = boxes_dir
        self.first, self.count = first, count
        self._by_box: dict[str, int] = {}
        for d in boxes_dir.iterdir() if boxes_dir.is_dir() else ():
            uid = self._read(d / "uid")
            if uid is not None:
                self._by_box[d.name] = uid
        self._used = set(self._by_box.values())

    @staticmethod
    def _read(path: Path) -> int | None:
        try:
            return int(path.read_text())
        except (OSError, ValueError):
            return None

    def get(self, box_id: str) -> tuple[int, bool]:
        """The box's uid, and whether it was assigned just now."""
        uid = self._by_box.get(box_id)
        if uid is not None:
            return uid, False
        free = next((u for u in range(self.first, self.first + self.count)
                     if u not in self._used), None)
        if free is None:
            # One-off executions give theirs back as they end; threads and sessions only
            # when deleted (or expired: SOPHON_THREAD_EXPIRY_DAYS).
            raise BoxUnavailable(
                f"all {self.count} box uids are in use (from {self.first}); delete unused "
                "threads or sessions, or raise SOPHON_BOX_UID_COUNT", retry_after=30)
        d = self.boxes_dir / box_id
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "uid.tmp"
        tmp.write_text(f"{free}\n")
        tmp.chmod(0o644)
        os.replace(tmp, d / "uid")
        self._by_box[box_id] = free
        self._used.add(free)
        return free, True

    def release(self, box_id: str) -> None:
        """Call once the box's directory is gone."""
        uid = self._by_box.pop(box_id, None)
        if uid is not None:
            self._used.discard(uid)

    def in_use(self) -> int:
        return len(self._used)
