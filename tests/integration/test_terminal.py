"""A session's terminal: a shell on a real pty in its box, over a WebSocket; per user;
reattached after a reload with its scrollback; several per session."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.conftest import LiveServer, wait_for

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def printed_lines(out: str) -> list[str]:
    """A terminal's output as lines of text: escape sequences and carriage returns out."""
    return [line.strip() for line in ANSI.sub("", out).replace("\r", "\n").split("\n")]



class Term:
    """A terminal client as the dashboard is one: keys as binary frames, JSON text."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        hello = json.loads(ws.recv(timeout=15))
        assert hello["type"] == "terminal"
        self.id: str = hello["id"]
        self.seen = ""
        self.control: list[dict[str, Any]] = []

    def send(self, keys: str) -> None:
        self.ws.send(keys.encode())

    def until(self, marker: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while marker not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {marker!r} in {self.seen[-400:]!r}")
            msg = self.ws.recv(timeout=left)
            if isinstance(msg, bytes):
                self.seen += msg.decode(errors="replace")
            else:
                self.control.append(json.loads(msg))
        return self.seen


def running(server: LiveServer, key: str, sid: str, name: str) -> None:
    """Wait until a process of that name runs in the session's box."""
    def found() -> bool:
        r = httpx.post(f"{server.url}/v1/sessions/{sid}/exec", json={
            "command": f"pgrep -x {name}", "timeout": 10},
            headers={"Authorization": f"Bearer {key}"}, timeout=30)
        return '"exit_code":0' in r.text.replace(" ", "")
    wait_for(found, 15, 0.05, f"{name} to run")


def ws_url(server: LiveServer, sid: str, query: str = "") -> str:
    return server.url.replace("http://", "ws://") + f"/v1/sessions/{sid}/terminal{query}"


@pytest.fixture
def sid(server: LiveServer, api_key: str) -> Iterator[str]:
    r = httpx.post(server.url + "/v1/sessions", json={"name": "term"},
                   headers={"Authorization": f"Bearer {api_key}"})
    assert r.status_code == 201, r.text
    yield r.json()["id"]


def test_cd_persists_ctrl_c_interrupts_and_the_size_is_the_pages(
        server: LiveServer, api_key: str, sid: str) -> None:
    auth = {"Authorization": f"Bearer {api_key}"}
    with connect(ws_url(server, sid, "?rows=30&cols=100"), additional_headers=auth,
                 open_timeout=15) as ws:
        t = Term(ws)
        t.send("cd /tmp && tty && echo CD-$((40+2))\r")
        assert "/dev/pts/" in t.until("CD-42")
        t.send("pwd; stty size; echo PWD-$((1+1))\r")
        out = t.until("PWD-2")
        assert "/tmp\r\n30 100" in out
        ws.send(json.dumps({"type": "resize", "rows": 50, "cols": 132}))
        t.send("stty size; echo SIZE-$((2+3))\r")
        assert "50 132" in t.until("SIZE-5")
        t.send("sleep 30; echo SLEPT\r")
        running(server, api_key, sid, "sleep")  # Ctrl-C once sleep is in the foreground
        started = time.monotonic()
        t.send("\x03")
        t.send("echo BACK-$((3+4))\r")
        out = t.until("BACK-7", timeout=10)
        assert time.monotonic() - started < 5
        # The typed line is echoed (once or twice, as the shell takes it), but echo never
        # ran: no line of output is SLEPT alone.
        assert "SLEPT" not in printed_lines(out), out
        # A full-screen program draws with escape sequences on the alternate screen.
        t.send("printf '\\033[?1049h'; tput cup 5 10; echo DRAWN-$((4+4)); "
               "printf '\\033[?1049l'\r")
        assert "\x1b[?1049h" in t.until("DRAWN-8")
        t.send("exit\r")
        deadline = time.monotonic() + 15
        while not any(c.get("type") == "exit" for c in t.control):
            msg = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            if isinstance(msg, str):
                t.control.append(json.loads(msg))


def test_a_reload_attaches_to_the_same_shell_with_its_scrollback(
        server: LiveServer, api_key: str, sid: str) -> None:
    auth = {"Authorization": f"Bearer {api_key}"}
    with connect(ws_url(server, sid), additional_headers=auth, open_timeout=15) as ws:
        first = Term(ws)
        first.send("cd /etc && export MARK=kept && echo ONE-$((1+0))\r")
        first.until("ONE-1")
    # Closed (a reload): the shell keeps running; attaching again replays what it printed.
    with connect(ws_url(server, sid, f"?terminal={first.id}"), additional_headers=auth,
                 open_timeout=15) as ws:
        again = Term(ws)
        assert again.id == first.id
        again.until("ONE-1")  # the scrollback
        again.send("echo $MARK $PWD TWO-$((1+1))\r")
        assert "kept /etc TWO-2" in again.until("TWO-2")
        # A second terminal of the same session is another shell.
        with connect(ws_url(server, sid), additional_headers=auth, open_timeout=15) as ws2:
            other = Term(ws2)
            assert other.id != first.id
            other.send("echo ${MARK:-unset} THREE-$((1+2))\r")
            assert "unset THREE-3" in other.until("THREE-3")


def test_strangers_and_other_sites_are_refused(server: LiveServer, api_key: str,
                                               sid: str) -> None:
    stranger = server.add_user()
    for headers in ({}, {"Authorization": "Bearer nope"},
                    {"Authorization": f"Bearer {stranger}"}):
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(server, sid), additional_headers=headers, open_timeout=15)
        assert refused.value.response.status_code == 403
    # Another user cannot attach to this user's terminal by its id either.
    with connect(ws_url(server, sid), additional_headers={
            "Authorization": f"Bearer {api_key}"}, open_timeout=15) as ws:
        term_id = Term(ws).id
        with pytest.raises(InvalidStatus):
            connect(ws_url(server, sid, f"?terminal={term_id}"), open_timeout=15,
                    additional_headers={"Authorization": f"Bearer {stranger}"})
    # The dashboard's cookie works from this server's page, not from another site's.
    r = httpx.post(server.url + "/v1/auth/session", json={"api_key": api_key})
    cookie = r.cookies.get("sophon_session")
    assert cookie
    with pytest.raises(InvalidStatus):
        connect(ws_url(server, sid), open_timeout=15, additional_headers={
            "Cookie": f"sophon_session={cookie}", "Origin": "http://evil.example"})
    with pytest.raises(InvalidStatus):  # no Origin at all: not a browser page of ours
        connect(ws_url(server, sid), open_timeout=15,
                additional_headers={"Cookie": f"sophon_session={cookie}"})
    host = server.url.removeprefix("http://")
    with connect(ws_url(server, sid), open_timeout=15, additional_headers={
            "Cookie": f"sophon_session={cookie}", "Origin": f"http://{host}"}) as ws:
        t = Term(ws)
        t.send("echo OK-$((2*3))\r")
        t.until("OK-6")
