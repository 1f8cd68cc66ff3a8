"""Live work (issue 19): how soon a line the agent's command prints reaches the CLI, and
how soon a keystroke in a session terminal comes back.

* Output line -> CLI print: the native agent runs ``date +%s.%N`` ten times a second in
  its Bash tool; ``sophon claude-code stream --json`` prints the ``tool_output`` events;
  each line's latency is when this process reads it from the CLI less the time the box
  printed (one clock: the box shares the host's). Baseline, the same command through
  ``sophon claude-code exec`` (exec_output, sent as it comes). Goal < 100 ms p50 and p99.
* Output line -> dashboard paint: the same turn watched in Chromium on the session's
  page; each time the running tool card's last line changes, the next animation frame
  (when the browser paints it) less the time the box printed that line. Baseline, the
  CLI's print of the same lines. Goal < 100 ms p50 and p99.
* Keystroke echo: one character sent on the terminal's WebSocket until the shell's echo
  of it comes back. Baseline: the same on a pty with bash on the host, no Sophon.
  Goal < 20 ms p50.

    .venv/bin/python bench/run.py --only live
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

from common import Figure, Samples, live_server
from sophon.testing import ModelServer

COMMAND = ".venv/bin/python bench/run.py --only live"
SOPHON = [str(Path(sys.executable).with_name("sophon"))]
LINE_GOAL_MS = 100.0
ECHO_GOAL_MS = 20.0


def _printer(lines: int) -> str:
    return f"for i in $(seq {lines}); do date +%s.%N; sleep 0.1; done"


def _latencies(argv: list[str], env: dict[str, str], lines: int, json_events: bool,
               start: threading.Event | None = None) -> list[float]:
    """Run the CLI; for every timestamp line it prints, now - that time (ms)."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    out: list[float] = []
    assert proc.stdout is not None and proc.stderr is not None
    try:
        if start is not None:  # `stream` says on stderr when it is attached
            for line in proc.stderr:
                if "following live" in line:
                    break
            start.set()
        for raw in proc.stdout:
            now = time.time()
            texts = [raw]
            if json_events:
                ev = json.loads(raw)
                if ev["type"] == "tool_result":
                    break
                texts = [ev["data"]] if ev["type"] == "tool_output" else []
            for text in texts:
                for line in text.splitlines():
                    try:
                        out.append((now - float(line)) * 1000)
                    except ValueError:
                        continue
            if len(out) >= lines:
                break
    finally:
        proc.kill()
        proc.wait(10)
    return out


# In the page: each new last line of a running tool card, stamped at the next animation
# frame (wall-clock ms, the box's clock too).
WATCH_CARD = """() => {
  window.painted = [];
  let last = null;
  new MutationObserver(() => {
    const el = document.querySelector(".tool-live");
    const text = el ? el.textContent : null;
    if (!text || text === last) return;
    last = text;
    requestAnimationFrame(() =>
      window.painted.push([text, performance.timeOrigin + performance.now()]));
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""
CHROMIUM = Path("/usr/bin/chromium")


class _Browser:
    """The session's page in Chromium, watching its tool card (no-op without Chromium)."""

    def __init__(self, url: str, key: str, sid: str) -> None:
        self.url, self.key, self.sid = url, key, sid
        self._pw: Any = None
        self.page: Any = None

    def __enter__(self) -> _Browser:
        if not CHROMIUM.exists():
            return self
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        browser = self._pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        self.page = browser.new_page(viewport={"width": 1280, "height": 800})
        self.page.goto(self.url + "/")
        self.page.get_by_label("API key").fill(self.key)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.get_by_role("button", name="New session").wait_for()
        self.page.goto(f"{self.url}/sessions/{self.sid}")
        self.page.locator(".session-head").wait_for()
        self.page.evaluate(WATCH_CARD)
        return self

    def latencies(self) -> list[float]:
        if self.page is None:
            return []
        return [t - float(text) * 1000 for text, t in self.page.evaluate("window.painted")
                if text.replace(".", "", 1).isdigit()]

    def __exit__(self, *exc: object) -> None:
        if self._pw is not None:
            self._pw.stop()


def _output_lines(lines: int) -> tuple[Samples, Samples, Samples | None]:
    with ModelServer() as model, live_server(env={"ANTHROPIC_API_KEY": "bench-key",
                                                  "ANTHROPIC_BASE_URL": model.url}) as (srv, key):
        env = {**os.environ, "SOPHON_URL": srv.url, "SOPHON_API_KEY": key}
        http = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {key}"},
                            timeout=60)
        sid = http.post("/v1/sessions", json={"name": "live",
                                              "approval": {"shell": "allow"}}).json()["id"]
        baseline = _latencies([*SOPHON, "claude-code", "exec", sid, _printer(lines)], env,
                              lines, json_events=False)
        model.set_script({"turns": [{"content": [{"type": "tool_use", "name": "Bash",
                                                  "input": {"command": _printer(lines)}}]},
                                    "done"]})
        listening = threading.Event()
        got: list[float] = []
        reader = threading.Thread(target=lambda: got.extend(_latencies(
            [*SOPHON, "claude-code", "stream", sid, "--json"], env, lines, json_events=True,
            start=listening)))
        with _Browser(srv.url, key, sid) as browser:
            reader.start()
            if not listening.wait(60):
                raise RuntimeError("the CLI's stream did not attach")
            http.post(f"/v1/sessions/{sid}/messages",
                      json={"content": "print"}).raise_for_status()
            reader.join(120)
            painted = browser.latencies()
        http.close()
        return Samples(got), Samples(baseline), Samples(painted) if painted else None


def _echo(ws_send: object, ws_recv: object, n: int) -> Samples:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        ws_send(b"x")  # type: ignore[operator]
        while b"x" not in ws_recv():  # type: ignore[operator]
            pass
        out.append((time.perf_counter() - t0) * 1000)
    ws_send(b"\x15")  # type: ignore[operator]  (Ctrl-U: clear the line)
    return Samples(out)


def _host_pty_echo(n: int) -> Samples:
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-c", "import os, sys; os.login_tty(0); "
                             "os.execvp('bash', ['bash', '--norc', '-i'])"],
                            stdin=slave, stdout=slave, stderr=slave,
                            env={"PATH": "/usr/bin:/bin", "TERM": "xterm", "PS1": "$ "})
    os.close(slave)
    try:
        buf = b""
        while b"$ " not in buf:
            buf += os.read(master, 65536)
        return _echo(lambda b: os.write(master, b), lambda: os.read(master, 65536), n)
    finally:
        proc.kill()
        proc.wait(5)
        os.close(master)


def _terminal_echo(n: int) -> Samples:
    with live_server() as (srv, key):
        sid = httpx.post(srv.url + "/v1/sessions", json={"name": "echo"},
                         headers={"Authorization": f"Bearer {key}"}, timeout=60).json()["id"]
        url = srv.url.replace("http://", "ws://") + f"/v1/sessions/{sid}/terminal"
        with connect(url, additional_headers={"Authorization": f"Bearer {key}"},
                     open_timeout=30) as ws:
            json.loads(ws.recv(timeout=30))  # which terminal
            seen = b""
            while b"$ " not in seen:
                msg = ws.recv(timeout=30)
                seen += msg if isinstance(msg, bytes) else b""

            def recv() -> bytes:
                msg = ws.recv(timeout=10)
                return msg if isinstance(msg, bytes) else b""

            _echo(ws.send, recv, 5)  # warm up
            return _echo(ws.send, recv, n)


def run(lines: int = 50, keys: int = 200) -> list[Figure]:
    live, direct, painted = _output_lines(lines)
    host = _host_pty_echo(keys)
    echo = _terminal_echo(keys)
    paint = [] if painted is None else [
        Figure("live_paint_p50", "Bash output line -> dashboard paint, 10 lines/s (p50)",
               COMMAND, painted.p50, "ms", live.p50, "the CLI's print of the same lines (p50)",
               goal=f"< {LINE_GOAL_MS:g} ms", met=painted.p50 < LINE_GOAL_MS,
               details=[f"the tool card's last line in Chromium: {painted.describe()}"]),
        Figure("live_paint_p99", "Bash output line -> dashboard paint, 10 lines/s (p99)",
               COMMAND, painted.p99, "ms", live.p99, "the CLI's print of the same lines (p99)",
               goal=f"< {LINE_GOAL_MS:g} ms", met=painted.p99 < LINE_GOAL_MS)]
    return [*paint,
        Figure("live_line_p50", "Bash output line -> CLI print, 10 lines/s (p50)", COMMAND,
               live.p50, "ms", direct.p50, "the same command through exec (p50)",
               goal=f"< {LINE_GOAL_MS:g} ms", met=live.p50 < LINE_GOAL_MS,
               details=[f"tool_output through `stream --json`: {live.describe()}",
                        f"exec_output through `exec`: {direct.describe()}"]),
        Figure("live_line_p99", "Bash output line -> CLI print, 10 lines/s (p99)", COMMAND,
               live.p99, "ms", direct.p99, "the same command through exec (p99)",
               goal=f"< {LINE_GOAL_MS:g} ms", met=live.p99 < LINE_GOAL_MS),
        Figure("terminal_echo_p50", "Keystroke echo in a session terminal (p50)", COMMAND,
               echo.p50, "ms", host.p50, "bash on a pty on the host (p50)",
               goal=f"< {ECHO_GOAL_MS:g} ms", met=echo.p50 < ECHO_GOAL_MS,
               details=[f"terminal over its WebSocket: {echo.describe()}",
                        f"host pty: {host.describe()}"]),
    ]
