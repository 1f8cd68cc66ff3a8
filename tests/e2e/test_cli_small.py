"""Small things a CLI user meets: which approvals are waiting, and a busy session's
answer in the CLI's own words."""

from __future__ import annotations

from sophon.client import Client
from sophon.testing import ModelServer
from tests.conftest import LiveServer, wait_for
from tests.e2e.cli_support import BASH, SHELL_TURN, sophon, start, stop


def test_approvals_lists_what_waits_and_says_how_to_answer(
        env: dict[str, str], model: ModelServer, server: LiveServer, key: str) -> None:
    model.set_script(SHELL_TURN)
    sid = sophon(env, "claude-code", "new", "--name", "waits").stdout.strip()
    assert sophon(env, "claude-code", "approvals", sid).stdout.strip() == \
        "nothing is waiting for an answer"
    proc, out, err = start(env, "claude-code", "send", sid, "write hi.txt")
    try:
        with Client(server.url, key) as c:
            wait_for(lambda: c.approvals(sid), 30, 0.1, "the approval request")
            pending = c.approvals(sid)[0]
        r = sophon(env, "claude-code", "approvals", sid)
        assert r.returncode == 0, r.stderr
        assert pending["approval_id"] in r.stdout and BASH[:40] in r.stdout
        assert f"sophon claude-code approve|deny {sid} APPROVAL" in r.stdout
        # A second message while the turn waits: the CLI's words, not the API's.
        busy = sophon(env, "claude-code", "send", sid, "and another thing")
        assert busy.returncode == 1
        assert "--queue" in busy.stderr and '"queue"' not in busy.stderr
        assert sophon(env, "claude-code", "approve", sid, pending["approval_id"]).returncode == 0
        assert proc.wait(30) == 0
    finally:
        stop(proc)
