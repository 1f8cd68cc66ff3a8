"""The ``sophon`` console script before it does anything: ``--help`` of every command, and
what the quick commands import (start-up time).

Every command runs as a subprocess, the way a user runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from sophon.cli import app as sophon_app
from tests.e2e.cli_support import CLI_DEADLINE, SOPHON, cli_env, sophon

# --- 1. --help everywhere --------------------------------------------------------------------


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], bool]]:
    """Every command path under the CLI, and whether it is a group (typer's own click)."""
    for name, cmd in group.commands.items():
        is_group = isinstance(getattr(cmd, "commands", None), dict)
        yield (*path, name), is_group
        if is_group:
            yield from _commands(cmd, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(sophon_app)))
NO_EXAMPLE = {("claude-code", "secrets", "list"), ("claude-code", "secrets", "rm")}


def _help_all(paths: list[tuple[str, ...]], env: dict[str, str]) -> dict[
        tuple[str, ...], subprocess.CompletedProcess[str]]:
    """``--help`` of many commands, run side by side."""
    procs = {p: subprocess.Popen([*SOPHON, *p, "--help"], env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for p in paths}
    done = {}
    for p, proc in procs.items():
        out, err = proc.communicate(timeout=CLI_DEADLINE)
        done[p] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


def test_help_everywhere(config_home: Path) -> None:
    env = cli_env(config_home)
    assert len(COMMANDS) > 20
    results = _help_all([(), *(p for p, _ in COMMANDS)], env)
    for path, r in results.items():
        assert r.returncode == 0, (path, r.stderr)
        assert "Usage: sophon" in r.stdout and "Traceback" not in r.stderr, path
    for path, is_group in COMMANDS:
        text = results[path].stdout
        if is_group:  # a group lists what is under it
            children = [p[-1] for p, _ in COMMANDS if p[:-1] == path]
            assert all(child in text for child in children), (path, text)
        elif path not in NO_EXAMPLE:
            assert "Example:" in text, (path, text)
    no_args = sophon(env)  # no arguments at all: the top-level help
    assert "claude-code" in no_args.stdout + no_args.stderr


def test_help_of_secrets_list_and_rm_has_an_example(config_home: Path) -> None:
    results = _help_all(sorted(NO_EXAMPLE), cli_env(config_home))
    for path, r in results.items():
        assert r.returncode == 0
        assert "Example:" in r.stdout, path


def test_every_command_is_covered_by_the_help_test() -> None:
    leaves = {p for p, is_group in COMMANDS if not is_group}
    assert leaves >= NO_EXAMPLE
    assert {("login",), ("serve",), ("claude-code", "send"), ("sandbox", "exec"),
            ("users", "add"), ("testing", "model-server")} <= leaves


# --- 2. what a command imports -------------------------------------------------------------


IMPORTS_SEEN = """
import atexit, json, sys
heavy = ("httpx", "pydantic", "rich", "sophon.sessions.models", "sophon.events.types")
atexit.register(lambda: print(json.dumps([m for m in heavy if m in sys.modules]),
                              file=sys.stderr))
sys.argv = ["sophon", *sys.argv[1:]]
from sophon.cli import main
main()
"""


@pytest.mark.parametrize("args", [("--help",), ("claude-code", "list"),
                                  ("claude-code", "list", "--json")], ids=" ".join)
def test_quick_commands_import_nothing_heavy(env: dict[str, str], args: tuple[str, ...]) -> None:
    """What keeps start-up under 300 ms (bench/bench_cli.py): no httpx, no pydantic, and for
    `list`, no rich either."""
    r = subprocess.run([sys.executable, "-c", IMPORTS_SEEN, *args], env=env, text=True,
                       capture_output=True, timeout=CLI_DEADLINE)
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stderr.strip().splitlines()[-1])
    allowed = {"rich"} if args == ("--help",) else set()
    assert set(loaded) <= allowed, loaded
