"""Base images (issue 22): a box's start on its image's root against the same start on the
host's /usr, an image's build cold and its reuse, and the disk each image takes.

* box start: ``BoxManager.get`` of a stopped session box (its disk made once), with the
  python image and without (the host's /usr), timed alternately, then the box's first
  ``true``; goal: image / host <= 1.2 at p50.
* box start on the request path: a new box (its disk made) with nothing ready for it (no
  pool), through ``BoxManager.get``, until its first ``true`` has run; against a bare
  ``bwrap`` with the same namespaces running ``true`` (the kernel's part alone), in
  turns; goal: at most 3× at p50.
* build: each base built from nothing into a scratch images directory (cold; the full run
  only: minutes of mmdebstrap), then asked for again (warm: the store finds it built).
* disk: each image's squashfs file and the root it unpacks to.

Root, mmdebstrap and mksquashfs are needed, as for the server's images.

    .venv/bin/python bench/run.py --only images
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from common import Figure, Samples, make_data_dir, remove_server_cgroups

COMMAND = ".venv/bin/python bench/run.py --only images"
GOAL_RATIO = 1.2
GOAL_REQUEST_PATH = 3.0
# A bare bwrap: the namespaces a box gets, /usr, /proc and /dev, and `true`.
QUIET_BEFORE_S = 0.3  # before each timed start on the request path
BARE_BWRAP = ["bwrap", "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
              "--unshare-uts", "--unshare-cgroup", "--uid", "1000", "--gid", "1000",
              "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink",
              "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--proc", "/proc",
              "--dev", "/dev", "--as-pid-1", "true"]


def _shared() -> Path:
    """The images every server on this machine uses (SOPHON_IMAGES_DIR)."""
    from sophon.config import Settings

    return Settings().images_dir


async def _first_true(mgr: object, box_id: str) -> None:
    from sophon.box.box import ExecOutcome
    from sophon.box.manager import BoxManager

    assert isinstance(mgr, BoxManager)
    box = await mgr.get(box_id, idle_after=36000)
    async for ev in box.exec(["/bin/true"], timeout=10, env={"PATH": "/usr/bin:/bin"},
                             cwd="/workspace", output_cap=1024):
        if isinstance(ev, ExecOutcome):
            assert ev.exit_code == 0, ev


async def _starts(samples: int, data_dir: Path) -> tuple[Samples, Samples]:
    from sophon.box.manager import BoxManager
    from sophon.config import Settings

    mgr = BoxManager(Settings(data_dir=data_dir, box_pool_size=0, images_dir=_shared()))
    await mgr.start()
    try:
        assert mgr.images is not None, mgr.images_off
        image, _ = await mgr.images.ensure("python")
        on_image, on_host = "s" + uuid.uuid4().hex[:31], "s" + uuid.uuid4().hex[:31]
        mgr.set_image(on_image, image.digest)
        for box_id in (on_image, on_host):  # disks made, image mounted: not timed
            await _first_true(mgr, box_id)
            await mgr.stop(box_id)
        times: dict[str, list[float]] = {on_image: [], on_host: []}
        for _ in range(samples):
            for box_id in (on_image, on_host):
                t0 = time.perf_counter()
                await _first_true(mgr, box_id)
                times[box_id].append((time.perf_counter() - t0) * 1e3)
                await mgr.stop(box_id)
        return Samples(times[on_image]), Samples(times[on_host])
    finally:
        await mgr.close()


def _bare_bwrap() -> float:
    t0 = time.perf_counter()
    subprocess.run(BARE_BWRAP, check=True)
    return (time.perf_counter() - t0) * 1e3


async def _request_path(samples: int, data_dir: Path) -> tuple[Samples, Samples, Samples]:
    """New boxes started and given their first ``true``, in turn with a new box started
    without a process made ahead (ahead.py) and with a bare bwrap; each box is deleted
    before the next (not timed). Each is timed after a quiet moment, as a request after
    a pause finds the machine: starts back to back keep the kernel's cgroup lock in its
    fast mode, and a lone request pays for leaving it."""
    from sophon.box.manager import BoxManager
    from sophon.config import Settings

    mgr = BoxManager(Settings(data_dir=data_dir, box_pool_size=0))
    await mgr.start()
    ahead = mgr.backend.ahead
    box_ms: list[float] = []
    without_ms: list[float] = []
    bare_ms: list[float] = []

    async def new_box() -> float:
        box_id = "x" + uuid.uuid4().hex[:31]
        await asyncio.sleep(QUIET_BEFORE_S)
        t0 = time.perf_counter()
        await _first_true(mgr, box_id)
        took = (time.perf_counter() - t0) * 1e3
        await mgr.destroy(box_id)
        return took

    try:
        for i in range(samples + 5):  # the first five warm the caches, not counted
            took = await new_box()
            mgr.backend.ahead = None
            try:
                without = await new_box()
            finally:
                mgr.backend.ahead = ahead
            await asyncio.sleep(QUIET_BEFORE_S)
            bare = await asyncio.to_thread(_bare_bwrap)
            if i >= 5:
                box_ms.append(took)
                without_ms.append(without)
                bare_ms.append(bare)
        return Samples(box_ms), Samples(without_ms), Samples(bare_ms)
    finally:
        await mgr.close()


async def _builds(scratch: Path) -> dict[str, tuple[float, float]]:
    """Each base: (cold build seconds, warm ensure milliseconds)."""
    from sophon.box.bwrap import BwrapBackend
    from sophon.config import Settings
    from sophon.images.definitions import BUILTIN
    from sophon.images.store import ImageStore

    settings = Settings()
    store = ImageStore(scratch, mount_points=BwrapBackend.mount_points_for(
        (settings.box_claude_dir, settings.box_node_dir)))
    out = {}
    for name, definition in BUILTIN.items():
        if definition.unavailable:
            continue
        t0 = time.perf_counter()
        await store.ensure(name)
        cold = time.perf_counter() - t0
        again = ImageStore(scratch)  # a server starting: nothing in memory
        t0 = time.perf_counter()
        await again.ensure(name)
        out[name] = (cold, (time.perf_counter() - t0) * 1e3)
    return out


def _disk(images_dir: Path) -> list[str]:
    from sophon.images.definitions import BUILTIN

    lines = []
    for definition in BUILTIN.values():
        info_file = images_dir / definition.digest / "image.json"
        if definition.unavailable or not info_file.is_file():
            continue
        info = json.loads(info_file.read_text())
        packed = (info_file.parent / "image.sqfs").stat().st_size
        lines.append(f"{info['name']}: {packed / 2**20:.0f} MiB on disk (squashfs, lz4), "
                     f"{info['size_bytes'] / 2**20:.0f} MiB unpacked, built in "
                     f"{info.get('build_seconds', '?')} s")
    lines += _shared_files(images_dir)
    return lines


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Each regular file under ``root``: (size, mtime). Files unpacked from the same
    Debian package are the same path, size and mtime."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if st.st_mode & 0o170000 == 0o100000:
                out[os.path.relpath(path, root)] = (st.st_size, int(st.st_mtime))
    return out


def _shared_files(images_dir: Path) -> list[str]:
    """Shared blocks: none (each image is a squashfs file of its own). What sharing
    would save: the bytes of each image's files that the generic image holds too."""
    from sophon.images.definitions import BUILTIN

    roots = {name: images_dir / d.digest / "mnt" for name, d in BUILTIN.items()
             if not d.unavailable and (images_dir / d.digest / "mnt" / "usr").is_dir()}
    if "generic" not in roots:
        return ["shared blocks: none (each image a file of its own); generic not mounted"]
    generic = _files(roots["generic"])
    lines = []
    for name, root in roots.items():
        if name == "generic":
            continue
        files = _files(root)
        same = sum(size for path, (size, mtime) in files.items()
                   if generic.get(path) == (size, mtime))
        total = sum(size for size, _ in files.values())
        lines.append(f"shared blocks: none; {name} holds {same / 2**20:.0f} MiB of files "
                     f"identical to generic's (of its {total / 2**20:.0f} MiB): what a "
                     "layered store would keep once")
    return lines


def run(samples: int = 40, cold: bool = True) -> list[Figure]:
    if os.geteuid() != 0 or not shutil.which("mmdebstrap"):
        return [Figure("images_start", "Box start on an image", COMMAND, float("nan"), "ms",
                       float("nan"), "host /usr",
                       details=["skipped: images need root and mmdebstrap"])]
    data_dir = make_data_dir()
    cgroups = Path("/proc/self/cgroup").read_text()
    try:
        image, host = asyncio.run(_starts(samples, data_dir))
        fresh, without, bare = asyncio.run(_request_path(samples, data_dir))
    finally:
        remove_server_cgroups(data_dir, cgroups)
        shutil.rmtree(data_dir, ignore_errors=True)
    ratio = image.p50 / host.p50
    figures = [Figure(
        "images_start", "Session box start + first exec, python image vs host /usr",
        COMMAND, image.p50, "ms", host.p50, "host /usr", goal=f"≤ {GOAL_RATIO}×",
        met=ratio <= GOAL_RATIO,
        details=[f"image: {image.describe()}", f"host /usr: {host.describe()}",
                 *_disk(_shared())]),
        Figure("box_start_request_path",
               "New box on the request path (no pool) + first exec, vs a bare bwrap true",
               COMMAND, fresh.p50, "ms", bare.p50, "bare bwrap (same namespaces) running true",
               goal=f"≤ {GOAL_REQUEST_PATH:g}×", met=fresh.p50 / bare.p50 <= GOAL_REQUEST_PATH,
               details=[f"new box: {fresh.describe()}",
                        f"new box, nothing made ahead: {without.describe()}",
                        f"bare bwrap: {bare.describe()}"])]
    if cold:
        scratch = Path(make_data_dir()) / "images"
        try:
            builds = asyncio.run(_builds(scratch))
        finally:
            for mnt in scratch.glob("*/mnt"):
                subprocess.run(["umount", "-l", str(mnt)], check=False)
            shutil.rmtree(scratch.parent, ignore_errors=True)
        for name, (cold_s, warm_ms) in builds.items():
            figures.append(Figure(
                f"images_build_{name}", f"Image {name}: built cold vs found built (warm)",
                COMMAND, cold_s * 1e3, "ms", warm_ms, "warm",
                details=[f"cold {cold_s:.1f} s (mmdebstrap from the host's apt sources, "
                         f"mksquashfs); warm {warm_ms:.2f} ms (a new store, as a server "
                         "starting: finds it built, and mounted already)"]))
    return figures
