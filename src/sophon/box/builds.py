"""A user image's build steps (pip, npm, ``run``), run in a box over the image's root.

The build box is a box like any other (its own uid, namespaces, seccomp, cgroup, no
network but the egress door), except that its /usr, /etc and /var are the build's
scratch root, writable: the root is handed to the box's uid for the steps, and packed
owned by root afterwards (images/builder.py). The door lets it reach the hosts of the
image's base and the image's own ``allow`` list (egress/grants.py asks ``build_rules``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from sophon.box import ids
from sophon.box.box import Box, ExecOutcome
from sophon.box.bwrap import BASE_ENV, HOME
from sophon.box.manager import BoxManager
from sophon.errors import SophonError
from sophon.images.sizing import Size

# The output of one step that is kept (the log is for people; a flood is cut).
STEP_OUTPUT_CAP = 4 * 1024 * 1024
# What every step sees (before the door's proxy settings and the image's own env): no
# pip or npm chatter a log does not need, no bytecode of the build's own runs.
# Temporary files on the build box's disk, not its small /tmp (a wheel's build, npm's).
BUILD_TMP = f"{HOME}/.build-tmp"
BUILD_ENV = {**BASE_ENV, "TERM": "dumb", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
             "PIP_PROGRESS_BAR": "off", "npm_config_update_notifier": "false",
             "DEBIAN_FRONTEND": "noninteractive", "TMPDIR": BUILD_TMP}


class BuildStepFailed(SophonError):
    status = 422
    code = "image_build_failed"


async def _chown(root: Path, uid: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        "chown", "-R", "-P", "-h", f"{uid}:{uid}", "--", str(root))
    if await proc.wait() != 0:
        raise BuildStepFailed(f"could not hand the build's root to the build box's uid {uid}")


async def run_steps(boxes: BoxManager, root: Path, steps: list[str], *, user_id: str,
                    allow: tuple[str, ...], env: dict[str, str], size: Size,
                    progress: Callable[[str], None], timeout: float) -> None:
    """Run ``steps`` (shell commands) in order in a build box of ``size`` over ``root``;
    the first that fails (or the time running out) stops the build with BuildStepFailed."""
    box_id = ids.new_id(ids.Kind.BUILD)
    boxes.set_limits(box_id, size.memory_mb, size.cpus, size.pids)
    boxes.build_roots[box_id] = root
    boxes.build_rules[box_id] = (user_id, allow)
    boxes.set_owner(box_id, user_id)
    deadline = time.monotonic() + timeout
    try:
        uid = await boxes.uid_for(box_id)
        if uid is not None:
            await _chown(root, uid)
        async with boxes.use(box_id, disk_mb=size.disk_mb) as box:
            for n, step in enumerate(steps, 1):
                progress(f"--- step {n} of {len(steps)}: {step}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BuildStepFailed(f"the build ran out of time before step {n}")
                outcome = await _run(box, f"mkdir -p {BUILD_TMP} && {{\n{step}\n}}", env,
                                     left, progress)
                if outcome.timed_out:
                    raise BuildStepFailed(f"step {n} ({step}) was still running when the "
                                          "build's time ran out, and was stopped")
                if outcome.oom_killed:
                    raise BuildStepFailed(f"step {n} ({step}) ran out of memory")
                if outcome.exit_code != 0:
                    raise BuildStepFailed(f"step {n} ({step}) failed with exit code "
                                          f"{outcome.exit_code}")
    finally:
        await boxes.destroy(box_id)
        boxes.build_roots.pop(box_id, None)
        boxes.build_rules.pop(box_id, None)


async def _run(box: Box, step: str, env: dict[str, str], timeout: float,
               progress: Callable[[str], None]) -> ExecOutcome:
    """One step, its output handed to ``progress`` a line at a time (both streams)."""
    pending = {"stdout": "", "stderr": ""}
    async for ev in box.exec(["bash", "-c", step], timeout=timeout, env=env, cwd="/tmp",
                             output_cap=STEP_OUTPUT_CAP):
        if isinstance(ev, ExecOutcome):
            for rest in pending.values():
                if rest:
                    progress(rest)
            return ev
        text = pending[ev.stream] + ev.data
        *lines, pending[ev.stream] = text.split("\n")
        for line in lines:
            progress(line.rstrip("\r"))
    raise BuildStepFailed(f"the build box ended during step: {step}")
