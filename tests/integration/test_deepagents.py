"""LangChain Deep Agents' sandbox backend (baponi[deepagents]) against a live Sophon: every
tool it offers works, and what one writes the others see."""

from __future__ import annotations

import warnings

import pytest

from tests.conftest import LiveServer

deepagents = pytest.importorskip("baponi.deepagents")


def test_every_tool_of_the_deep_agents_backend_works(server: LiveServer) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the client warns about plain http on loopback
        sb = deepagents.BaponiSandbox(api_key=server.add_user(), base_url=server.url)
        assert sb.write("/home/baponi/notes.txt", "alpha\nbeta\n").error is None
        read = sb.read("/home/baponi/notes.txt")
        assert read.error is None and read.file_data["content"] == "alpha\nbeta"
        edit = sb.edit("/home/baponi/notes.txt", "beta", "gamma")
        assert edit.error is None and edit.occurrences == 1
        # .local holds Claude Code where the Baponi guide looks for it (bin/claude).
        assert sorted(e["path"] for e in sb.ls("/home/baponi").entries) == [
            "/home/baponi/.local", "/home/baponi/notes.txt"]
        assert [m["path"] for m in sb.glob("*.txt", "/home/baponi").matches] == \
            ["/home/baponi/notes.txt"]
        grep = sb.grep("gamma", "/home/baponi")
        assert [(m["path"], m["line"]) for m in grep.matches] == [("/home/baponi/notes.txt", 2)]
        # Commands run in /home/baponi and see what the file tools wrote ...
        ran = sb.execute("cat notes.txt; pwd")
        assert (ran.exit_code, ran.output) == (0, "alpha\ngamma\n/home/baponi\n")
        # ... and the files API (signed URLs) carries bytes both ways.
        up = sb.upload_files([("/home/baponi/up.bin", b"\x00\x01data")])
        assert [u.error for u in up] == [None]
        down = sb.download_files(["/home/baponi/up.bin", "/home/baponi/notes.txt"])
        assert [d.content for d in down] == [b"\x00\x01data", b"alpha\ngamma\n"]
        assert sb.execute("ls").output.split() == ["notes.txt", "up.bin"]
