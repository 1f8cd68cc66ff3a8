"""A user image's build box (box/builds.py), on a copy of the generic image's root: its
steps write the root (and nothing else), run as the box's own uid, the first failing
step or the build's time running out stops the build, and the box is gone after."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sophon.box import builds
from sophon.box.manager import BoxManager
from sophon.images import sizing

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mmdebstrap"),
    reason="build boxes need root and the images (make test builds them)")


@pytest.fixture
async def root(manager: BoxManager) -> Path:
    """A writable copy of the generic image's root, as a build's scratch root (where a
    box's uid can walk to it, as in the images directory)."""
    assert manager.images is not None, manager.images_off
    _, mounted = await manager.images.ensure("generic")
    copy = manager.settings.data_dir / "scratch" / "root"
    copy.parent.mkdir(mode=0o711)
    await asyncio.to_thread(subprocess.run, ["cp", "-a", str(mounted), str(copy)],
                            check=True)
    return copy


async def run(manager: BoxManager, root: Path, steps: list[str], timeout: float = 60
              ) -> list[str]:
    lines: list[str] = []
    size = sizing.defaults(manager.settings, "generic")
    try:
        await builds.run_steps(manager, root, steps, user_id="u", allow=(),
                               env=builds.BUILD_ENV, size=size, progress=lines.append,
                               timeout=timeout)
    finally:
        assert not [d for d in manager.settings.boxes_dir.iterdir() if d.name[0] == "b"]
        assert not manager.build_roots and not manager.build_rules
    return lines


async def test_steps_write_the_root_as_the_boxs_uid_and_nothing_else(
        manager: BoxManager, root: Path) -> None:
    lines = await run(manager, root, [
        "echo made > /usr/local/bin/made && id -u && touch /workspace/left",
        "cat /usr/local/bin/made; ls /workspace"])
    assert lines[0] == "--- step 1 of 2: echo made > /usr/local/bin/made && id -u && " \
                       "touch /workspace/left"
    assert lines[1] != "0", lines  # not root, even in its own namespace
    assert lines[-2:] == ["made", "left"], lines
    made = os.stat(root / "usr/local/bin/made")
    assert made.st_uid == os.stat(root).st_uid != 0  # the box's host uid


async def test_a_failing_step_stops_the_build_and_later_steps_never_run(
        manager: BoxManager, root: Path) -> None:
    with pytest.raises(builds.BuildStepFailed, match=r"step 1 \(exit 7\) failed with "
                                                     r"exit code 7"):
        await run(manager, root, ["exit 7", "touch /usr/never"])
    assert not (root / "usr/never").exists()


async def test_a_step_past_the_builds_time_is_stopped(manager: BoxManager,
                                                      root: Path) -> None:
    with pytest.raises(builds.BuildStepFailed, match="still running when the build's "
                                                     "time ran out"):
        await run(manager, root, ["echo started", "sleep 120"], timeout=3)
