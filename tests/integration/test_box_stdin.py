"""An exec's standard input: a long-lived command reads messages as they are written
(Claude Code's CLI takes one turn after another this way), and nothing a command does
with its input can end boxd."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sophon.box.box import ExecEvent, ExecInput, ExecOutcome
from sophon.box.manager import BoxManager
from sophon.config import Settings
from sophon.errors import BoxRequestError

ECHO_LINES = "import sys\nfor line in sys.stdin:\n    print('got', line.strip(), flush=True)\n"
ENV = {"PATH": "/usr/bin:/bin"}

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def printed_lines(out: str) -> list[str]:
    """A terminal's output as lines of text: escape sequences and carriage returns out."""
    return [line.strip() for line in ANSI.sub("", out).replace("\r", "\n").split("\n")]





class Reader:
    """Takes an exec's events as they come (the exec starts when it is read from)."""

    def __init__(self, events: AsyncIterator[ExecEvent | ExecOutcome]) -> None:
        self.queue: asyncio.Queue[ExecEvent | ExecOutcome] = asyncio.Queue()
        self.text = ""
        self.task = asyncio.ensure_future(self._drain(events))

    async def _drain(self, events: AsyncIterator[ExecEvent | ExecOutcome]) -> None:
        async for ev in events:
            self.queue.put_nowait(ev)

    async def line(self) -> str:
        """Output until a whole new line has arrived."""
        while "\n" not in self.text:
            ev = await asyncio.wait_for(self.queue.get(), 20)
            assert isinstance(ev, ExecEvent), ev
            self.text += ev.data
        line, _, self.text = self.text.partition("\n")
        return line

    async def outcome(self) -> ExecOutcome:
        await asyncio.wait_for(self.task, 30)
        while not self.queue.empty():
            ev = self.queue.get_nowait()
        assert isinstance(ev, ExecOutcome), ev
        return ev


async def test_a_command_reads_each_message_as_it_is_written(manager: BoxManager) -> None:
    feed = ExecInput()
    async with manager.use("in1") as box:
        reader = Reader(box.exec(["python3", "-u", "-c", ECHO_LINES], timeout=60, env=ENV,
                                 cwd="/workspace", output_cap=65536, stdin=feed))
        await feed.write("one\n")
        # Answered before the next is written: the command is reading, not waiting for EOF.
        assert await reader.line() == "got one"
        await feed.write("two\n")
        assert await reader.line() == "got two"
        await feed.write("three\n", eof=True)
        assert await reader.line() == "got three"
        assert (await reader.outcome()).exit_code == 0


async def test_input_to_a_command_that_ended_is_a_clear_error_and_boxd_lives(
        manager: BoxManager) -> None:
    feed = ExecInput()
    async with manager.use("in2") as box:
        # The command closes its input and keeps running, then exits.
        events = [ev async for ev in box.exec(
            ["sh", "-c", "exec 0<&-; echo closed"], timeout=30, env=ENV, cwd="/workspace",
            output_cap=65536, stdin=feed)]
        assert isinstance(events[-1], ExecOutcome) and events[-1].exit_code == 0
        with pytest.raises(BoxRequestError) as err:
            await feed.write("x" * 1_000_000)
        assert err.value.code in ("not_running", "input_closed")
        assert (await box.request("ping")).model_dump()["pid"]  # boxd is still there


async def test_a_writer_blocked_on_a_command_that_never_reads_is_freed_when_it_ends(
        manager: BoxManager) -> None:
    feed = ExecInput()
    async with manager.use("in3") as box:
        reader = Reader(box.exec(["sleep", "1"], timeout=30, env=ENV, cwd="/workspace",
                                 output_cap=65536, stdin=feed))
        # Far more than a socket holds: the write blocks until sleep exits, then fails.
        with pytest.raises(BoxRequestError) as err:
            await asyncio.wait_for(feed.write("y" * 4_000_000), 30)
        assert err.value.code in ("input_closed", "not_running")
        assert (await reader.outcome()).exit_code == 0


async def test_without_stdin_a_command_reads_nothing(manager: BoxManager) -> None:
    async with manager.use("in4") as box:
        out = [ev async for ev in box.exec(["sh", "-c", "cat; echo end"], timeout=30, env=ENV,
                                           cwd="/workspace", output_cap=65536)]
    assert "".join(e.data for e in out if isinstance(e, ExecEvent)) == "end\n"


async def test_input_to_an_exec_that_could_not_start_fails_at_once(manager: BoxManager) -> None:
    feed = ExecInput()
    async with manager.use("in5") as box:
        reader = Reader(box.exec(["/no/such/program"], timeout=30, env=ENV, cwd="/workspace",
                                 output_cap=65536, stdin=feed))
        with pytest.raises(BoxRequestError) as err:
            await asyncio.wait_for(feed.write("hello\n"), 5)
        assert err.value.code == "not_running"
        with pytest.raises(BoxRequestError, match="could not start"):
            await reader.task


async def running(box: object, name: str) -> bool:
    out = [ev async for ev in box.exec(["pgrep", "-x", name], timeout=10, env=ENV,  # type: ignore[attr-defined]
                                       cwd="/workspace", output_cap=4096)]
    return isinstance(out[-1], ExecOutcome) and out[-1].exit_code == 0


async def test_a_terminal_is_a_pty_whose_shell_keeps_its_directory_and_takes_ctrl_c(
        manager: BoxManager) -> None:
    keys = ExecInput()
    async with manager.use("pty1") as box:
        seen = bytearray()
        got = asyncio.Event()

        async def read() -> None:
            async for data in box.terminal(env={**ENV, "TERM": "xterm", "HOME": "/tmp"},
                                           cwd="/workspace", rows=24, cols=80, keys=keys):
                seen.extend(data)
                got.set()

        reader = asyncio.ensure_future(read())

        async def until(marker: bytes) -> str:
            while marker not in seen:
                got.clear()
                await asyncio.wait_for(got.wait(), 15)
            return seen.decode(errors="replace")

        await keys.write("cd /tmp && tty && echo CD-$((40+2))\r")
        out = await until(b"CD-42")
        assert "/dev/pts/" in out  # a real terminal
        await keys.write("pwd; stty size; echo PWD-$((1+1))\r")
        out = await until(b"PWD-2")
        assert "/tmp\r\n24 80" in out
        await keys.resize(40, 120)
        await keys.write("stty size; echo SIZE-$((2+3))\r")
        assert "40 120" in await until(b"SIZE-5")
        await keys.write("sleep 30; echo SLEPT\r")
        # Ctrl-C once sleep runs in the foreground (typed while the shell is still
        # starting it, the shell would get it instead, as on any terminal).
        while not await running(box, "sleep"):
            pass
        await keys.write("\x03")  # Ctrl-C: the line discipline interrupts sleep
        await keys.write("echo BACK-$((3+4))\r")
        out = await until(b"BACK-7")
        # The typed line is echoed (once or twice, as the shell takes it), but echo never
        # ran: no line of output is SLEPT alone.
        assert "SLEPT" not in printed_lines(out), out
        await keys.write("exit\r")
        await asyncio.wait_for(reader, 15)  # the shell exited: the terminal ends


async def test_a_resize_sent_as_the_terminal_starts_waits_for_it(manager: BoxManager) -> None:
    """`sophon claude-code shell` sends its window's size the moment it connects: that
    resize may reach boxd before the shell's pty exists, and must wait for it rather than
    fail (a failure used to end the connection before the first prompt)."""
    async with manager.use("pty2") as box:
        for _ in range(5):
            keys = ExecInput()
            seen = bytearray()
            got = asyncio.Event()

            async def read(keys: ExecInput = keys, seen: bytearray = seen,
                           got: asyncio.Event = got) -> None:
                async for data in box.terminal(env={**ENV, "TERM": "xterm", "HOME": "/tmp"},
                                               cwd="/workspace", rows=24, cols=80,
                                               keys=keys, argv=["sh"]):
                    seen.extend(data)
                    got.set()

            reader = asyncio.ensure_future(read())
            await keys.resize(33, 99)  # sent as soon as the terminal's request has gone
            await keys.write("stty size\r")
            # The size comes back (exit only then: output written just before a pty's
            # last process exits may not be read).
            while "33 99" not in seen.decode(errors="replace"):
                got.clear()
                await asyncio.wait_for(got.wait(), 15)
            await keys.write("exit\r")
            await asyncio.wait_for(reader, 15)


async def test_a_boxs_programs_start_with_no_signal_ignored(data_dir: Path) -> None:
    """A server started in the background by a shell (`make run &`, nohup) has SIGINT,
    SIGQUIT (and SIGHUP) ignored; its boxes must not pass that on: Ctrl-C would do
    nothing in their terminals, and a program could not be interrupted."""
    import signal

    mgr = BoxManager(Settings(data_dir=data_dir, box_pool_size=0))
    ignored = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
    saved = [signal.signal(sig, signal.SIG_IGN) for sig in ignored]
    try:
        await mgr.start()
        async with mgr.use("sig1") as box:  # its launcher starts while they are ignored
            out = [ev async for ev in box.exec(["grep", "SigIgn", "/proc/self/status"],
                                               timeout=30, env=ENV, cwd="/workspace",
                                               output_cap=4096)]
    finally:
        for sig, was in zip(ignored, saved, strict=True):
            signal.signal(sig, was)
        await mgr.close()
    text = "".join(e.data for e in out if isinstance(e, ExecEvent))
    mask = int(text.split()[1], 16)
    for sig in ignored:
        assert not mask & (1 << (sig - 1)), (sig, text)


async def test_an_input_larger_than_a_frame_arrives_whole(manager: BoxManager) -> None:
    feed = ExecInput()
    async with manager.use("in6") as box:
        reader = Reader(box.exec(["wc", "-c"], timeout=60, env=ENV, cwd="/workspace",
                                 output_cap=65536, stdin=feed))
        # 20 million characters (control characters: six bytes each in JSON), eight
        # times a frame: sent in pieces, in order.
        await feed.write("\x01" * 20_000_000, eof=True)
        assert await reader.line() == "20000000"
        assert (await reader.outcome()).exit_code == 0
