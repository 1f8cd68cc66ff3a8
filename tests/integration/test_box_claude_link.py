"""Claude Code at the Baponi guide's ``cli_path`` (/home/baponi/.local/bin/claude) in
every box: a link in a thread's home that the thread may replace, and a read-only one in
the root of every other box."""

from __future__ import annotations

from pathlib import Path

import pytest

from sophon.box import ids
from sophon.box.box import ExecEvent, ExecOutcome
from sophon.box.manager import BoxManager
from sophon.config import Settings

CLI = Settings().box_claude_dir / "bin" / "claude"

pytestmark = pytest.mark.skipif(not CLI.is_file(), reason=f"{CLI} is not installed "
                                "(make test installs it; see scripts/box-tools)")


async def sh(manager: BoxManager, box_id: str, code: str) -> tuple[str, int]:
    out, outcome = "", None
    async with manager.use(box_id) as box:
        async for ev in box.exec(["bash", "-c", code], timeout=30,
                                 env={"PATH": "/usr/bin:/bin", "HOME": "/home/user"},
                                 cwd="/workspace", output_cap=65536):
            if isinstance(ev, ExecEvent):
                out += ev.data
            else:
                outcome = ev
    assert isinstance(outcome, ExecOutcome)
    return out, outcome.exit_code




async def test_a_threads_home_links_the_cli_and_keeps_what_the_thread_puts_there(
        manager: BoxManager) -> None:
    thread = ids.new_id(ids.Kind.EXECUTION)
    out, code = await sh(manager, thread, "readlink /home/baponi/.local/bin/claude; "
                                          "/home/baponi/.local/bin/claude --version")
    assert code == 0, out
    assert out.splitlines()[0] == str(CLI)
    assert out.strip().endswith("(Claude Code)")
    # The thread replaces it with its own; a new box over the same home keeps that.
    out, code = await sh(manager, thread, "rm ~/.local/bin/claude && echo mine > "
                                          "~/.local/bin/claude")
    assert code == 0, out
    await manager.stop(thread)
    assert manager.running(thread) is None
    out, code = await sh(manager, thread, "cat /home/baponi/.local/bin/claude")
    assert (out, code) == ("mine\n", 0)
    # Removed, it comes back with the next box.
    await sh(manager, thread, "rm ~/.local/bin/claude")
    await manager.stop(thread)
    out, code = await sh(manager, thread, "readlink /home/baponi/.local/bin/claude")
    assert (out, code) == (f"{CLI}\n", 0)


async def test_every_other_box_has_it_read_only_outside_its_home(
        manager: BoxManager) -> None:
    session = ids.new_id(ids.Kind.SESSION)
    out, code = await sh(manager, session, "/home/baponi/.local/bin/claude --version && "
                                           "ls -A ~ | wc -l && rm /home/baponi/.local/bin/claude")
    assert code != 0, out
    # stdout's lines in their order; rm's complaint on stderr may come before them.
    lines = [line for line in out.splitlines() if not line.startswith("rm: ")]
    assert lines[0].endswith("(Claude Code)") and lines[1] == "0", out
    assert "Read-only file system" in out, out


async def test_a_server_without_the_cli_starts_boxes_without_the_link(data_dir: Path) -> None:
    mgr = BoxManager(Settings(data_dir=data_dir, box_pool_size=0,
                              box_claude_dir=data_dir / "no-claude-here"))
    await mgr.start()
    try:
        out, code = await sh(mgr, ids.new_id(ids.Kind.EXECUTION),
                             "ls -A ~; ls /home/baponi/.local 2>&1; true")
        assert code == 0
        assert "No such file or directory" in out and ".local" not in out.splitlines()[0:1]
    finally:
        await mgr.close()
