"""`stream` never leaves a user guessing: it says where the session stands when it
attaches, and says so (on stderr: --json stays clean) while the server is away."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from sophon.testing import ModelServer
from tests.conftest import LiveServer
from tests.e2e.cli_support import CLI_DEADLINE, cli_env, sophon, start, stop


def test_attach_says_the_state_and_an_outage_says_it_is_reconnecting(
        own_server: LiveServer, model: ModelServer, config_home: Path) -> None:
    key = own_server.add_user()
    env = cli_env(config_home, SOPHON_URL=own_server.url, SOPHON_API_KEY=key)
    sid = sophon(env, "claude-code", "new", "--name", "quiet").stdout.strip()
    proc, out, err = start(env, "claude-code", "stream", sid, "--json")
    try:
        err.wait_until(lambda lines: any("following live" in line for line in lines),
                       what="the state line")
        assert f"session quiet ({sid}): idle" in err.lines[0]
        own_server.stop()
        err.wait_until(lambda lines: any("reconnecting (attempt 2)" in line
                                         for line in lines), what="the reconnecting lines")
        own_server.start()
        err.wait_until(lambda lines: any("reconnected" in line for line in lines),
                       what="the reconnected line")
        assert sophon(env, "claude-code", "exec", sid, "echo back").returncode == 0
        out.wait_until(lambda lines: any("exec_end" in line for line in lines),
                       what="events after the outage")
        proc.send_signal(signal.SIGINT)
        proc.wait(CLI_DEADLINE)
    finally:
        stop(proc)
    for line in out.finish().splitlines():  # stdout: events only
        assert json.loads(line)["type"]
