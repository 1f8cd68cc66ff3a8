"""A workload cannot end boxd, the box's init, with a signal, and what boxd starts begins
with every signal at its default: none ignored, none blocked."""

from __future__ import annotations

import httpx

from tests.security.helpers import execute, thread_name

# The signals whose default action ends a process, and the job-control ones that stop it.
SIGNALS = ["HUP", "INT", "QUIT", "ABRT", "USR1", "USR2", "PIPE", "ALRM", "TERM", "XCPU",
           "XFSZ", "VTALRM", "SYS", "TSTP", "TTIN", "TTOU", "STOP", "KILL"]


def test_no_signal_from_a_workload_ends_boxd(http: httpx.Client) -> None:
    thread = thread_name("signals")
    # Control: the same signal ends the workload's own child.
    first = execute(http, "echo kept > /tmp/marker; sleep 60 & kid=$!; kill -TERM $kid; "
                          "wait $kid; echo \"child:$?\"", thread_id=thread)
    assert first["stdout"] == "child:143\n", first
    sent = execute(http, " ; ".join(f"kill -s {s} 1 && echo {s}" for s in SIGNALS),
                   thread_id=thread)
    # kill succeeds for every catchable signal (the kernel drops them); the last two it
    # refuses to send to the namespace's init at all, or drops them too.
    assert sent["stdout"].split()[:len(SIGNALS) - 2] == SIGNALS[:-2], sent
    # The same box answers, with /tmp (which lives as long as the box) as it was.
    again = execute(http, "cat /tmp/marker; cat /proc/1/cmdline | tr '\\0' ' '",
                    thread_id=thread)
    assert again["stdout"].startswith("kept\n/opt/sophon/agent/boxd"), again


def test_commands_start_with_no_signal_ignored_or_blocked(http: httpx.Client) -> None:
    res = execute(http, "grep -E '^Sig(Ign|Blk):' /proc/self/status")
    assert res["exit_code"] == 0, res
    masks = dict(line.split(":\t") for line in res["stdout"].splitlines())
    assert masks == {"SigIgn": "0000000000000000", "SigBlk": "0000000000000000"}, res
