"""BoxManager: starts boxes on demand, reuses running ones, stops idle ones.

A box is named by an id; its files live under ``<data>/boxes/<id>/`` and outlive
the box's processes. Asking for a stopped box starts it again over the same files.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import json
import logging
import math
import os
import resource
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from sophon.box import ids
from sophon.box.ahead import Reserved
from sophon.box.box import Box
from sophon.box.bwrap import THREAD_HOME, BoxSpec, BwrapBackend
from sophon.box.cgroups import CgroupTree, Limits
from sophon.box.disk import BoxDisk, Disks, DiskUse
from sophon.box.uids import UidPool
from sophon.box.volumes import VolumeMount, VolumeStore
from sophon.config import Settings
from sophon.errors import BoxError, BoxUnavailable, NotFound
from sophon.images.store import ImageStore

log = logging.getLogger(__name__)

# How long a box claimed by a request (sophon/quotas.py) counts as awake before it runs:
# past the start queue's wait, a claim whose start never came is forgotten.
WAKE_CLAIM_SECONDS = 120.0
# How long a deleted box's id is remembered: longer than any start can wait in line.
GONE_KEEP_SECONDS = 600.0

# Open files a box start may need (pipes, the seccomp filter, /etc copies, mount's),
# and what the server keeps for its own connections and database: a start with fewer
# left is refused up front, instead of failing half-way with EMFILE.
FD_RESERVE = 64
# Background box work (a one-off's clean-up, the pool's refill) waits until no request
# has asked for a box in QUIET_SECONDS, but never longer than QUIET_WAIT_SECONDS.
QUIET_SECONDS = 0.05
QUIET_WAIT_SECONDS = 1.0


def cgroup_name(data_dir: Path, node_key: str = "") -> str:
    """Named after the data directory, so servers with different data never meet; and
    after the node, so nodes sharing one data directory never reap each other's boxes."""
    name = "sophon-" + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return f"{name}-{node_key}" if node_key else name


def is_thread_box(box_id: str) -> bool:
    """Whether the box is the execution API's (a thread's, a one-off's, the pool's)."""
    return ids.kind_of(box_id) is ids.Kind.EXECUTION


def boxes_on_image(boxes_dir: Path, digest: str) -> list[str]:
    """The boxes (running or not) made to run on image ``digest``."""
    used = []
    for d in boxes_dir.iterdir() if boxes_dir.is_dir() else ():
        try:
            if (d / "image").read_text().strip() == digest:
                used.append(d.name)
        except OSError:
            continue
    return sorted(used)


class BoxManager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # 0711: box uids may walk through to their own directory, never list others.
        for d, mode in ((settings.data_dir, 0o711), (settings.boxes_dir, 0o711),
                        (settings.runtime_dir, 0o755)):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(mode)
        self.cgroups = CgroupTree.detect(cgroup_name(settings.data_dir, settings.node_key))
        if self.cgroups is None:
            log.warning(
                "cgroups are not usable here: box limits fall back to rlimits, which bound "
                "each process but not a box as a whole. Run the server as root (or with a "
                "delegated cgroup) for real per-box memory, CPU and process limits."
            )
        self.backend = BwrapBackend(
            settings.runtime_dir,
            self.cgroups,
            host_uid=settings.box_uid_first,
            python=settings.box_python,
            door_port=settings.egress_box_port,
            claude_cli=settings.box_claude_dir / "bin" / "claude",
            tool_dirs=(settings.box_claude_dir, settings.box_node_dir),
        )
        self.images, self.images_off = self._image_store(settings)
        self._image_of: dict[str, str | None] = {}  # box id: its image (read once)
        # Build boxes (box/builds.py): the scratch root each runs on, and for the egress
        # door whose build it is (user id) and the hosts its steps may reach.
        self.build_roots: dict[str, Path] = {}
        self.build_rules: dict[str, tuple[str, tuple[str, ...]]] = {}
        if self.images is None:
            log.warning("images are off: %s; boxes see the host's /usr", self.images_off)
        # Called with every box that has started (the egress door serves its listener),
        # and with the id of every box deleted for good (what is kept about it goes too).
        self.on_started: list[Callable[[Box], None]] = []
        self.on_destroyed: list[Callable[[str], Awaitable[None]]] = []
        # Each box its own host uid (only a root server can switch uids; otherwise every
        # box runs as the server's, which it says at start-up).
        self.uids = UidPool(settings.boxes_dir, settings.box_uid_first,
                            settings.box_uid_count) if self.backend.is_root else None
        self.disks = Disks(settings.boxes_dir, settings.box_disk_mb,
                           runner=self.backend.spawner.run,
                           spare_dir=settings.spare_disks_dir)
        if not self.disks.enabled:
            log.warning("disk quotas are off: %s", self.disks.mode)
        if self.uids is None:
            log.warning("not running as root: boxes run as the server's own uid, so a box "
                        "that escaped its namespaces could reach other boxes' files")
        lim = settings.limits
        self.limits = Limits(lim.memory_mb * 2**20, lim.cpus, lim.pids)
        self._limits: dict[str, Limits] = {}  # box id: its own (read once; see set_limits)
        self._boxes: dict[str, Box] = {}
        self._idle_after: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Asked under the box's lock before this node starts a box, with whether the
        # start may take the box's session or thread for this node (a request's may; the
        # node's own work after one may not): raises if the box is not this node's to run
        # (cluster/ownership.py; None: one node, always its own).
        self.may_start: Callable[[str, bool], Awaitable[None]] | None = None
        # Boxes deleted in the last GONE_KEEP_SECONDS (ids are never used again): a start
        # asked for before the delete (a checkpoint after an exec) finds the box gone
        # instead of making it again over the files being removed.
        self._gone: dict[str, float] = {}
        self.volumes = VolumeStore(settings.data_dir, self.disks)
        self._vol_sizes: dict[str, tuple[int, int]] = {}  # volume id: (size_mb, gid)
        self._mounts: dict[str, tuple[VolumeMount, ...]] = {}  # box id: its volume mounts
        self._reaper: asyncio.Task[None] | None = None
        self.on_idle_stop: list[Callable[[str], Awaitable[None]]] = []
        # Called with the box id and the number of processes ended when a box is stopped
        # although a process ran, after box_max_unattended_seconds without a request.
        self.on_unattended_stop: list[Callable[[str, int], Awaitable[None]]] = []
        # Per-user limits (sophon/quotas.py): who owns each box, the boxes a request has
        # claimed and is starting (they count as awake until they run), and when a
        # request last had each box.
        self._owners: dict[str, str] = {}
        self._waking: dict[str, float] = {}
        self._attended: dict[str, float] = {}
        # Started, empty boxes waiting to be handed out: a new thread or a one-off
        # execution takes one instead of paying for a sandbox start.
        self._pool: list[str] = []
        self._detaching: set[asyncio.Task[None]] = set()
        self._discarding: set[asyncio.Task[None]] = set()
        self._last_asked = 0.0  # when a request last asked for a box (see _quiet)
        self._filling: set[str] = set()  # the boxes the pool is starting
        self._closing = False
        self._refill: asyncio.Task[None] | None = None
        self._spare_task: asyncio.Task[None] | None = None  # disks made ahead (disk.py)
        self._spares_wanted = False  # asked for while the task was past its disks
        self.disks.on_spare_taken = self._make_spares
        # Admission (see _admission): starts in progress, and the line they wait in.
        self._starting_mb = 0  # the memory limits of the boxes starting now
        self._start_slots = asyncio.Semaphore(settings.start_concurrency)

    def _image_store(self, settings: Settings) -> tuple[ImageStore | None, str]:
        """The images, or why there are none (and boxes see the host's /usr)."""
        if settings.images == "host":
            return None, "SOPHON_IMAGES=host"
        if not self.backend.is_root:
            return None, "the server is not root, and an image is a loop mount"
        for tool, package in (("mmdebstrap", "mmdebstrap"), ("mksquashfs", "squashfs-tools")):
            if shutil.which(tool) is None:
                return None, f"{tool} is not installed (apt-get install {package})"
        store = ImageStore(settings.images_dir, timeout=settings.image_build_timeout,
                           max_bytes=settings.image_max_mb * 2**20,
                           mount_points=self.backend.image_mount_points())
        self.backend.check_reachable(settings.images_dir)
        return store, ""

    def set_image(self, box_id: str, digest: str) -> None:
        """The box runs on this image from its next start (before its first, for a new
        box); kept with the box, so it is the same image after a restart."""
        d = self.box_dir(box_id)
        d.mkdir(mode=0o711, parents=True, exist_ok=True)
        (d / "image").write_text(digest)
        self._image_of[box_id] = digest

    def image_of(self, box_id: str) -> str | None:
        if box_id not in self._image_of:
            try:
                digest = (self.box_dir(box_id) / "image").read_text().strip() or None
            except FileNotFoundError:
                digest = None
            self._image_of[box_id] = digest
        return self._image_of[box_id]

    def set_limits(self, box_id: str, memory_mb: int, cpus: float, pids: int) -> None:
        """The box's memory, CPU and process limits from its next start (its image's
        defaults or what its session asked for: images/sizing.py); kept with the box."""
        d = self.box_dir(box_id)
        d.mkdir(mode=0o711, parents=True, exist_ok=True)
        (d / "limits").write_text(json.dumps({"memory_mb": memory_mb, "cpus": cpus,
                                              "pids": pids}))
        self._limits[box_id] = Limits(memory_mb * 2**20, cpus, pids)

    def limits_of(self, box_id: str) -> Limits:
        """The box's own limits, or the server's SOPHON_BOX_* ones."""
        found = self._limits.get(box_id)
        if found is None:
            try:
                own = json.loads((self.box_dir(box_id) / "limits").read_text())
                found = Limits(int(own["memory_mb"]) * 2**20, float(own["cpus"]),
                               int(own["pids"]))
            except (OSError, ValueError, KeyError, TypeError):
                found = self.limits
            self._limits[box_id] = found
        return found

    async def _image_root(self, box_id: str) -> Path | None:
        if box_id in self.build_roots:
            return self.build_roots[box_id]
        digest = self.image_of(box_id)
        if digest is None:
            return None  # a box from before images, or made without one: the host's /usr
        root = await self.images.root_of(digest) if self.images is not None else None
        if root is None:
            raise BoxError(f"box {box_id} runs on image {digest}, which is not on this "
                           f"server ({self.images_off or 'deleted'}); build it again with "
                           "`sophon images build`")
        return root

    @property
    def limits_mode(self) -> str:
        return f"cgroup v{self.cgroups.version}" if self.cgroups else "rlimit"

    def box_dir(self, box_id: str) -> Path:
        return self.settings.boxes_dir / box_id

    async def start(self) -> None:
        self.settings.boxes_dir.mkdir(parents=True, exist_ok=True)
        raise_open_files_limit()
        # A crash leaves its staging boxes' disks and its volumes mounted on the host. In
        # a cluster they may be another live node's, sharing this data directory: left.
        if not self.settings.clustered:
            await asyncio.to_thread(self.volumes.detach_all)
            await asyncio.to_thread(self.disks.clear_spares)
            stale = await self.disks.detach_all()
            if stale:
                log.info("unmounted %d box disk(s) left over from a previous run", stale)
        if self.cgroups is not None:
            reaped = await asyncio.to_thread(self.cgroups.reap_orphans)
            if reaped:
                log.info("reaped %d box(es) left over from a previous run", reaped)
        self._reaper = asyncio.create_task(self._reap_idle_loop(), name="box-idle-reaper")
        self._top_up()
        self._make_spares()

    async def close(self) -> None:
        self._closing = True  # clean-ups waiting for quiet go now
        for task in (self._reaper, self._refill, self._spare_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await asyncio.gather(*self._discarding, return_exceptions=True)
        await asyncio.to_thread(self.disks.release_spares)
        pooled, self._pool = self._pool, []
        await asyncio.gather(*(self.destroy(box_id) for box_id in pooled))
        await asyncio.gather(*(b.stop() for b in list(self._boxes.values())))
        await self.backend.spawner.close()
        await asyncio.to_thread(self.backend.close)
        await self.disks.detach_all()
        await asyncio.to_thread(self.volumes.detach_all)
        if self.cgroups is not None:
            await asyncio.to_thread(self.cgroups.remove)

    def new_box_id(self, pooled: bool = True) -> str:
        """An id for a new box: a started one from the pool when there is one (and
        ``pooled``: a pooled box runs on the host's /usr).

        Taking a pooled box does not refill the pool: a start would compete for the CPU
        with the very request that took the box. The caller calls ``top_up`` once it
        has answered (``discard`` does too); a miss starts the refill at once."""
        while pooled and self._pool:
            box_id = self._pool.pop(0)
            box = self.running(box_id)
            if box is not None:
                box.leases -= 1
                box.last_used = time.monotonic()
                return box_id
        self.top_up()
        return ids.new_id(ids.Kind.EXECUTION)

    def discard(self, box_id: str) -> None:
        """Destroy a box in the background (a one-off execution's, once answered), then
        refill the pool. ``close`` waits for every such destruction."""
        self._owners.pop(box_id, None)  # no longer its user's: their next box may start
        task = asyncio.get_running_loop().create_task(self._discard(box_id),
                                                      name=f"discard-{box_id}")
        self._discarding.add(task)
        task.add_done_callback(self._discarding.discard)

    async def _quiet(self) -> None:
        """Until no box has been asked for in QUIET_SECONDS (at most QUIET_WAIT_SECONDS):
        background box work (a one-off's clean-up, the pool's refill) then competes for
        the CPU with no request's, e.g. the warm exec a client sends right after a
        one-off's answer."""
        waited_until = time.monotonic() + QUIET_WAIT_SECONDS
        while not self._closing:
            now = time.monotonic()
            quiet_at = self._last_asked + QUIET_SECONDS
            if now >= quiet_at or now >= waited_until:
                return
            await asyncio.sleep(min(quiet_at, waited_until) - now)

    async def _discard(self, box_id: str) -> None:
        await self._quiet()
        try:
            await self.destroy(box_id)
        except Exception:
            log.exception("could not delete box %s", box_id)
        self.top_up()

    def top_up(self) -> None:
        """Refill the pool in the background, if it is short."""
        if len(self._pool) < self.settings.box_pool_size:
            self._top_up()

    def _make_spares(self) -> None:
        """Disks (disk.py) and box processes in their cgroups (ahead.py) made ahead."""
        self._spares_wanted = True  # a task past its disks makes another round
        if self._spare_task is None or self._spare_task.done():
            self._spare_task = asyncio.create_task(self._fill_spares(), name="box-spares")

    async def _fill_spares(self) -> None:
        while self._spares_wanted:
            self._spares_wanted = False
            await self._fill_spares_once()

    async def _fill_spares_once(self) -> None:
        try:
            if self.disks.enabled:
                await self.disks.make_spares(self._quiet)
        except (BoxError, OSError):  # mkfs failed, or the data directory is full
            log.exception("could not make a disk ahead; new boxes make their own")
        try:
            if self.backend.ahead is not None:
                await self.backend.ahead.fill(self._quiet, self.limits)
        except (BoxError, OSError):
            log.exception("could not make a box process ahead; boxes start the usual way")

    def _top_up(self) -> None:
        if self.settings.box_pool_size and (self._refill is None or self._refill.done()):
            self._refill = asyncio.create_task(self._fill_pool(), name="box-pool")

    async def _fill_pool(self) -> None:
        while len(self._pool) < self.settings.box_pool_size:
            await self._quiet()
            if self._room() < 2:  # a pooled box never takes a request's last place
                return
            box_id = ids.new_id(ids.Kind.EXECUTION)
            self._filling.add(box_id)
            try:
                box = await self.get(box_id)
            except asyncio.CancelledError:  # the server is stopping: leave nothing behind
                await self.destroy(box_id)
                raise
            except BoxUnavailable as exc:
                log.info("the pool waits for room: %s", exc)
                await self.destroy(box_id)
                return
            except Exception:
                log.exception("could not start a box for the pool")
                await self.destroy(box_id)
                return
            finally:
                self._filling.discard(box_id)
            box.leases += 1  # the pool holds it, so the idle reaper leaves it alone
            self._pool.append(box_id)

    def running(self, box_id: str) -> Box | None:
        box = self._boxes.get(box_id)
        return box if box is not None and not box.stopped.is_set() else None

    def awake(self) -> list[str]:
        """The ids of the boxes running now (the pool's included)."""
        return [i for i, b in self._boxes.items() if not b.stopped.is_set()]

    @property
    def pool_level(self) -> int:
        return len(self._pool)

    # --- owners: what sophon/quotas.py counts -------------------------------------

    def set_owner(self, box_id: str, user_id: str) -> None:
        self._owners[box_id] = user_id

    def owner_of(self, box_id: str) -> str | None:
        return self._owners.get(box_id)

    def claim(self, box_id: str, user_id: str) -> None:
        """The user's request is about to use the box: it is theirs, and it counts as
        awake from now (until it runs, or WAKE_CLAIM_SECONDS if it never does)."""
        self._owners[box_id] = user_id
        if self.running(box_id) is None:
            self._waking[box_id] = time.monotonic()

    def awake_or_waking(self, box_id: str) -> bool:
        woken = self._waking.get(box_id)
        return self.running(box_id) is not None or (
            woken is not None and time.monotonic() - woken < WAKE_CLAIM_SECONDS)

    def awake_of(self, user_id: str) -> list[str]:
        """The user's boxes that are running or being started."""
        return [b for b, u in self._owners.items() if u == user_id and self.awake_or_waking(b)]

    def next_sleep_in(self, box_ids: list[str]) -> int:
        """About how many seconds until one of these boxes may be stopped for idleness."""
        now, waits = time.monotonic(), []
        for box_id in box_ids:
            box = self.running(box_id)
            if box is not None and not box.busy:
                waits.append(self._idle_after.get(box_id, 0) - (now - box.last_used))
        soonest = min(waits, default=self.settings.thread_idle_seconds)
        return max(1, math.ceil(soonest + self.settings.idle_check_seconds))

    @contextlib.asynccontextmanager
    async def use(self, box_id: str, idle_after: float | None = None,
                  extra_ro_binds: dict[str, str] | None = None,
                  disk_mb: int | None = None,
                  volumes: tuple[VolumeMount, ...] | None = None,
                  take: bool = True) -> AsyncIterator[Box]:
        """Hold a box for a piece of work: the idle reaper never stops a held box."""
        box = await self.get(box_id, idle_after, extra_ro_binds, disk_mb, volumes, take)
        box.leases += 1
        try:
            yield box
        finally:
            box.leases -= 1
            box.last_used = self._attended[box_id] = time.monotonic()

    async def get(self, box_id: str, idle_after: float | None = None,
                  extra_ro_binds: dict[str, str] | None = None,
                  disk_mb: int | None = None,
                  volumes: tuple[VolumeMount, ...] | None = None,
                  take: bool = True) -> Box:
        """The running box with this id, started (over its existing files) if needed.
        ``extra_ro_binds`` (host path: box path) apply only if this call starts it;
        ``disk_mb`` only if it makes the box's disk (default ``SOPHON_BOX_DISK_MB``).
        ``volumes`` (None: whatever the box has) are the volume mounts the box must have:
        a running box with other mounts is stopped and started again with these.
        ``take``: see ``may_start``."""
        self._attended[box_id] = now = time.monotonic()
        if box_id not in self._filling:  # a request's, not the pool's own start
            self._last_asked = now
        box = self.running(box_id)
        if box is not None and (volumes is None or self._mounts.get(box_id, ()) == volumes):
            return box
        lock = self._locks.setdefault(box_id, asyncio.Lock())
        async with lock:
            box = self.running(box_id)
            if box is not None and (volumes is None
                                    or self._mounts.get(box_id, ()) == volumes):
                return box
            if box_id in self._gone:
                raise NotFound("this box was deleted (its session, thread or volume is "
                               "gone)")
            if self.may_start is not None:
                await self.may_start(box_id, take)
            if box is not None:  # mounted other volumes: restart with these
                await box.stop()
            mounts = self._mounts.get(box_id, ()) if volumes is None else volumes
            binds = []
            for m in mounts:
                size_mb, _ = self._vol_sizes.get(m.volume_id, (self.settings.box_disk_mb, 0))
                root = await self.volumes.attach(m.volume_id, size_mb, m.gid)
                binds.append((root, m.sub, m.inside))
            d = self.box_dir(box_id)
            limits = self.limits_of(box_id)
            await self._check_room(limits)  # before a uid or a disk is spent on it
            # The disk and the cgroup are made ready in threads while the uid is found.
            reserving = asyncio.ensure_future(self.backend.reserve(limits))
            preparing = asyncio.ensure_future(self.disks.prepare(box_id, disk_mb))
            try:
                uid = await self._uid_for(box_id)
                image_root = await self._image_root(box_id)
                disk = await preparing
                reserved = await reserving
            except BaseException:
                await self._abandon(box_id, reserving, preparing)
                raise
            spec = BoxSpec(
                box_id=box_id,
                workspace=d / "workspace",
                home=d / "home",
                limits=limits,
                tmp_bytes=self.settings.limits.tmp_mb * 2**20,
                extra_ro_binds=tuple((extra_ro_binds or {}).items()),
                host_uid=uid,
                # A thread's box (made by the execution API) shows its home at
                # /home/baponi too, Baponi's thread storage.
                home_aliases=(THREAD_HOME,) if is_thread_box(box_id) else (),
                volume_binds=tuple(binds),
                groups=tuple(sorted({m.gid for m in mounts})),
                disk=disk,
                image_root=image_root,
                image_writable=box_id in self.build_roots,
            )
            try:
                box = await self._start(spec, reserved)
            except BaseException:
                self._waking.pop(box_id, None)
                await self.disks.detach(box_id)
                raise
            box._on_stop = self._forget
            box.disk_full = functools.partial(self.disks.full, box_id, box.pid)
            self._boxes[box_id] = box
            self._waking.pop(box_id, None)
            self._mounts[box_id] = mounts
            self._idle_after[box_id] = idle_after or self.settings.thread_idle_seconds
            log.debug("box %s started (pid %d)", box_id, box.pid)
            return box

    @contextlib.asynccontextmanager
    async def no_start(self, box_id: str) -> AsyncIterator[None]:
        """While held, no start of this box begins on this node (one waits): a node hands
        a box's work on and stops the box in one step, so that no start of its own (a
        request that asked just before) mounts the disk after the next node has."""
        async with self._locks.setdefault(box_id, asyncio.Lock()):
            yield

    async def hold(self, box_id: str,
                   volumes: tuple[VolumeMount, ...] | None = None) -> Box:
        """``use`` for work that outlives the caller's block (an execution taken on by
        a request and run by a task): the box, held until ``release``."""
        box = await self.get(box_id, volumes=volumes)
        box.leases += 1
        return box

    @staticmethod
    def release(box: Box) -> None:
        box.leases -= 1
        box.last_used = time.monotonic()

    # --- admission: what a box start may take ----------------------------------

    def _awake_count(self) -> int:
        return sum(1 for b in self._boxes.values() if not b.stopped.is_set())

    def _used_mb(self) -> int:
        """The memory limits of the running boxes and those starting, added up."""
        running = sum(self.limits_of(i).memory_bytes for i, b in self._boxes.items()
                      if not b.stopped.is_set())
        return running // 2**20 + self._starting_mb

    def _room(self, limits: Limits | None = None) -> int:
        """How many more boxes of ``limits`` (default: the server's) the memory budget
        admits now."""
        per_box = (limits or self.limits).memory_bytes // 2**20
        return max(0, (self.settings.memory_budget_mb - self._used_mb()) // per_box)

    async def _check_room(self, limits: Limits | None = None) -> None:
        while self._room(limits) < 1 and self._pool:  # empty pooled boxes make way
            await self.destroy(self._pool.pop())
        self._refuse_if_full(limits)

    def check_room_for(self, box_id: str) -> None:
        """BoxUnavailable now if waking ``box_id`` could not be admitted (the memory
        budget, open files): for a request that answers before the box is up."""
        limits = self.limits_of(box_id)
        if self.awake_or_waking(box_id) or (self._room(limits) < 1 and self._pool):
            return  # running already, or an empty pooled box will make way
        self._refuse_if_full(limits)

    def _refuse_if_full(self, limits: Limits | None = None) -> None:
        if self._room(limits) < 1:
            per_box = (limits or self.limits).memory_bytes // 2**20
            budget = self.settings.memory_budget_mb
            raise BoxUnavailable(
                f"the server's memory budget for boxes is in use: {self._awake_count()} "
                f"boxes are running with memory limits of {self._used_mb()} MiB together, "
                f"and a box of {per_box} MiB more would pass the {budget} MiB their limits "
                "may add up to (SOPHON_BOX_MEMORY_BUDGET_MB); idle boxes are stopped "
                "after a while, so try again later", retry_after=15)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        # The descriptor table's size bounds how many are open, and costs nothing to read;
        # counting them (a listing of /proc/self/fd, thousands of entries with hundreds
        # of boxes running) is only worth it near the limit.
        if soft != resource.RLIM_INFINITY and soft - fd_table_size() < FD_RESERVE:
            in_use = len(os.listdir("/proc/self/fd"))
            if soft - in_use < FD_RESERVE:
                raise BoxUnavailable(_out_of_files_message(in_use, soft), retry_after=30)

    @contextlib.asynccontextmanager
    async def _admission(self, limits: Limits) -> AsyncIterator[None]:
        """A place among the starts allowed at once and room in the memory budget, or
        BoxUnavailable naming the limit that was reached."""
        slots, wait = self._start_slots, self.settings.box_start_wait_seconds
        if slots.locked():
            try:
                if wait <= 0:
                    raise TimeoutError
                await asyncio.wait_for(slots.acquire(), wait)
            except TimeoutError:
                raise BoxUnavailable(
                    f"{self.settings.start_concurrency} boxes are starting already "
                    f"(SOPHON_BOX_START_CONCURRENCY) and no start was free within {wait:g} s "
                    "(SOPHON_BOX_START_WAIT_SECONDS); try again shortly",
                    retry_after=5) from None
        else:
            await slots.acquire()
        try:
            await self._check_room(limits)
            memory_mb = limits.memory_bytes // 2**20
            self._starting_mb += memory_mb
            try:
                yield
            finally:
                self._starting_mb -= memory_mb
        finally:
            slots.release()

    async def _abandon(self, box_id: str, reserving: asyncio.Future[Reserved | None],
                       preparing: asyncio.Future[BoxDisk | None]) -> None:
        """A start that failed before its launch: what was made ready for it goes."""
        for task in (reserving, preparing):
            task.cancel()
        reserved, disk = await asyncio.gather(reserving, preparing, return_exceptions=True)
        if isinstance(reserved, tuple):
            await self.backend.unreserve(reserved)
        if isinstance(disk, BoxDisk):
            disk.close()
            await self.disks.detach(box_id)

    async def _start(self, spec: BoxSpec, reserved: Reserved | None = None) -> Box:
        """``reserved``: see ``BwrapBackend.reserve``; given back if the start is refused
        before the backend has it."""
        launching = False
        try:
            async with self._admission(spec.limits):
                launching = True
                box = await self.backend.start(spec, reserved=reserved)
                for hook in self.on_started:
                    hook(box)
                self._make_spares()  # for the next start, once it is quiet
                return box
        except (OSError, BoxError) as exc:
            if reserved is not None and not launching:
                await self.backend.unreserve(reserved)
            cause = exc if isinstance(exc, OSError) else exc.__cause__
            if isinstance(cause, OSError) and cause.errno in (errno.EMFILE, errno.ENFILE):
                soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
                in_use = len(os.listdir("/proc/self/fd"))
                raise BoxUnavailable(_out_of_files_message(in_use, soft),
                                     retry_after=30) from exc
            raise
        except BaseException:
            if reserved is not None and not launching:
                await self.backend.unreserve(reserved)
            raise

    @contextlib.asynccontextmanager
    async def staging(self, ro_binds: dict[str, str]) -> AsyncIterator[tuple[Box, Path]]:
        """A throwaway box, with ``ro_binds`` mounted.

        It is for reading host paths a user names (a local clone): its fresh uid owns no
        box's files, so whatever the path resolves to, the box reads only what any host
        user may. Yields the box and its workspace directory on the host, which is
        made readable by other uids once the box has stopped, so that a session box can
        mount it; both are gone when the block ends."""
        box_id = ids.new_id(ids.Kind.STAGING)
        d = self.box_dir(box_id)
        try:
            await self._check_room()  # before a uid or a disk is spent on it
            uid = await self._uid_for(box_id)
            await self.disks.attach(box_id)
            spec = BoxSpec(
                box_id=box_id, workspace=d / "workspace", home=d / "home",
                limits=self.limits, tmp_bytes=self.settings.limits.tmp_mb * 2**20,
                extra_ro_binds=tuple(ro_binds.items()), host_uid=uid,
            )
            box = await self._start(spec)
            try:
                yield box, spec.workspace
            finally:
                await box.stop()
        finally:
            await self.disks.detach(box_id)
            await asyncio.to_thread(shutil.rmtree, d, True)
            if self.uids is not None:
                self.uids.release(box_id)

    def know_volume(self, volume_id: str, size_mb: int, gid: int) -> None:
        """The size and group a volume is made with on first use."""
        self._vol_sizes[volume_id] = (size_mb, gid)

    async def remove_volume(self, volume_id: str) -> None:
        """Stop every box that mounts the volume, then delete its files for good."""
        for box_id, mounts in list(self._mounts.items()):
            if any(m.volume_id == volume_id for m in mounts):
                await self.stop(box_id)
                self._mounts.pop(box_id, None)
        await self.destroy(ids.box_id(ids.Kind.VOLUME, volume_id))
        await self.volumes.remove(volume_id)
        self._vol_sizes.pop(volume_id, None)

    def _forget(self, box: Box) -> None:
        if self._boxes.get(box.id) is box:
            del self._boxes[box.id]
        if self.disks.enabled:
            task = asyncio.get_running_loop().create_task(self._detach_if_stopped(box.id))
            self._detaching.add(task)
            task.add_done_callback(self._detaching.discard)

    async def _detach_if_stopped(self, box_id: str) -> None:
        # Under the box's lock: a start of the same box waits, or has already begun and
        # then owns the mount.
        async with self._locks.setdefault(box_id, asyncio.Lock()):
            if self.running(box_id) is None:
                try:
                    await self.disks.detach(box_id)
                except Exception:
                    log.exception("could not unmount the disk of box %s", box_id)

    async def stop(self, box_id: str) -> None:
        """Stop the box; returns once its processes are gone and its disk let go."""
        box = self._boxes.get(box_id)
        if box is not None:
            await box.stop()
            with contextlib.suppress(BoxError):  # a start then waits, or says why
                await self.disks.released(box_id)

    async def destroy(self, box_id: str) -> None:
        """Stop the box and delete its files for good; no start of it begins after."""
        async with self.no_start(box_id):
            now = time.monotonic()
            self._gone = {b: t for b, t in self._gone.items() if now - t < GONE_KEEP_SECONDS}
            self._gone[box_id] = now
            await self.stop(box_id)
        await self.disks.detach(box_id)
        self._locks.pop(box_id, None)
        self._idle_after.pop(box_id, None)
        self._mounts.pop(box_id, None)
        self._owners.pop(box_id, None)
        self._waking.pop(box_id, None)
        self._attended.pop(box_id, None)
        self._image_of.pop(box_id, None)
        self._limits.pop(box_id, None)
        # rmtree works through directory fds and never follows a symlink a workload made.
        assert shutil.rmtree.avoids_symlink_attacks
        await asyncio.to_thread(shutil.rmtree, self.box_dir(box_id), True)
        if self.uids is not None and not self.box_dir(box_id).exists():
            self.uids.release(box_id)  # only now: its next owner must find nothing old
        for hook in self.on_destroyed:
            try:
                await hook(box_id)
            except Exception:
                log.exception("could not forget box %s", box_id)

    def disk_use(self, box_id: str) -> DiskUse:
        box = self.running(box_id)  # its disk is mounted only in its own namespace
        return self.disks.usage(box_id, box.pid if box is not None else None)

    def disk_full(self, box_id: str) -> bool:
        box = self.running(box_id)
        return self.disks.full(box_id, box.pid if box is not None else None)

    async def uid_for(self, box_id: str) -> int | None:
        """The host uid the box's processes run as (None: the server's own)."""
        return await self._uid_for(box_id)

    async def _uid_for(self, box_id: str) -> int | None:
        if self.uids is None:
            return None
        uid, new = self.uids.get(box_id)
        d = self.box_dir(box_id)
        if new and any((d / sub).exists() for sub in ("workspace", "home")):
            # A box from before uids were per box: its files become its own uid's. The
            # box is not running, and chown -R changes symlinks, never what they name.
            proc = await asyncio.create_subprocess_exec(
                "chown", "-R", "-P", "-h", f"{uid}:{uid}", "--",
                *(str(d / sub) for sub in ("workspace", "home") if (d / sub).exists()))
            if await proc.wait() != 0:
                raise BoxError(f"could not hand box {box_id}'s files to its uid {uid}")
        return uid

    async def stop_if_idle(self, box_id: str) -> bool:
        """Stop the box if it is idle: no request for its idle time and no process
        running; or, whatever runs in it, no request for box_max_unattended_seconds."""
        box = self.running(box_id)
        if box is None:
            return False
        now = time.monotonic()
        if box.busy:
            self._attended[box_id] = now  # held by a request (a long exec, a turn)
            return False
        bound = self.settings.box_max_unattended_seconds
        unattended = bool(bound) and box_id not in self._pool and \
            now - self._attended.get(box_id, box.started_at) >= bound
        if not unattended and now - box.last_used < self._idle_after.get(box_id, 0):
            return False
        processes = 0
        with contextlib.suppress(Exception):  # an unresponsive box is as good as idle
            processes = await asyncio.wait_for(box.process_count(), 10)
        if processes > 0 and not unattended:
            box.last_used = time.monotonic()
            return False
        if box.busy:
            return False
        # Under the box's lock: a request that wants the box meanwhile waits in get()
        # until the stop (cgroup removal included) and its hooks are done, then starts
        # a new box, instead of racing the old one's cleanup.
        async with self._locks.setdefault(box_id, asyncio.Lock()):
            if box.busy or box.stopped.is_set():
                return False
            await box.stop()
            if processes > 0:
                owner = self._owners.get(box_id, "unknown")
                log.warning("box %s (user %s) stopped after %g s without a request "
                            "(SOPHON_BOX_MAX_UNATTENDED_SECONDS); %d background process(es) "
                            "ended", box_id, owner, bound, processes)
                hooks: list[Awaitable[None]] = [
                    hook(box_id, processes) for hook in self.on_unattended_stop]
            else:
                log.info("box %s stopped after being idle", box_id)
                hooks = [hook(box_id) for hook in self.on_idle_stop]
            for call in hooks:
                try:
                    await call
                except Exception:
                    log.exception("stop hook failed for box %s", box_id)
        return True

    async def _reap_idle_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.idle_check_seconds)
            for box_id in list(self._boxes):
                try:
                    await self.stop_if_idle(box_id)
                except Exception:
                    log.exception("idle check of box %s failed", box_id)


def fd_table_size() -> int:
    """The size of this process's descriptor table: more than the highest descriptor
    open, so at least how many are."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("FDSize:"):
                return int(line.split()[1])
    return len(os.listdir("/proc/self/fd"))


def raise_open_files_limit() -> None:
    """Every running box holds a few open files, and the usual soft limit (1024) runs
    out at a few hundred boxes: take the hard limit. (This gives boxes nothing new: any
    process may raise its own soft limit to the hard one.)"""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:  # the kernel caps it at nr_open
        with open("/proc/sys/fs/nr_open") as f:
            hard = int(f.read())
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]))
    except (OSError, ValueError) as exc:
        log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
    else:
        log.info("open-file limit raised from %d to %d", soft, hard)


def _out_of_files_message(in_use: int, soft: int) -> str:
    return (f"the server is out of open files ({in_use} of its limit of {soft} are in use; "
            "every running box holds some): raise the server's open-file limit "
            "(RLIMIT_NOFILE: LimitNOFILE= in its systemd unit, or ulimit -n), or wait for "
            "idle boxes to stop")
