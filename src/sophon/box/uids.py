"""One host uid per box, from a configured range.

A box runs as its own unprivileged host uid, and its files are owned by it, so an escape
from one box's namespaces reaches no other box's files. The uid of a box is recorded in
``boxes/<id>/uid`` (root-owned, outside the directories the box can see), so it survives
restarts; deleting the box's directory releases it. A uid is only handed out again once
the directory of its former box is gone, so a new owner never meets old files.

Nodes that share the data directory (a cluster) share the range: a uid is taken by
creating ``box-uids/<uid>`` exclusively, which only one process can do, and a box's uid
written by another node is read from its directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from sophon.errors import BoxUnavailable

log = logging.getLogger(__name__)


class UidPool:
    def __init__(self, boxes_dir: Path, first: int, count: int) -> None:
        self.boxes_dir = boxes_dir
        self.claims = boxes_dir.parent / "box-uids"
        self.claims.mkdir(mode=0o700, exist_ok=True)
        self.first, self.count = first, count
        self._by_box: dict[str, int] = {}
        for d in boxes_dir.iterdir() if boxes_dir.is_dir() else ():
            uid = self._read(d / "uid")
            if uid is not None:
                self._by_box[d.name] = uid
                self._claim(uid, d.name, exclusive=False)  # boxes from before the claims
        self._used = set(self._by_box.values())

    def _claim(self, uid: int, box_id: str, exclusive: bool = True) -> bool:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else 0)
        try:
            fd = os.open(self.claims / str(uid), flags, 0o600)
        except FileExistsError:
            return False
        os.fchmod(fd, 0o600)  # (one an older run left readable is repaired too)
        with os.fdopen(fd, "w") as f:
            f.write(box_id)
        return True

    @staticmethod
    def _read(path: Path) -> int | None:
        try:
            return int(path.read_text())
        except (OSError, ValueError):
            return None

    def _claimed_by(self, uid: int) -> str | None:
        try:
            return (self.claims / str(uid)).read_text()
        except OSError:
            return None

    def _candidates(self) -> Iterator[int]:
        """First the uids not known to be taken; then those another node had taken when
        last seen here, which it may have given back since."""
        uids = range(self.first, self.first + self.count)
        yield from (u for u in uids if u not in self._used)
        own = set(self._by_box.values())
        yield from (u for u in uids if u in self._used and u not in own)

    def get(self, box_id: str) -> tuple[int, bool]:
        """The box's uid, and whether it was assigned just now."""
        uid = self._by_box.get(box_id) or self._read(self.boxes_dir / box_id / "uid")
        if uid is not None:  # (read: given by another node, or before this one started)
            self._by_box[box_id] = uid
            self._used.add(uid)
            return uid, False
        free = None
        for candidate in self._candidates():
            if self._claim(candidate, box_id) or self._claimed_by(candidate) == box_id:
                free = candidate  # (claimed for this very box before its uid file went)
                break
            self._used.add(candidate)  # another box's, maybe another node's
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
            with contextlib.suppress(FileNotFoundError):
                (self.claims / str(uid)).unlink()

    def in_use(self) -> int:
        return len(self._used)
