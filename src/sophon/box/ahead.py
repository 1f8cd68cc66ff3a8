"""Box processes made ahead: a cgroup with a spawnd child already in it.

Putting a process into a cgroup takes the kernel's global cgroup lock for writing, and
after a quiet moment that waits for an RCU grace period: 5-16 ms on a machine where the
rest of a box's start takes about 60. A box started on a request's path (no pool, or the
pool empty) would pay it every time. So, when no request is waiting, the backend makes a
few cgroups and has spawnd fork a child into each (spawnd.py, ``ahead``); a start takes
one, writes the box's limits into its cgroup (fast), and hands its launch to that child.
Nothing of a box runs before its limits are written: the child only waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sophon.box.cgroups import BoxCgroup, CgroupTree, Limits
from sophon.box.spawner import Spawner

log = logging.getLogger(__name__)

AHEAD = 2  # made ahead at a time: a burst past it starts the usual way

# A cgroup with its limits written and the pid of the launcher waiting in it.
Reserved = tuple[BoxCgroup, int]


class Ahead:
    def __init__(self, cgroups: CgroupTree, spawner: Spawner) -> None:
        self.cgroups = cgroups
        self.spawner = spawner
        # (cgroup, pid of the child in it, the limits written there already)
        self._ready: list[tuple[BoxCgroup, int, Limits | None]] = []

    @property
    def ready(self) -> int:
        return len(self._ready)

    async def fill(self, before_each: Callable[[], Awaitable[None]],
                   likely: Limits | None = None) -> None:
        """Make them until AHEAD are ready, each after ``before_each`` (the box manager's
        wait for a quiet moment); with the ``likely`` limits (the server's own) written
        already, which a start with those limits then need not write (about 0.5-1.5 ms)."""
        while len(self._ready) < AHEAD:
            await before_each()
            cgroup = await asyncio.to_thread(self.cgroups.make_ahead)
            try:
                if likely is not None:
                    await asyncio.to_thread(cgroup.limit, likely)
                pid = await self.spawner.ahead([str(f) for f in cgroup.procs_files])
            except BaseException:
                await asyncio.to_thread(cgroup.remove)
                raise
            self._ready.append((cgroup, pid, likely))

    async def take(self, limits: Limits) -> Reserved | None:
        """A cgroup with these limits and the waiting child in it, or None (none left:
        the caller makes a cgroup and spawnd forks)."""
        while self._ready:
            cgroup, pid, written = self._ready.pop(0)
            if not self.spawner.is_ahead(pid):  # spawnd was started again since
                await self._drop(cgroup, pid)
                continue
            if written == limits:
                return cgroup, pid
            try:
                await asyncio.to_thread(cgroup.limit, limits)
            except OSError as exc:
                log.warning("a cgroup made ahead took no limits (%s); starting anew", exc)
                await self._drop(cgroup, pid)
                return None
            except asyncio.CancelledError:  # the start went away: no one will use it
                await self._drop(cgroup, pid)
                raise
            return cgroup, pid
        return None

    async def drop(self, cgroup: BoxCgroup, pid: int) -> None:
        """One taken and not used: its launcher and cgroup go."""
        await self._drop(cgroup, pid)

    async def _drop(self, cgroup: BoxCgroup, pid: int) -> None:
        self.spawner.drop_ahead(pid)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(cgroup.remove)
