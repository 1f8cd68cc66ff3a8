"""Limits hold with cgroups and, less tightly, without them; leftovers of a crashed
server are cleaned up at the next start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from sophon.box.box import ExecEvent, ExecOutcome
from sophon.box.cgroups import CgroupTree
from sophon.box.disk import BoxDisk, backing_file
from sophon.box.manager import BoxManager, cgroup_name
from sophon.config import Settings
from sophon.errors import BoxError
from tests.conftest import LiveServer, wait_for


async def run(manager: BoxManager, box_id: str, code: str) -> tuple[str, ExecOutcome]:
    stderr, outcome = "", None
    async with manager.use(box_id) as box:
        async for ev in box.exec(["python3", "-c", code], timeout=30, env={"PATH": "/usr/bin"},
                                 cwd="/workspace", output_cap=65536):
            if isinstance(ev, ExecEvent):
                stderr += ev.data if ev.stream == "stderr" else ""
            else:
                outcome = ev
    assert outcome is not None
    return stderr, outcome


async def test_without_cgroups_rlimits_hold_and_the_server_says_so(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(CgroupTree, "detect", classmethod(lambda cls, name: None))
    with caplog.at_level(logging.WARNING):
        manager = BoxManager(Settings(data_dir=data_dir, box_pool_size=0))
    assert manager.limits_mode == "rlimit"
    assert any("fall back to rlimits" in r.message for r in caplog.records)
    await manager.start()
    try:
        stderr, outcome = await run(manager, "r1", "x = bytearray(2 * 1024**3)")
        assert outcome.exit_code != 0 and "MemoryError" in stderr
        _, fine = await run(manager, "r1", "print('ok')")
        assert fine.exit_code == 0
    finally:
        await manager.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroups are managed only by a root server")
def test_crashed_servers_cgroups_are_reaped_at_start(own_server: LiveServer) -> None:
    key = own_server.add_user()
    r = httpx.post(own_server.url + "/v1/sandbox/execute", timeout=30,
                   headers={"Authorization": f"Bearer {key}"},
                   json={"code": "true", "language": "bash", "thread_id": "t"})
    assert r.status_code == 200
    tree = CgroupTree.detect(cgroup_name(own_server.data_dir))
    assert tree is not None

    def box_cgroups() -> set[str]:
        return {d.name for p in tree.parents for d in p.iterdir() if d.is_dir()}

    assert box_cgroups()
    own_server.kill()
    before = box_cgroups()
    assert before, "a SIGKILLed server cannot clean up its cgroups itself"
    own_server.start()
    # Everything from before the crash is gone (new pool boxes may have appeared).
    wait_for(lambda: not (box_cgroups() & before), what="stale cgroups to be removed")


async def test_without_loop_mounts_boxes_run_without_a_quota_and_the_server_says_so(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import types

    import sophon.box.disk

    # A host without e2fsprogs (what a root server sees; an unprivileged one is the same).
    monkeypatch.setattr(sophon.box.disk, "shutil",
                        types.SimpleNamespace(which=lambda *a, **k: None))
    with caplog.at_level(logging.WARNING):
        manager = BoxManager(Settings(data_dir=data_dir, box_pool_size=0))
    assert manager.disks.mode.startswith("off")
    assert any("disk quotas are off" in r.message for r in caplog.records)
    await manager.start()
    try:
        _, outcome = await run(manager, "d1", "open('/workspace/f', 'w').write('x')")
        assert outcome.exit_code == 0
        box = data_dir / "boxes" / "d1"
        assert (box / "workspace").is_dir() and not (box / "workspace").is_symlink()
        assert not (box / "disk.img").exists()
        assert manager.disk_use("d1").limit_bytes is None
    finally:
        await manager.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="box disks need a root server")
async def test_a_box_whose_disk_cannot_be_mounted_fails_saying_why(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher's steps before bwrap (cgroups, the disk's mount, dropping root) report
    what failed, and leave nothing running or held."""
    manager = BoxManager(Settings(data_dir=data_dir, box_pool_size=0))
    await manager.start()
    try:
        real = manager.disks.prepare

        async def broken(box_id: str, size_mb: int | None = None) -> BoxDisk | None:
            disk = await real(box_id, size_mb)
            assert disk is not None
            disk.close()  # its loop device clears itself: nothing to mount any more
            return BoxDisk("/dev/loop-none-such", disk.mountpoint, -1)

        monkeypatch.setattr(manager.disks, "prepare", broken)
        with pytest.raises(BoxError) as refused:
            await manager.get("m1")
        assert "mounting /dev/loop-none-such" in str(refused.value), refused.value
        assert manager.running("m1") is None
        monkeypatch.setattr(manager.disks, "prepare", real)  # control: it starts now
        async with manager.use("m1") as box:
            assert await box.process_count() >= 0
    finally:
        await manager.close()


def image_root(img: Path) -> dict[str, tuple[str, str]]:
    """The entries of an ext4 image's root directory: name -> (mode, uid), read from
    the image file itself (debugfs), without mounting it."""
    listing = subprocess.run(["debugfs", "-R", "ls -l /", str(img)], capture_output=True,
                             text=True, check=True).stdout
    return {f[-1]: (f[1], f[3]) for f in (line.split() for line in listing.splitlines())
            if len(f) >= 9}


@contextlib.asynccontextmanager
async def small_disks(data_dir: Path) -> AsyncIterator[BoxManager]:
    """A started manager whose boxes (and spares) get 64 MB disks."""
    manager = BoxManager(Settings(data_dir=data_dir, box_pool_size=0, box_disk_mb=64))
    await manager.start()
    try:
        yield manager
    finally:
        await manager.close()


def spare_inodes(spares: Path) -> set[int]:
    return {p.stat().st_ino for p in spares.glob("64-*.img")}


def disk_inode(data_dir: Path, box_id: str) -> int:
    return (data_dir / "boxes" / box_id / "disk.img").stat().st_ino


async def spares_ready(ready: Callable[[], list[Path]], what: str) -> None:
    """Polled on the loop: the spares are made by the manager's task on this loop."""
    from sophon.box.disk import SPARE_DISKS

    end = time.monotonic() + 30
    while len(ready()) != SPARE_DISKS:
        assert time.monotonic() < end, f"timed out waiting for {what}: {ready()}"
        await asyncio.sleep(0.05)


@pytest.mark.skipif(os.geteuid() != 0, reason="box disks need a root server")
async def test_a_new_box_takes_a_disk_made_ahead_and_another_is_made(data_dir: Path) -> None:
    """A new box's disk is one of the spares made ahead (moved, not made on its
    request's path), whole and its own; another spare takes its place. A disk of
    another size is made for its box; spares from before the start go (another size,
    a crash's half-made one)."""
    spares = data_dir / "spare-disks"
    spares.mkdir(parents=True)
    (spares / "64-crashed.new").write_bytes(b"")  # a crash's half-made spare
    (spares / "128-old.img").write_bytes(b"")  # of a size no longer the default
    async with small_disks(data_dir) as manager:
        def ready() -> list[Path]:
            return sorted(spares.glob("64-*.img"))

        await spares_ready(ready, "the spare disks")
        assert sorted(p.name for p in spares.iterdir()) == [p.name for p in ready()]
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in ready())
        for spare in ready():  # made with its box's two directories, root's until then
            assert {"workspace": ("40700", "0"), "home": ("40700", "0")}.items() <= \
                image_root(spare).items()
        inodes = spare_inodes(spares)
        _, outcome = await run(manager, "n1", "open('/workspace/f', 'w').write('x' * 10**6)")
        assert outcome.exit_code == 0
        assert disk_inode(data_dir, "n1") in inodes
        assert manager.disk_use("n1").limit_bytes is not None
        assert manager.disk_use("n1").limit_bytes <= 64 * 2**20  # type: ignore[operator]
        await spares_ready(ready, "a spare to replace it")
        # Another size: made for the box; the spares stay as they are.
        before = {p.stat().st_ino for p in ready()}
        async with manager.use("n2", disk_mb=96):
            pass
        assert disk_inode(data_dir, "n2") not in before
        assert {p.stat().st_ino for p in ready()} == before


def spare_devices(spares: Path) -> dict[Path, int]:
    """Each spare image in ``spares`` and the loop device it is attached to."""
    found = {}
    for dev in Path("/sys/block").glob("loop*"):
        number = int(dev.name[4:])
        backing = backing_file(number)
        if backing is not None and Path(backing).parent == spares.resolve():
            found[Path(backing)] = number
    return found


def loops_on(img: Path) -> list[int]:
    """The loop devices attached to ``img``."""
    path = str(img.resolve())
    return [int(d.name[4:]) for d in Path("/sys/block").glob("loop*")
            if backing_file(int(d.name[4:])) == path]


def host_mount_table() -> str:
    return Path("/proc/self/mountinfo").read_text()


def set_up(number: int) -> bool:
    """ext4 lists every filesystem it has set up, mounted anywhere or nowhere."""
    return Path(f"/sys/fs/ext4/loop{number}").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="box disks need a root server")
async def test_a_spare_disk_is_set_up_ahead_listed_in_no_mount_table_and_let_go(
    data_dir: Path
) -> None:
    """The filesystem of a spare disk is set up before any box asks for it (the box's
    mount then reuses it), yet no mount table lists it: not the host's, not a box's.
    Once its box is gone, or the server has closed, nothing holds the device."""
    spares = data_dir / "spare-disks"
    async with small_disks(data_dir) as manager:
        async def each_spare_set_up() -> dict[Path, int]:
            from sophon.box.disk import SPARE_DISKS

            end = time.monotonic() + 30
            while True:
                devices = spare_devices(spares)
                if len(devices) == SPARE_DISKS and all(map(set_up, devices.values())):
                    return devices
                assert time.monotonic() < end, f"spares not set up ahead: {devices}"
                await asyncio.sleep(0.05)

        devices = await each_spare_set_up()
        inodes = {img.stat().st_ino: n for img, n in devices.items()}
        assert not [n for n in devices.values() if f"/dev/loop{n} " in host_mount_table()]

        _, outcome = await run(manager, "n1", "print(open('/proc/self/mountinfo').read())")
        taken = disk_inode(data_dir, "n1")
        mine = inodes[taken]
        async with manager.use("n1") as box:
            table = ""
            async for ev in box.exec(["cat", "/proc/self/mountinfo"], timeout=10,
                                     env={"PATH": "/usr/bin"}, cwd="/", output_cap=2**20):
                if isinstance(ev, ExecEvent):
                    table += ev.data
        assert f"/dev/loop{mine} " in table  # its own disk, the control
        others = [n for n in spare_devices(spares).values() if n != mine]
        assert others and not [n for n in others if f"/dev/loop{n} " in table]

        await manager.destroy("n1")
        wait_for(lambda: backing_file(mine) is None and not set_up(mine), deadline=10,
                 what="the taken spare's device let go with its box")
        left = list(spare_devices(spares).values())
    wait_for(lambda: not [n for n in left if backing_file(n) is not None or set_up(n)],
             deadline=10, what="the spares' devices let go at close")


@pytest.mark.skipif(os.geteuid() != 0, reason="box disks need a root server")
async def test_a_spare_whose_filesystem_could_not_be_set_up_ahead_still_serves(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel without the mount API (before 5.2) refuses the set-up: the spare is
    taken all the same and its box mounts it the usual way."""
    def refused(*_: object) -> int:
        raise OSError(38, "fsopen: Function not implemented")

    monkeypatch.setattr("sophon.box.held_mount.hold", refused)
    spares = data_dir / "spare-disks"
    async with small_disks(data_dir) as manager:
        await spares_ready(lambda: list(spare_devices(spares)), "spares attached")
        assert not [n for n in spare_devices(spares).values() if set_up(n)]
        inodes = spare_inodes(spares)
        _, outcome = await run(manager, "n1", "open('/workspace/f', 'w').write('x' * 10**6)")
        assert outcome.exit_code == 0
        assert disk_inode(data_dir, "n1") in inodes
        assert manager.disk_use("n1").limit_bytes is not None


@pytest.mark.skipif(os.geteuid() != 0, reason="box disks need a root server")
async def test_a_spare_made_without_a_loop_device_is_attached_when_taken(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No loop device was free when the spare was made: the box that takes it gets
    one attached on its start, and its disk quota holds."""
    def no_device(img: Path) -> tuple[int, int, int]:
        raise BoxError(f"could not attach {img.name} to a loop device: none free")

    monkeypatch.setattr("sophon.box.disk.attach_spare", no_device)
    spares = data_dir / "spare-disks"
    async with small_disks(data_dir) as manager:
        await spares_ready(lambda: sorted(spares.glob("64-*.img")), "the spare disks")
        assert not spare_devices(spares)
        inodes = spare_inodes(spares)
        _, outcome = await run(manager, "n1", "open('/workspace/f', 'w').write('x' * 10**8)")
        assert outcome.exit_code != 0  # 100 MB does not fit on a 64 MB disk
        assert disk_inode(data_dir, "n1") in inodes
        use = manager.disk_use("n1")
        assert use.limit_bytes is not None and use.limit_bytes <= 64 * 2**20


@pytest.mark.skipif(os.geteuid() != 0, reason="box disks need a root server")
async def test_a_spare_being_attached_is_not_taken_by_a_start(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start while a spare is half ready (its image made, its loop device being
    attached) does not take it: the image would get a second loop device (and, with the
    spare's filesystem set up ahead, a second mount) on top of the box's own."""
    from sophon.box import disk

    attached, go_on = threading.Event(), threading.Event()
    real = disk.attach_loop

    def slow_attach(img: Path) -> tuple[int, int]:
        found = real(img)
        if img.parent.name == "spare-disks":  # a box's own attach is not held up
            attached.set()
            go_on.wait(20)
        return found

    monkeypatch.setattr(disk, "attach_loop", slow_attach)
    spares = data_dir / "spare-disks"
    async with small_disks(data_dir) as manager:
        try:
            end = time.monotonic() + 30
            while not attached.is_set():
                assert time.monotonic() < end, "no spare was made"
                await asyncio.sleep(0.02)
            _, outcome = await run(manager, "n1", "print('started')")
            assert outcome.exit_code == 0
            go_on.set()
            await spares_ready(lambda: sorted(spares.glob("64-*.img")), "the spare disks")
            on_image = loops_on(data_dir / "boxes" / "n1" / "disk.img")
            assert len(on_image) == 1, on_image  # the box's own, and no other
        finally:
            go_on.set()
