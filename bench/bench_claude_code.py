"""Sophon's native runtime against the Claude Code CLI, on the same script.

Both agents run the same scripted task against the same scripted model server, in a
process of its own: rounds of Read, Edit, Write and Bash on a small file, then "done".
Measured for each tool call: the wall time from the end of the reply that asked for it
(after ``message_stop``) to the arrival of the agent's next request, which carries its
result. The first round is a warm-up and is not counted. The scripts differ only in the
workspace's absolute path (/workspace in Sophon's box, a temporary directory for Claude
Code); the native session allows the shell up front, as Claude Code's flag below does.

Claude Code (``@anthropic-ai/claude-code`` from npm) is installed into ``.cache/claude-code``
on first use and runs as ``claude -p --output-format stream-json --verbose
--dangerously-skip-permissions`` in a temporary directory, with a temporary HOME and
non-essential traffic off. Claude Code refuses that flag as root unless ``IS_SANDBOX=1``.
Requests that are not the agent's own turn (no tools, or count_tokens) are answered by a
second, empty script so they use up no turn and are not timed. The benchmark is skipped
when npm is missing or the install fails.

    .venv/bin/python bench/bench_claude_code.py [ROUNDS]   # prints a side-by-side table
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench_agent import RemoteModel
from common import ROOT, Figure, Samples, live_server, wait_for
from conftest import free_port

PACKAGE = "@anthropic-ai/claude-code"
INSTALL_DIR = ROOT / ".cache" / "claude-code"
TOOLS = ("Read", "Edit", "Write", "Bash")
COMMAND = "bench/run.py --only claude_code"
FILE_TEXT = "alpha\n" + "a line that stays the same\n" * 19


# --- the model server: one timed script for the agent's turns, one for everything else --


class Router:
    """ASGI app: /v1/messages requests with tools go to the timed script; the rest (title
    generation, quota probes, count_tokens...) to a second one that always says it ended.
    ``GET /_bench/timings`` answers like timed_model_server.py, plus the others' count."""

    def __init__(self) -> None:
        from sophon.testing import ModelServer

        self.main, self.aux = ModelServer().app, ModelServer().app
        self.arrived: list[float] = []
        self.finished: list[float] = []
        self.others = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/_bench/timings":
            if scope["method"] == "DELETE":
                self.arrived.clear()
                self.finished.clear()
                self.others = 0
            body = json.dumps({"arrived": self.arrived, "finished": self.finished,
                               "others": self.others}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        if not scope["path"].startswith("/v1/messages"):
            await self.main(scope, receive, send)
            return
        arrived = time.perf_counter()
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            request = json.loads(raw)
        except ValueError:
            request = None
        if scope["path"] != "/v1/messages" or not isinstance(request, dict) \
                or not request.get("tools"):
            self.others += 1
            await self.aux(scope, _replay(raw, receive), send)
            return
        self.arrived.append(arrived)

        async def timed_send(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.finished.append(time.perf_counter())

        await self.main(scope, _replay(raw, receive), timed_send)


def _replay(raw: bytes, receive: Any) -> Any:
    """A ``receive`` that hands over the (already read) body, then the connection's own."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    return replay


class RoutedModel(RemoteModel):
    """bench_agent's RemoteModel, serving the Router above instead."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(self.port)])
        wait_for(self._up, 30, 0.05, "the model server to start")
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def check_results(self) -> None:
        """Every tool result the agent sent back succeeded (else we timed errors)."""
        for body in self.http.get("/_sophon/requests").json()["requests"][1:]:
            # Claude Code may follow the results with a role "system" reminder.
            last = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
            bad = [b for b in last if isinstance(b, dict) and b.get("type") == "tool_result"
                   and b.get("is_error")]
            if bad or not any(isinstance(b, dict) and b.get("type") == "tool_result"
                              for b in last):
                raise RuntimeError(f"a tool call failed or had no result: {str(last)[:500]}")


# --- the task ------------------------------------------------------------------------


def script(workspace: str, rounds: int) -> dict[str, Any]:
    """``rounds`` x (Read, Edit, Write, Bash) on f.txt in ``workspace``, then "done"."""
    turns: list[Any] = []
    for i in range(rounds):
        old, new = ("alpha", "beta") if i % 2 == 0 else ("beta", "alpha")
        for name, args in (
                ("Read", {"file_path": f"{workspace}/f.txt"}),
                ("Edit", {"file_path": f"{workspace}/f.txt", "old_string": old,
                          "new_string": new}),
                ("Write", {"file_path": f"{workspace}/w{i}.txt", "content": f"round {i}\n"}),
                ("Bash", {"command": "wc -l f.txt", "description": "Count lines"})):
            turns.append({"content": [{"type": "tool_use", "name": name, "input": args}]})
    return {"turns": [*turns, "done"]}


def _gaps(ms: RoutedModel, rounds: int) -> dict[str, list[float]]:
    """Per tool, the round trips after the warm-up round, in ms."""
    arrived, finished = ms.timings()
    expected = len(TOOLS) * rounds + 1
    if len(arrived) != expected or len(finished) != expected:
        raise RuntimeError(f"expected {expected} agent requests, got {len(arrived)}")
    ms.check_results()
    out: dict[str, list[float]] = {t: [] for t in TOOLS}
    for i in range(len(TOOLS) + 1, expected):
        out[TOOLS[(i - 1) % len(TOOLS)]].append((arrived[i] - finished[i - 1]) * 1000)
    return out


def run_native(ms: RoutedModel, http: httpx.Client, rounds: int) -> dict[str, list[float]]:
    ms.set_script(script("/workspace", rounds))
    # The shell allowed up front, as --dangerously-skip-permissions does for Claude Code.
    sid = http.post("/v1/sessions", json={"name": "vs-claude-code",
                                          "approval": {"shell": "allow"}}).json()["id"]
    http.put(f"/v1/sessions/{sid}/files/f.txt", content=FILE_TEXT.encode()).raise_for_status()
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "go"}).raise_for_status()

    def idle() -> bool:
        evs = http.get(f"/v1/sessions/{sid}/events", params={"limit": 5000},
                       headers={"Accept": "application/json"}).json()["events"]
        statuses = [e["status"] for e in evs if e["type"] == "status" and e["seq"] > 3]
        if {"waiting_approval", "error"} & set(statuses):
            raise RuntimeError(f"the native agent stopped: {statuses}: {evs[-3:]}")
        return "idle" in statuses

    wait_for(idle, 300, 0.05, "the native agent to finish")
    return _gaps(ms, rounds)


def run_runtime(ms: RoutedModel, http: httpx.Client, rounds: int,
                rss_kib: list[int]) -> dict[str, list[float]]:
    """The same task in a ``runtime: claude-code`` session: the CLI in the session's box,
    its model calls through the egress door and the gateway, each tool call it asks about
    answered by the session's policy over its stdin and stdout. ``rss_kib`` gets the
    CLI's resident memory, sampled in the box while the turn runs."""
    ms.set_script(script("/workspace", rounds))
    sid = http.post("/v1/sessions", json={"name": "cc-runtime", "runtime": "claude-code",
                                          "approval": {"shell": "allow"}}).json()["id"]
    http.put(f"/v1/sessions/{sid}/files/f.txt", content=FILE_TEXT.encode()).raise_for_status()
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "go"}).raise_for_status()
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            with contextlib.suppress(httpx.HTTPError):
                r = http.post(f"/v1/sessions/{sid}/exec", json={
                    "command": "ps -C claude -o rss= | sort -n | tail -1"})
                out = "".join(json.loads(x).get("data", "") for x in r.text.splitlines()
                              if json.loads(x)["type"] == "exec_output").strip()
                if out.isdigit():
                    rss_kib.append(int(out))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def idle() -> bool:
        evs = http.get(f"/v1/sessions/{sid}/events", params={"limit": 5000},
                       headers={"Accept": "application/json"}).json()["events"]
        statuses = [e["status"] for e in evs if e["type"] == "status" and e["seq"] > 3]
        if {"waiting_approval", "error"} & set(statuses):
            raise RuntimeError(f"the claude-code session stopped: {statuses}: {evs[-3:]}")
        return "idle" in statuses

    try:
        wait_for(idle, 600, 0.05, "the claude-code session to finish")
    finally:
        done.set()
        sampler.join()
    return _gaps(ms, rounds)


BOX_CLAUDE = Path("/usr/local/lib/sophon-claude/bin/claude")  # scripts/box-tools


def cli_start(http: httpx.Client, claude: Path, n: int = 10) -> tuple[Samples, Samples]:
    """``claude --version`` in a session's box and, the same binary, on the host."""
    sid = http.post("/v1/sessions", json={"name": "cli-start"}).json()["id"]
    loop = (f"for i in $(seq {n}); do s=$(date +%s%N); claude --version >/dev/null; "
            "e=$(date +%s%N); echo $(( (e - s) / 1000 )); done")
    r = http.post(f"/v1/sessions/{sid}/exec", json={"command": loop})
    out = "".join(json.loads(x).get("data", "") for x in r.text.splitlines()
                  if json.loads(x)["type"] == "exec_output")
    in_box = Samples([int(x) / 1000 for x in out.split()])
    on_host = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([str(claude), "--version"], capture_output=True, check=True,
                       env={**os.environ, "DISABLE_AUTOUPDATER": "1"})
        on_host.append((time.perf_counter() - t0) * 1000)
    return in_box, Samples(on_host)


def run_claude(ms: RoutedModel, claude: Path, rounds: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="sophon-bench-cc-") as tmp:
        work, home = Path(tmp, "work"), Path(tmp, "home")
        work.mkdir()
        home.mkdir()
        (work / "f.txt").write_text(FILE_TEXT)
        ms.set_script(script(str(work), rounds))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
               "LANG": "C.UTF-8", "ANTHROPIC_BASE_URL": ms.url, "ANTHROPIC_API_KEY": "bench",
               "IS_SANDBOX": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
               "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1",
               "DISABLE_ERROR_REPORTING": "1"}
        proc = subprocess.run(
            [str(claude), "-p", "--output-format", "stream-json", "--verbose",
             "--dangerously-skip-permissions", "go"],
            cwd=work, env=env, capture_output=True, text=True, timeout=600)
        lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
        result = next((x for x in lines if x.get("type") == "result"), None)
        if proc.returncode != 0 or result is None or result.get("is_error"):
            raise RuntimeError(f"claude exited {proc.returncode}: "
                               f"{(proc.stdout + proc.stderr)[-1000:]}")
        if (work / "f.txt").read_text() != FILE_TEXT.replace("alpha", "beta", rounds % 2):
            raise RuntimeError("Claude Code's edits did not reach the file")
        return _gaps(ms, rounds)


# --- installing Claude Code ------------------------------------------------------------


def claude_code() -> tuple[Path, str] | None:
    """The claude executable and its version, installed with npm if need be; None (after
    saying why) when it cannot be had."""
    exe = INSTALL_DIR / "node_modules" / ".bin" / "claude"
    if not exe.exists():
        npm = shutil.which("npm")
        if npm is None:
            print("  claude_code: skipped, npm is not installed (needed to install "
                  f"{PACKAGE})", file=sys.stderr)
            return None
        print(f"  claude_code: installing {PACKAGE} into {INSTALL_DIR} ...", file=sys.stderr)
        try:
            got = subprocess.run([npm, "install", "--prefix", str(INSTALL_DIR), "--no-audit",
                                  "--no-fund", "--loglevel=error", PACKAGE],
                                 capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            got = None
        if got is None or got.returncode != 0 or not exe.exists():
            why = "timed out" if got is None else (got.stderr or got.stdout).strip()[-500:]
            print(f"  claude_code: skipped, npm install failed: {why}", file=sys.stderr)
            return None
    try:
        version = subprocess.run([str(exe), "--version"], capture_output=True, text=True,
                                 timeout=60, env={**os.environ, "DISABLE_AUTOUPDATER": "1"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"  claude_code: skipped, {exe} does not run: {exc}", file=sys.stderr)
        return None
    if version.returncode != 0:
        print(f"  claude_code: skipped, {exe} --version failed: {version.stderr[-500:]}",
              file=sys.stderr)
        return None
    return exe, version.stdout.strip().split()[0]


# --- the benchmark --------------------------------------------------------------------


@dataclass
class Measured:
    native: dict[str, list[float]]
    cc: dict[str, list[float]]  # the CLI on the host
    runtime: dict[str, list[float]]  # runtime: claude-code sessions (the CLI in the box)
    version: str
    rss_kib: list[int]
    start_box: Samples | None = None
    start_host: Samples | None = None


def measure(rounds: int, repeats: int) -> Measured | None:
    """Round trips per tool of the native runtime, the CLI on the host and the
    claude-code runtime, each pooled over ``repeats`` runs of the task, taking turns; the
    CLI's start in a box and on the host; its memory in a session's box."""
    found = claude_code()
    if found is None:
        return None
    claude, version = found
    got = Measured({t: [] for t in TOOLS}, {t: [] for t in TOOLS}, {t: [] for t in TOOLS},
                   version, [])
    native, cc = got.native, got.cc
    ms = RoutedModel()
    try:
        env = {"ANTHROPIC_API_KEY": "bench", "ANTHROPIC_BASE_URL": ms.url,
               "SOPHON_BOX_POOL_SIZE": "0"}
        with live_server(env=env) as (srv, key), \
                httpx.Client(base_url=srv.url, timeout=120,
                             headers={"Authorization": f"Bearer {key}"}) as http:
            in_box = http.get("/healthz").json()["box_claude_code"]
            for _ in range(repeats):
                for tool, gaps in run_native(ms, http, rounds).items():
                    native[tool] += gaps
                for tool, gaps in run_claude(ms, claude, rounds).items():
                    cc[tool] += gaps
                if not in_box.startswith("missing"):
                    for tool, gaps in run_runtime(ms, http, rounds, got.rss_kib).items():
                        got.runtime[tool] += gaps
            if not in_box.startswith("missing"):
                got.start_box, got.start_host = cli_start(http, BOX_CLAUDE)
    finally:
        ms.close()
    return got


def _all(per_tool: dict[str, list[float]]) -> Samples:
    return Samples([g for gaps in per_tool.values() for g in gaps])


def run(rounds: int = 16, repeats: int = 3) -> list[Figure]:
    got = measure(rounds, repeats)
    if got is None:
        return []
    native, cc, version = got.native, got.cc, got.version
    n, c = _all(native), _all(cc)
    label = f"Claude Code {version}, same script"
    details = [f"task: {rounds} rounds of {', '.join(TOOLS)} on a 20-line file, first round "
               f"not counted, {repeats} runs each, taking turns",
               f"native, all tools: {n.describe()}", f"Claude Code, all tools: {c.describe()}"]
    for t in TOOLS:
        a, b = Samples(native[t]), Samples(cc[t])
        details.append(f"{t}: native p50 {a.p50:.2f} / p99 {a.p99:.2f} ms, Claude Code p50 "
                       f"{b.p50:.2f} / p99 {b.p99:.2f} ms (n={len(a.ms)}/{len(b.ms)})")
    figures = [
        Figure(key="vs_claude_code_p50", title="Tool round trip, native vs Claude Code CLI "
               "(p50)", command=COMMAND, value=n.p50, unit="ms", baseline=c.p50,
               baseline_label=f"{label} (p50)", details=details),
        Figure(key="vs_claude_code_p99", title="Tool round trip, native vs Claude Code CLI "
               "(p99)", command=COMMAND, value=n.p99, unit="ms", baseline=c.p99,
               baseline_label=f"{label} (p99)"),
    ]
    if any(got.runtime.values()):
        r = _all(got.runtime)
        rt_details = [f"claude-code runtime, all tools: {r.describe()}",
                      *[f"{t}: claude-code runtime p50 {Samples(got.runtime[t]).p50:.2f} ms, "
                        f"native p50 {Samples(native[t]).p50:.2f} ms" for t in TOOLS],
                      "the CLI in the session's box (one process for the session), its model "
                      "calls through the egress door and the gateway, each tool call it asks "
                      "about answered by the session's policy over its stdio control "
                      "protocol"]
        figures.append(Figure(
            key="claude_code_runtime_p50", title="Tool round trip, runtime: claude-code vs "
            "native (p50)", command=COMMAND, value=r.p50, unit="ms", baseline=n.p50,
            baseline_label="the native runtime, same script (p50)", details=rt_details))
    if got.rss_kib:
        figures.append(Figure(
            key="claude_code_runtime_rss", title="Memory of a running claude-code session "
            "(the CLI's resident set, peak)", command=COMMAND, value=max(got.rss_kib) / 1024,
            unit="MiB", baseline=float("nan"), baseline_label="—",
            details=[f"{len(got.rss_kib)} samples every 0.5 s during the turns, median "
                     f"{sorted(got.rss_kib)[len(got.rss_kib) // 2] / 1024:.0f} MiB"]))
    if got.start_box is not None and got.start_host is not None:
        figures.append(Figure(
            key="claude_code_start", title="claude --version in a box (p50)",
            command=COMMAND, value=got.start_box.p50, unit="ms",
            baseline=got.start_host.p50, baseline_label="on the host (p50)",
            details=[f"in a session's box: {got.start_box.describe()}",
                     f"on the host: {got.start_host.describe()}"]))
    return figures


def table(native: dict[str, list[float]], cc: dict[str, list[float]], version: str) -> str:
    out = [f"| Tool round trip | Sophon native p50 / p99 | Claude Code {version} p50 / p99 "
           "| Ratio (p50) |", "|---|---|---|---|"]
    rows = [(t, Samples(native[t]), Samples(cc[t])) for t in TOOLS]
    for name, a, b in [*rows, ("All tools", _all(native), _all(cc))]:
        out.append(f"| {name} (n={len(a.ms)}/{len(b.ms)}) | {a.p50:.1f} / {a.p99:.1f} ms "
                   f"| {b.p50:.1f} / {b.p99:.1f} ms | {a.p50 / b.p50:.2f}× |")
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        import uvicorn

        uvicorn.run(Router(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
                    access_log=False, lifespan="off")
    else:
        rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 16
        result = measure(rounds, 3)
        if result is not None:
            print(table(result.native, result.cc, result.version))
