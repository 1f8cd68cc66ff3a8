"""spawnd, the helper that starts box processes: what a box's first process gets from it,
and what happens when it dies."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from sophon.box.spawner import Launch, Spawner
from sophon.errors import BoxError
from tests.conftest import wait_for

T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, Any]], Any]

# Lists the child's open descriptors without opening one to look.
OPEN_FDS = ("import os\n"
            "def is_open(n):\n"
            "    try:\n"
            "        os.fstat(n)\n"
            "        return True\n"
            "    except OSError:\n"
            "        return False\n"
            "print(sorted(n for n in range(256) if is_open(n)))\n")


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, T]], T]:
    """Each test on asyncio's own loop and on uvloop (what the server runs on)."""
    if request.param == "asyncio":
        return asyncio.run
    uvloop = pytest.importorskip("uvloop")
    return uvloop.run  # type: ignore[no-any-return]


def launch(*argv: str, **kw: object) -> Launch:
    return Launch(argv=list(argv), env={"PATH": "/usr/bin:/bin"}, **kw)  # type: ignore[arg-type]


def test_a_child_gets_its_stdio_and_passed_descriptors_at_their_numbers_only(run: Run) -> None:
    async def main() -> tuple[bytes, bytes, int]:
        spawner = Spawner()
        r, w = os.pipe()
        os.write(w, b"from-a-passed-fd")
        os.close(w)
        try:
            proc = await spawner.spawn(launch(
                sys.executable, "-I", "-S", "-c",
                OPEN_FDS + f"print(os.read({r}, 100).decode()); import sys; "
                "print(sys.stdin.readline().strip()); print('to-stderr', file=sys.stderr)",
                pass_fds=(r,)))
        finally:
            os.close(r)
        proc.stdin.write(b"from-stdin\n")
        await proc.stdin.drain()
        out = await proc.stdout.read()
        err = await proc.stderr.read()
        code = await proc.wait()
        await spawner.close()
        return out, err, code

    out, err, code = run(main())  # type: ignore[misc]
    assert code == 0, err
    fds, passed, stdin = out.decode().splitlines()
    r_number = int(fds.strip("[]").split(", ")[-1])
    # Only stdio and the passed pipe: no socket to spawnd, nothing of the server's.
    assert fds == f"[0, 1, 2, {r_number}]", fds
    assert (passed, stdin, err) == ("from-a-passed-fd", "from-stdin", b"to-stderr\n")


def test_exit_codes_and_kills_are_reported(run: Run) -> None:
    async def main() -> tuple[int, int]:
        spawner = Spawner()
        done = await spawner.spawn(launch("/bin/sh", "-c", "exit 3"))
        sleeper = await spawner.spawn(launch("/bin/sleep", "60"))
        sleeper.kill()
        codes = await asyncio.wait_for(asyncio.gather(done.wait(), sleeper.wait()), 10)
        await spawner.close()
        return codes[0], codes[1]

    assert run(main()) == (3, -signal.SIGKILL)


def test_a_launch_that_fails_before_its_exec_says_why_on_stderr(run: Run) -> None:
    async def main() -> tuple[int, bytes]:
        spawner = Spawner()
        proc = await spawner.spawn(launch("/nonexistent/bwrap", "--version"))
        err = await proc.stderr.read()
        code = await proc.wait()
        await spawner.close()
        return code, err

    code, err = run(main())  # type: ignore[misc]
    assert code == 127
    assert err.startswith(b"box launcher: ") and b"/nonexistent/bwrap" in err, err


def test_when_spawnd_dies_its_processes_end_and_the_next_spawn_starts_a_new_one(run: Run) -> None:
    async def main() -> tuple[int | None, int, bytes]:
        spawner = Spawner()
        sleeper = await spawner.spawn(launch("/bin/sleep", "60"))
        first = spawner.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        code = await asyncio.wait_for(sleeper.wait(), 10)
        again = await spawner.spawn(launch("/bin/echo", "again"))
        out = await again.stdout.read()
        second = spawner.pid
        await spawner.close()
        return second if second != first else None, code, out

    second, code, out = run(main())  # type: ignore[misc]
    assert second is not None and code == -signal.SIGKILL and out == b"again\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping root needs root")
def test_a_child_given_credentials_runs_as_them_with_no_capabilities(run: Run) -> None:
    async def main() -> bytes:
        spawner = Spawner()
        proc = await spawner.spawn(launch(
            "/bin/sh", "-c", "id -u; id -g; grep -E '^(Cap|NoNewPrivs|Groups)' /proc/self/status",
            creds={"uid": 65534, "gid": 65534, "groups": [4242]}))
        out = await proc.stdout.read()
        assert await proc.wait() == 0
        await spawner.close()
        return out

    lines = run(main()).decode().splitlines()  # type: ignore[attr-defined]
    assert lines[:2] == ["65534", "65534"], lines
    fields = dict(line.split(":\t") for line in lines[2:])
    assert fields.pop("Groups").strip() == "4242", fields
    assert fields.pop("NoNewPrivs") == "1"
    assert fields and all(int(v, 16) == 0 for v in fields.values()), fields


def test_a_closed_spawner_starts_again_on_the_next_spawn(run: Run) -> None:
    async def main() -> bytes:
        spawner = Spawner()
        await spawner.close()  # closing one that never started is fine
        proc = await spawner.spawn(launch("/bin/echo", "ok"))
        out = await proc.stdout.read()
        await spawner.close()
        return out

    assert run(main()) == b"ok\n"


def test_a_launcher_that_cannot_run_is_a_box_error(run: Run) -> None:
    async def main() -> None:
        await Spawner(python="/nonexistent/python3").spawn(launch("/bin/true"))

    with pytest.raises(BoxError, match="could not start the box launcher"):
        run(main())


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def test_finished_processes_leave_no_descriptor_open_and_close_none_twice(run: Run) -> None:
    """Each process's pipes and pidfd are closed once: none leaks, and none is closed
    again later (which would close whatever descriptor got the number since)."""
    async def main() -> tuple[set[int], int]:
        spawner = Spawner()

        async def one() -> None:
            proc = await spawner.spawn(launch("/bin/sh", "-c", "echo out; echo err >&2"))
            assert await proc.stdout.read() == b"out\n"
            assert await proc.stderr.read() == b"err\n"
            assert await proc.wait() == 0

        await one()  # spawnd is up, and the loop has what it keeps
        await asyncio.sleep(0.1)
        gc.collect()  # what earlier tests left to the collector is closed before, not during
        before = open_fds()
        for _ in range(20):
            await one()
        await asyncio.sleep(0.1)
        gc.collect()
        after = open_fds()
        canary = os.open("/dev/null", os.O_RDONLY)
        gc.collect()
        await asyncio.sleep(0.1)
        os.fstat(canary)  # still ours
        os.close(canary)
        await spawner.close()
        return before ^ after, canary

    changed, _ = run(main())
    assert not changed, f"descriptors left open or closed: {changed}"


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_no_descriptor_is_closed_twice(run: Run) -> None:
    """A descriptor closed twice is closed, the second time, under whatever another
    thread (the server's disk and cgroup work runs in threads) has just opened with its
    number. Watched with strace: every close that finds nothing to close."""
    async def main() -> None:
        spawner = Spawner()
        await (await spawner.spawn(launch("/bin/true"))).wait()
        tracer = await asyncio.create_subprocess_exec(
            "strace", "-q", "-f", "-e", "trace=close", "-e", "status=failed",
            "-p", str(os.getpid()), stderr=asyncio.subprocess.PIPE)
        await asyncio.sleep(0.5)  # attached
        for _ in range(10):
            proc = await spawner.spawn(launch("/bin/echo", "x"))
            await proc.stdout.read()
            await proc.stderr.read()
            await proc.wait()
        await asyncio.sleep(0.1)
        tracer.terminate()
        _, err = await asyncio.wait_for(tracer.communicate(), 10)
        log = err.decode()
        await spawner.close()
        failed = [line for line in log.splitlines() if "EBADF" in line]
        assert not failed, failed

    run(main())


def test_run_gives_the_exit_code_and_stderr_and_finds_bare_names_on_path(run: Run) -> None:
    async def main() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        spawner = Spawner()
        try:
            return (await spawner.run(["sh", "-c", "echo out; echo err >&2; exit 4"]),
                    await spawner.run(["no-such-command-here"]))
        finally:
            await spawner.close()

    (code, err), (missing, why) = run(main())
    assert (code, err) == (4, b"err\n")
    assert missing == 127 and b"no-such-command-here" in why, why


def test_a_spawn_cancelled_after_the_fork_kills_its_process(
        run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    forked: list[int] = []

    async def cancelled(pid: int, *_: object) -> None:
        forked.append(pid)
        raise asyncio.CancelledError

    async def main() -> None:
        spawner = Spawner()
        monkeypatch.setattr(Spawner, "_wrap", staticmethod(cancelled))
        with pytest.raises(asyncio.CancelledError):
            await spawner.spawn(launch("/bin/sleep", "60"))
        monkeypatch.undo()
        ok = await spawner.spawn(launch("/bin/echo", "still-works"))  # control
        assert await ok.stdout.read() == b"still-works\n"
        await spawner.close()

    run(main())
    [pid] = forked
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10,
             what="the process of a cancelled spawn to end")


def test_a_child_made_ahead_runs_the_start_that_names_it_and_only_that(run: Run) -> None:
    async def main() -> tuple[int, int, bytes, list[int], bytes]:
        spawner = Spawner()
        first = await spawner.ahead([])
        second = await spawner.ahead([])
        assert spawner.is_ahead(first) and spawner.is_ahead(second)
        proc = await spawner.spawn(launch(sys.executable, "-c", OPEN_FDS), by=first)
        out = await proc.stdout.read()
        code = await asyncio.wait_for(proc.wait(), 10)
        # One that is never used ends when told to, and its exit is nobody's: a later
        # child given its pid again must not look ended.
        spawner.drop_ahead(second)
        for _ in range(500):
            if second not in spawner._abandoned:
                break
            await asyncio.sleep(0.01)
        assert second not in spawner._abandoned and not spawner._early_exits
        echo = await spawner.spawn(launch("/bin/echo", "next"))
        said = await echo.stdout.read()
        await spawner.close()
        return proc.pid, code, out, [first], said

    pid, code, out, (first,), said = run(main())  # type: ignore[misc]
    assert pid == first and code == 0
    assert out == b"[0, 1, 2]\n"  # nothing of spawnd's or of another child's
    assert said == b"next\n"


def test_a_start_naming_a_child_made_ahead_that_died_forks_as_usual(run: Run) -> None:
    async def main() -> tuple[int, int, bytes, int]:
        spawner = Spawner()
        dead = await spawner.ahead([])
        # Killed behind the spawner's back; the start may reach spawnd before or after
        # the exit does: either way it runs, once, in a new child.
        os.kill(dead, signal.SIGKILL)
        proc = await spawner.spawn(launch("/bin/sh", "-c", "echo ran; sleep 0.2"), by=dead)
        out = await proc.stdout.read()
        code = await asyncio.wait_for(proc.wait(), 10)
        await spawner.close()
        return proc.pid, code, out, dead

    pid, code, out, dead = run(main())  # type: ignore[misc]
    assert pid != dead and code == 0 and out == b"ran\n"


def test_ctrl_c_in_the_servers_terminal_leaves_spawnd_to_the_server(run: Run) -> None:
    """SIGINT reaches the whole process group: spawnd waits for the server's shutdown."""
    async def main() -> tuple[bool, bytes, bytes]:
        spawner = Spawner()
        waiting = await spawner.ahead([])
        first = spawner.pid
        assert first is not None
        os.kill(first, signal.SIGINT)
        os.kill(waiting, signal.SIGINT)
        proc = await spawner.spawn(launch("/bin/sh", "-c", "echo $$ ran"), by=waiting)
        out = await proc.stdout.read()
        err = await proc.stderr.read()
        same = spawner.pid == first
        await spawner.close()
        return same, out, err

    same, out, err = run(main())  # type: ignore[misc]
    assert same and out.endswith(b" ran\n") and err == b""
