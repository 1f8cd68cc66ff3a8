"""The ``sophon`` console script end to end, one command at a time: sandbox exec, every
option of ``claude-code new``, approve and deny, interrupt, secrets, usage, export errors.

Every command runs as a subprocess, the way a user runs it, against a real server and a
scripted model (tests/e2e/conftest.py). Each test has its own user and config directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from sophon.client import Client
from sophon.testing import ModelServer
from tests.conftest import LiveServer, wait_for
from tests.e2e.cli_support import (
    BASH,
    CLI_DEADLINE,
    SOPHON,
    Pty,
    assert_one_line_error,
    sophon,
    start,
    stop,
)

# --- 1. sandbox exec -----------------------------------------------------------------------


def test_sandbox_exec(env: dict[str, str]) -> None:
    r = sophon(env, "sandbox", "exec", "--language", "python", "print(6*7)")
    assert (r.returncode, r.stdout) == (0, "42\n"), r.stderr

    r = sophon(env, "sandbox", "exec", "--thread", "t1", "echo kept > note.txt")
    assert r.returncode == 0, r.stderr
    r = sophon(env, "sandbox", "exec", "--thread", "t1", "cat note.txt")
    assert (r.returncode, r.stdout) == (0, "kept\n"), r.stderr

    r = sophon(env, "sandbox", "exec", "--language", "python", "-",
               input="import sys\nprint('from', 'stdin')\nprint('oops', file=sys.stderr)\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, "from stdin\n", "oops\n")

    r = sophon(env, "sandbox", "exec", "echo partial; exit 7")
    assert (r.returncode, r.stdout) == (7, "partial\n"), r.stderr
    r = sophon(env, "sandbox", "exec", "--language", "python", "raise SystemExit(4)")
    assert r.returncode == 4, r.stderr


def test_images_from_the_cli(env: dict[str, str], server: LiveServer, key: str) -> None:
    """`new --base` names an image of the user's, `--memory-mb` and the rest size the
    box, and `sandbox exec --image` runs on an image."""
    if os.geteuid() != 0 or not shutil.which("mmdebstrap"):
        pytest.skip("images need a root server and mmdebstrap")
    api = Client(server.url, key)
    # Nothing added to generic: the same image as generic's, so ready at once.
    made = api._http.call("POST", "/v1/images", json_body={"name": "cli-shell",
                                                           "from": "generic"})
    assert made["status"] == "ready", made
    r = sophon(env, "claude-code", "new", "--name", "sized", "--base", "cli-shell",
               "--memory-mb", "300", "--pids", "100")
    assert r.returncode == 0, r.stderr
    s = session(env, r.stdout.strip())
    assert (s["base"], s["image_name"]) == ("generic", "cli-shell"), s
    assert s["limits"] == {"memory_mb": 300, "cpus": 1.0, "pids": 100}, s
    assert_one_line_error(sophon(env, "claude-code", "new", "--name", "x", "--base",
                                 "no-such-image"), "unknown base", "no-such-image")
    assert_one_line_error(sophon(env, "claude-code", "new", "--name", "x",
                                 "--memory-mb", "999999"), "SOPHON_BOX_MEMORY_MAX_MB")
    r = sophon(env, "sandbox", "exec", "--image", "cli-shell", "grep -c bookworm "
                                                                 "/etc/os-release")
    assert r.returncode == 0 and int(r.stdout) >= 1, (r.stdout, r.stderr)
    assert_one_line_error(sophon(env, "sandbox", "exec", "--image", "nope", "true"),
                          "nope")
    api.close()


# --- 2. creating sessions: every option of `new` --------------------------------------------


def session(env: dict[str, str], sid: str) -> dict[str, Any]:
    """The session as `list --json` shows it."""
    r = sophon(env, "claude-code", "list", "--json")
    assert r.returncode == 0, r.stderr
    return next(s for s in json.loads(r.stdout) if s["id"] == sid)


def test_new_with_a_model_and_a_system_prompt_file(env: dict[str, str], model: ModelServer,
                                                   tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.md"
    prompt.write_text("Answer like a pirate.\nNever use the word 'treasure'.\n")
    r = sophon(env, "claude-code", "new", "--name", "pirate", "--model", "haiku",
               "--system-prompt", f"@{prompt}")
    assert r.returncode == 0, r.stderr
    sid = r.stdout.strip()
    shown = session(env, sid)
    assert (shown["model"], shown["system_prompt"]) == ("haiku", prompt.read_text())

    # The model gets it: the turn's request carries the file's text and the chosen model.
    model.set_script({"turns": [{"rules": [
        {"when": {"system_contains": "Answer like a pirate."}, "reply": "Arr."}],
        "default": "No pirate prompt."}]})
    r = sophon(env, "claude-code", "send", sid, "hello")
    assert r.returncode == 0, r.stderr
    assert "Arr." in r.stdout, r.stdout
    assert "haiku" in model.requests[0]["model"]

    r = sophon(env, "claude-code", "new", "--name", "plain", "--system-prompt", "Be brief.")
    assert session(env, r.stdout.strip())["system_prompt"] == "Be brief."
    r = sophon(env, "claude-code", "new", "--name", "x", "--system-prompt",
               f"@{tmp_path / 'missing.md'}")
    assert r.returncode == 2
    assert_one_line_error(r, "cannot read", "missing.md")


def test_new_clone_of_a_local_repository(env: dict[str, str]) -> None:
    repo = Path(tempfile.mkdtemp(prefix="sophon-cli-repo-", dir="/tmp"))
    try:
        git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
        (repo / "README.md").write_text("cloned from a local path\n")
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-qm", "first commit"], check=True)
        subprocess.run(["chmod", "-R", "a+rX", str(repo)], check=True)

        r = sophon(env, "claude-code", "new", "--name", "cloned", "--clone", str(repo))
        assert r.returncode == 0, r.stderr
        sid = r.stdout.strip()
        starter = session(env, sid)["starter"]
        assert (starter["type"], starter["url"]) == ("git", str(repo))
        r = sophon(env, "claude-code", "exec", sid, "cat README.md; git log --format=%s")
        assert (r.returncode, r.stdout) == (0, "cloned from a local path\nfirst commit\n"), \
            r.stderr

        # --ref: another branch of the same repository.
        subprocess.run([*git, "checkout", "-q", "-b", "feature"], check=True)
        (repo / "README.md").write_text("the feature branch\n")
        subprocess.run([*git, "commit", "-qam", "on feature"], check=True)
        subprocess.run([*git, "checkout", "-q", "main"], check=True)
        subprocess.run(["chmod", "-R", "a+rX", str(repo)], check=True)
        r = sophon(env, "claude-code", "new", "--name", "branch", "--clone", str(repo),
                   "--ref", "feature")
        assert r.returncode == 0, r.stderr
        r = sophon(env, "claude-code", "exec", r.stdout.strip(), "cat README.md")
        assert r.stdout == "the feature branch\n", r.stderr
        r = sophon(env, "claude-code", "new", "--name", "no", "--ref", "feature")
        assert r.returncode == 2 and "--ref is for --clone" in r.stderr
    finally:
        shutil.rmtree(repo, ignore_errors=True)


def test_new_runtime_reaches_the_server(env: dict[str, str]) -> None:
    r = sophon(env, "claude-code", "new", "--name", "native", "--runtime", "native")
    assert r.returncode == 0, r.stderr
    assert session(env, r.stdout.strip())["runtime"] == "native"
    # This server has no claude-code runtime yet and says so; a CLI that dropped the flag
    # would have made a native session instead.
    r = sophon(env, "claude-code", "new", "--name", "cc", "--runtime", "claude-code")
    if r.returncode == 0:
        assert session(env, r.stdout.strip())["runtime"] == "claude-code"
    else:
        assert_one_line_error(r, "claude-code")
        assert [s["name"] for s in json.loads(
            sophon(env, "claude-code", "list", "--json").stdout)] == ["native"]


# --- 3. approvals, interrupt, secrets, usage ---------------------------------------------------

DENIED_TURN = {"turns": [
    {"content": ["Let me write the file.",
                 {"type": "tool_use", "name": "Bash", "input": {"command": BASH}}]},
    {"rules": [{"when": {"last_tool_result_contains": "was denied"},
                "reply": "Understood, I did not run it."}],
     "default": "It ran."},
]}


def test_deny_with_a_reason(env: dict[str, str], model: ModelServer) -> None:
    model.set_script(DENIED_TURN)
    sid = sophon(env, "claude-code", "new", "--name", "deny").stdout.strip()
    proc, out, err = start(env, "claude-code", "send", sid, "write hi.txt")
    try:
        hint = err.wait_until(lambda lines: re.search(r"approve \S+ (apr_\w+)", "".join(lines)),
                              what="how to answer")
        r = sophon(env, "claude-code", "deny", sid, hint.group(1), "--reason", "not on a Friday")
        assert (r.returncode, r.stdout.strip()) == (0, "denied"), r.stderr
        assert proc.wait(CLI_DEADLINE) == 0
    finally:
        stop(proc)
    stdout = out.finish()
    assert "deny by" in stdout and "not on a Friday" in stdout, stdout
    assert "Understood, I did not run it." in stdout and "greetings" not in stdout
    told = json.dumps(model.requests[-1]["messages"][-1])
    assert "was denied: not on a Friday" in told, told
    r = sophon(env, "claude-code", "exec", sid, "test -e hi.txt")
    assert r.returncode == 1  # the command never ran


def test_send_answered_no_at_the_prompt(env: dict[str, str], model: ModelServer) -> None:
    model.set_script(DENIED_TURN)
    sid = sophon(env, "claude-code", "new", "--name", "says-no").stdout.strip()
    term = Pty([*SOPHON, "claude-code", "send", sid, "write hi.txt"], env)
    try:
        term.expect("allow Bash?")
        term.send("n\n")
        code = term.wait()
    finally:
        term.close()
    out = term.text
    assert code == 0, out
    assert "deny by" in out and "Understood, I did not run it." in out, out
    assert "greetings" not in out and "Traceback" not in out
    assert sophon(env, "claude-code", "exec", sid, "test -e hi.txt").returncode == 1


def test_interrupt_stops_the_running_turn(env: dict[str, str], server: LiveServer,
                                          key: str, model: ModelServer) -> None:
    model.set_script({"turns": [
        {"content": [{"type": "tool_use", "name": "Bash", "input": {"command": "sleep 300"}}]},
        {"reply": "Stopped."}]})
    with Client(server.url, key) as c:
        sid = c.create_session("long", approval={"shell": "allow"}).id
        c.send_message(sid, "wait a long time")
        wait_for(lambda: any(e.type == "exec_start" or e.type == "tool_use"
                             for e in c.events(sid, follow=False))
                 and c.get_session(sid).status == "running", CLI_DEADLINE, 0.05,
                 "the tool call to start")
        t0 = time.monotonic()
        r = sophon(env, "claude-code", "interrupt", sid)
        assert (r.returncode, r.stdout.strip()) == (0, "interrupted"), r.stderr
        wait_for(lambda: c.get_session(sid).status == "idle", CLI_DEADLINE, 0.05,
                 "the turn to stop")
        assert time.monotonic() - t0 < 60  # long before `sleep 300` would have ended
    r = sophon(env, "claude-code", "interrupt", sid)
    assert (r.returncode, r.stdout.strip()) == (0, "no turn was running"), r.stderr


def test_secrets_set_list_rm_never_show_a_value(env: dict[str, str]) -> None:
    sid = sophon(env, "claude-code", "new", "--name", "secrets").stdout.strip()
    shown = ""
    r = sophon(env, "claude-code", "secrets", "set", sid, "API_TOKEN", "arg-value-123")
    assert (r.returncode, r.stdout.strip()) == (0, "set API_TOKEN"), r.stderr
    shown += r.stdout + r.stderr
    r = sophon(env, "claude-code", "secrets", "set", sid, "PIPED", input="piped-value-456\n")
    assert (r.returncode, r.stdout.strip()) == (0, "set PIPED"), r.stderr
    shown += r.stdout + r.stderr
    term = Pty([*SOPHON, "claude-code", "secrets", "set", sid, "TYPED"], env)
    try:
        # "TYPED:", then getpass turns echo off (dropping what was typed before) and
        # writes the space: type after it, as a person would.
        term.expect("TYPED: ")
        term.send("typed-value-789\n")
        assert term.wait() == 0, term.text
    finally:
        term.close()
    shown += term.text
    assert "set TYPED" in term.text

    r = sophon(env, "claude-code", "secrets", "list", sid)
    assert (r.returncode, r.stdout.split()) == (0, ["API_TOKEN", "PIPED", "TYPED"]), r.stderr
    shown += r.stdout + r.stderr
    r = sophon(env, "claude-code", "exec", sid, 'test "$API_TOKEN $PIPED $TYPED" = '
               '"arg-value-123 piped-value-456 typed-value-789" && echo all-set')
    assert (r.returncode, r.stdout) == (0, "all-set\n"), r.stderr
    for value in ("arg-value-123", "piped-value-456", "typed-value-789"):
        assert value not in shown, shown  # never echoed, never printed back

    r = sophon(env, "claude-code", "secrets", "rm", sid, "PIPED")
    assert (r.returncode, r.stdout.strip()) == (0, "removed PIPED"), r.stderr
    assert sophon(env, "claude-code", "secrets", "list", sid).stdout.split() == [
        "API_TOKEN", "TYPED"]
    assert_one_line_error(sophon(env, "claude-code", "secrets", "set", sid, "bad-name", "v"),
                          "secret names")


def test_usage(env: dict[str, str], server: LiveServer, key: str, model: ModelServer) -> None:
    model.set_script({"turns": ["Hello!", "Hello again!"]})
    sid = sophon(env, "claude-code", "new", "--name", "usage").stdout.strip()
    r = sophon(env, "claude-code", "usage", sid)
    no_traffic = "network: 0 B out, 0 B in, 0 connections, 0 refused"
    assert r.stdout.strip() == f"0 tokens in, 0 out, $0.0000 over 0 calls\n{no_traffic}", \
        r.stderr
    for message in ("hi", "again"):
        assert sophon(env, "claude-code", "send", sid, message).returncode == 0
    with Client(server.url, key) as c:
        expected = c.usage(sid)
    t = expected["totals"]
    assert t["input_tokens"] > 0 and len(expected["calls"]) == 2
    r = sophon(env, "claude-code", "usage", sid)
    assert r.stdout.strip() == (f"{t['input_tokens']:,} tokens in, {t['output_tokens']:,} "
                                f"out, ${t['cost_usd']:.4f} over 2 calls\n{no_traffic}"), \
        r.stderr
    r = sophon(env, "claude-code", "usage", sid, "--json")
    assert json.loads(r.stdout) == expected


# --- 4. sandbox timeouts, export errors ----------------------------------------------------


def test_sandbox_exec_timeout(env: dict[str, str]) -> None:
    t0 = time.monotonic()
    r = sophon(env, "sandbox", "exec", "--timeout", "1", "echo started; sleep 30; echo late")
    elapsed = time.monotonic() - t0
    assert r.returncode != 0 and r.stdout == "started\n", (r.stdout, r.stderr)
    assert "(timeout)" in r.stderr and "Traceback" not in r.stderr
    assert elapsed < 20, elapsed  # killed after 1 s, not after the 30 s sleep
    r = sophon(env, "sandbox", "exec", "--timeout", "0", "true")
    assert r.returncode != 0 and "Traceback" not in r.stderr


def test_volumes_create_list_use_and_remove(env: dict[str, str]) -> None:
    r = sophon(env, "volumes", "create", "cli-data", "--size-mb", "32")
    assert r.returncode == 0 and "/data/cli-data/" in r.stdout, r.stderr
    listed = json.loads(sophon(env, "volumes", "list", "--json").stdout)
    assert [(v["name"], v["size_mb"]) for v in listed] == [("cli-data", 32)]
    r = sophon(env, "sandbox", "exec", "--thread", "v1", "echo shared > /data/cli-data/f")
    assert r.returncode == 0, r.stderr
    r = sophon(env, "sandbox", "exec", "--thread", "v2", "cat /data/cli-data/f")
    assert r.stdout == "shared\n", r.stderr
    assert sophon(env, "volumes", "rm", "cli-data", "--yes").returncode == 0
    assert json.loads(sophon(env, "volumes", "list", "--json").stdout) == []
    assert_one_line_error(sophon(env, "volumes", "rm", "cli-data", "--yes"), "cli-data")


def test_sandbox_webhook_secret_is_new_each_time(env: dict[str, str]) -> None:
    first = sophon(env, "sandbox", "webhook-secret")
    second = sophon(env, "sandbox", "webhook-secret")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    a, b = first.stdout.strip(), second.stdout.strip()
    assert a.startswith("whsec_") and b.startswith("whsec_") and a != b


@pytest.mark.parametrize("where", ["/proc/nope/", "FILE/sub/"])
def test_export_to_a_place_that_cannot_be_written(env: dict[str, str], tmp_path: Path,
                                                  where: str) -> None:
    sid = sophon(env, "claude-code", "new", "--name", "exp").stdout.strip()
    blocker = tmp_path / "FILE"
    blocker.write_text("a file, not a directory")
    out = where.replace("FILE", str(blocker))
    r = sophon(env, "claude-code", "export", sid, "--out", out)
    assert r.returncode == 1
    assert_one_line_error(r, "cannot write", out.rstrip("/"))
    assert blocker.read_text() == "a file, not a directory"


# --- connectors ------------------------------------------------------------------------


def test_connectors_add_list_rm_never_show_a_value(env: dict[str, str], server: LiveServer,
                                                   tmp_path: Path) -> None:
    piped = "ghp_" + "p1ped" * 6
    typed = "github_pat_" + "typ3d" * 6
    filed = "Bearer f1led-" + "v" * 20
    shown = ""
    r = sophon(env, "connectors", "add", "gh", "--type", "github", "--push", "me/app:main",
               "--push", "me/lib", input=piped + "\n")
    assert (r.returncode, r.stdout) == (0, "added gh (github: github.com, api.github.com)\n"), \
        r.stderr
    shown += r.stdout + r.stderr
    value_file = tmp_path / "value"
    value_file.write_text(filed + "\n")
    r = sophon(env, "connectors", "add", "api", "--type", "http", "--host", "API.example.com",
               "--header", "Authorization", "--execute", "--value-file", str(value_file))
    assert (r.returncode, r.stdout) == (
        0, "added api (http: api.example.com; executions of all your keys)\n"), r.stderr
    shown += r.stdout + r.stderr
    r = sophon(env, "connectors", "add", "claude", "--type", "anthropic", "--no-value")
    assert r.returncode == 0, r.stderr
    term = Pty([*SOPHON, "connectors", "add", "gh-typed", "--type", "github"], env)
    try:
        term.expect("value: ")  # then getpass turns echo off: type after it
        term.send(typed + "\n")
        assert term.wait() == 0, term.text
    finally:
        term.close()
    shown += term.text
    assert "added gh-typed" in term.text

    r = sophon(env, "connectors", "list")
    assert r.returncode == 0, r.stderr
    shown += r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "HOSTS", "HEADER", "EXECUTIONS", "PUSH"]
    assert "all your keys" in lines[1]
    assert [line.split()[0] for line in lines[1:]] == ["api", "claude", "gh", "gh-typed"]
    assert "me/app:main, me/lib" in lines[3] and "Authorization" in lines[1]
    r = sophon(env, "connectors", "list", "--json")
    shown += r.stdout
    listed = {c["name"]: c for c in json.loads(r.stdout)}
    assert (listed["api"]["host"], listed["api"]["execute"]) == ("api.example.com", True)
    assert listed["gh"]["push"] == ["me/app:main", "me/lib"]
    assert all("value" not in c for c in listed.values())
    for value in (piped, typed, filed):
        assert value not in shown, shown  # never echoed, never printed back
        assert value not in server.log.read_text(errors="replace")

    assert sophon(env, "connectors", "rm", "gh").stdout == "deleted gh\n"
    assert [c["name"] for c in json.loads(sophon(env, "connectors", "list", "--json").stdout)
            ] == ["api", "claude", "gh-typed"]
    assert_one_line_error(sophon(env, "connectors", "rm", "gh"), "no connector named 'gh'")


def test_a_connector_goes_with_the_executions_of_the_keys_it_names(
        env: dict[str, str], server: LiveServer) -> None:
    r = sophon(env, "connectors", "keys", "--json")
    assert r.returncode == 0, r.stderr
    [mine] = json.loads(r.stdout)
    assert mine["current"] is True
    table = sophon(env, "connectors", "keys").stdout.splitlines()
    assert table[0].split() == ["ID", "KEY", "CREATED", "THIS", "ONE"]
    assert table[1].startswith(mine["id"]) and table[1].rstrip().endswith("yes")

    r = sophon(env, "connectors", "add", "claude", "--type", "anthropic", "--no-value",
               "--key", mine["id"])
    assert r.stdout == f"added claude (anthropic: (the model gateway); executions of keys " \
                       f"{mine['id']})\n", r.stderr
    assert sophon(env, "connectors", "execute", "claude", "--all").stdout == \
        "claude: executions of all your keys\n"
    assert sophon(env, "connectors", "execute", "claude", "--off").stdout == \
        "claude: no executions\n"
    [listed] = json.loads(sophon(env, "connectors", "list", "--json").stdout)
    assert (listed["execute"], listed["keys"]) == (False, None)
    # Mistakes: a key that is not yours, two choices at once, no choice.
    assert_one_line_error(sophon(env, "connectors", "execute", "claude", "--key", "nope"),
                          "no API key with id 'nope'", "sophon connectors keys")
    r = sophon(env, "connectors", "execute", "claude", "--all", "--off")
    assert r.returncode == 2 and "give one of --all" in r.stderr, r.stderr
    assert_one_line_error(sophon(env, "connectors", "execute", "gone", "--all"),
                          "no connector named 'gone'")


def test_connectors_add_refuses_clearly(env: dict[str, str], tmp_path: Path) -> None:
    r = sophon(env, "connectors", "add", "gh", "--type", "github", input="not-a-token\n")
    line = assert_one_line_error(r, "does not look like a GitHub token")
    assert "not-a-token" not in line
    assert_one_line_error(sophon(env, "connectors", "add", "x", "--type", "gitlab",
                                 input="v\n"), "gitlab", "github, anthropic, http")
    assert_one_line_error(sophon(env, "connectors", "add", "h", "--type", "http", "--host",
                                 "*.example.com", "--header", "X-Key", input="v\n"),
                          "too wide")
    assert_one_line_error(sophon(env, "connectors", "add", "h", "--type", "http", "--host",
                                 "a.example", "--header", "X-Key", "--value-file",
                                 str(tmp_path / "missing")), "cannot read", "missing")
    # No way to give the value on the command line, where shell history and ps keep it.
    r = sophon(env, "connectors", "add", "h", "--type", "http", "--host", "a.example",
               "--header", "X-Key", "s3cret-value")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert json.loads(sophon(env, "connectors", "list", "--json").stdout) == []


def test_connectors_attach_and_detach(env: dict[str, str]) -> None:
    r = sophon(env, "connectors", "add", "claude", "--type", "anthropic", "--no-value")
    assert r.returncode == 0, r.stderr
    sid = sophon(env, "claude-code", "new", "--name", "with-connectors").stdout.strip()
    r = sophon(env, "connectors", "attach", "claude", sid)
    assert (r.returncode, r.stdout) == (0, f"attached claude to {sid}\n"), r.stderr
    assert session(env, sid)["connectors"] == ["claude"]
    r = sophon(env, "connectors", "attach", "claude", sid)
    assert (r.returncode, r.stdout) == (0, f"claude is attached to {sid} already\n")
    assert_one_line_error(sophon(env, "connectors", "attach", "nope", sid),
                          "no connector named 'nope'")
    r = sophon(env, "connectors", "detach", "claude", sid)
    assert (r.returncode, r.stdout) == (0, f"detached claude from {sid}\n"), r.stderr
    assert session(env, sid)["connectors"] == []
    assert_one_line_error(sophon(env, "connectors", "detach", "claude", sid),
                          "claude is not attached")
    assert_one_line_error(sophon(env, "connectors", "attach", "claude", "ses_nope"),
                          "ses_nope")
