"""What an exec came to, judged once for every caller: the execution API, a session's
exec and the agent's Bash tool must never disagree about why a command ended."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sophon.box.box import ExecOutcome

TIMEOUT = "timeout"
OUT_OF_MEMORY = "memory_limit_exceeded"
DISK_FULL = "disk_quota_exceeded"


@dataclass(frozen=True)
class Verdict:
    """``error`` is None when the command ran to its own end, whatever its exit code."""

    error: str | None
    exit_code: int

    def says(self, timeout_seconds: float) -> str | None:
        """The reason in a sentence a person (or a model) can act on."""
        if self.error == TIMEOUT:
            return f"Command timed out after {timeout_seconds:g} s and was killed"
        if self.error == OUT_OF_MEMORY:
            return ("Command was killed: it ran out of memory (the sandbox's memory limit); "
                    "use less memory, e.g. process the data in smaller pieces")
        if self.error == DISK_FULL:
            return ("The disk is full: the sandbox's disk quota is used up; delete files "
                    "to make room")
        return None


def judge(outcome: ExecOutcome, disk_full: Callable[[], bool]) -> Verdict:
    """The verdict on a finished exec. ``disk_full`` (the box's disk, asked only when
    the command failed) tells a failure for want of space from any other."""
    if outcome.timed_out:
        error: str | None = TIMEOUT
    elif outcome.oom_killed:
        error = OUT_OF_MEMORY
    elif outcome.exit_code != 0 and disk_full():
        error = DISK_FULL
    else:
        error = None
    return Verdict(error, outcome.exit_code)
