"""How the CLI shows events in a terminal: one line or a short folded block each.

Events are the API's JSON (dicts), as ``RawClient`` yields them."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape

FOLD_LINES = 6


def _fold(text: str, lines: int = FOLD_LINES) -> str:
    parts = text.rstrip("\n").splitlines()
    if len(parts) <= lines:
        return "\n".join(parts)
    return "\n".join(parts[:lines]) + f"\n… {len(parts) - lines} more lines"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _summary(tool: str, inp: dict[str, Any]) -> str:
    for key in ("command", "file_path", "pattern", "subject", "taskId"):
        if key in inp:
            return f"{tool}({str(inp[key])[:120]})"
    return f"{tool}({json.dumps(inp)[:120]})"


def _diffstat(diff: str | None) -> str:
    if not diff:
        return ""
    lines = diff.splitlines()
    added = sum(1 for line in lines if line.startswith("+") and not line.startswith("+++"))
    removed = sum(1 for line in lines if line.startswith("-") and not line.startswith("---"))
    return f" [green]+{added}[/green] [red]-{removed}[/red]"


def host_port(host: Any, port: Any) -> str:
    """``example.com:443``; an IPv6 address in brackets."""
    h = str(host or "?")
    if ":" in h and not h.startswith("["):
        h = f"[{h}]"
    return f"{h}:{port}" if port else h


def network_target(ev: dict[str, Any]) -> str | None:
    """Where a network approval request wants to connect, or None for a tool's."""
    inp = ev.get("input") or {}
    if ev.get("tool") != "Network" or not isinstance(inp, dict):
        return None
    return host_port(inp.get("host"), inp.get("port"))


def render(console: Console, ev: dict[str, Any]) -> None:
    t, get = ev["type"], ev.get
    if t == "user":
        console.print(f"[bold cyan]› you[/bold cyan] {escape(get('content', ''))}")
    elif t == "assistant":
        console.print(f"[bold]● claude[/bold] {escape(get('text', ''))}")
    elif t == "thinking":
        console.print(f"[dim italic]  ✻ {escape(_fold(get('text', ''), 3))}[/dim italic]")
    elif t == "tool_use":
        console.print(f"[yellow]  ⏺ {escape(_summary(get('tool', '?'), get('input') or {}))}"
                      "[/yellow]")
    elif t == "tool_output":  # a running command's output, as it prints
        console.out(get("data", ""), end="", style="dim", highlight=False)
    elif t == "tool_result":
        style = "red" if get("is_error") else "dim"
        console.print(f"[{style}]{escape(_indent(_fold(get('content', ''))))}[/{style}]")
    elif t == "file_change":
        console.print(f"[magenta]  ✎ {get('change')} {escape(get('path', ''))}[/magenta]"
                      f"{_diffstat(get('diff'))}")
    elif t == "file_changes_coalesced":
        paths = get("paths") or []
        more = ", …" if (get("files") or 0) > len(paths[:3]) else ""
        console.print(f"[magenta]  ✎ {get('changes')} changes to {get('files')} files in "
                      f"{get('seconds') or 0:.0f} s[/magenta] [dim]{escape(', '.join(paths[:3]))}"
                      f"{more}[/dim]")
    elif t == "approval_request" and (target := network_target(ev)) is not None:
        console.print(f"[bold yellow]? network approval needed[/bold yellow] connect to "
                      f"{escape(target)}? [dim]({get('approval_id')})[/dim]")
    elif t == "network_denied":
        message = f" — {escape(get('message'))}" if get("message") else ""
        console.print(f"[red]✗ network: refused {escape(host_port(get('host'), get('port')))}"
                      f" ({escape(get('rule') or '?')})[/red]{message}")
    elif t == "approval_request":
        console.print(f"[bold yellow]? approval needed[/bold yellow] "
                      f"{escape(_summary(get('tool', '?'), get('input') or {}))} — "
                      f"{escape(get('reason') or '')} [dim]({get('approval_id')})[/dim]")
    elif t == "approval_decision":
        color = "green" if get("decision") == "allow" else "red"
        reason = f" — {escape(get('reason'))}" if get("reason") else ""
        console.print(f"[{color}]  {get('decision')} by {escape(get('by') or '?')}[/{color}]"
                      + reason)
    elif t == "usage":
        console.print(f"[dim]  tokens {get('input_tokens')} in / {get('output_tokens')} out, "
                      f"${get('cost_usd') or 0:.4f}[/dim]")
    elif t == "status":
        detail = f" ({escape(get('detail'))})" if get("detail") else ""
        console.print(f"[dim]— {get('status')}{detail}[/dim]")
    elif t == "session_error":
        console.print(f"[bold red]✗ {escape(get('code', ''))}:[/bold red] "
                      f"{escape(get('message', ''))}")
    elif t == "session_start":
        console.print(f"[dim]— session {escape(get('name', ''))} started "
                      f"({get('base')}, {get('model')})[/dim]")
    elif t == "exec_start":
        console.print(f"[bold]$ {escape(get('command', ''))}[/bold]")
    elif t == "exec_output":
        console.out(get("data", ""), end="", highlight=False)
    elif t == "exec_end":
        error = f" ({get('error')})" if get("error") else ""
        console.print(f"[dim]  exit {get('exit_code')}{error}[/dim]")
    elif t == "task_update":
        mark = {"completed": "☑", "in_progress": "▶"}.get(get("status", ""), "☐")
        console.print(f"[blue]  {mark} #{get('task_id')} {escape(get('subject', ''))}[/blue]")
    elif t == "checkpoint":
        changed = get("files_changed") or 0
        what = f", {changed} file{'' if changed == 1 else 's'} changed" if changed else ""
        console.print(f"[dim]  ⚑ checkpoint {get('checkpoint_id')} "
                      f"({CHECKPOINT_WHY.get(get('reason', ''), get('reason'))}{what})[/dim]")
    elif t == "rewind":
        what = " and ".join(w for w in ("files", "conversation") if get(w))
        console.print(f"[bold yellow]↶ rewound {what} to {get('checkpoint_id')}[/bold yellow] "
                      f"[dim](undo: rewind to {get('undo')})[/dim]")
    elif t == "review":
        console.print(f"[yellow]✓ review of turn {get('turn')}: {len(get('rejected') or [])} "
                      f"hunk(s) reverted, {len(get('comments') or [])} comment(s)[/yellow]")
    else:
        console.print(f"[dim]{escape(t)}[/dim]")


CHECKPOINT_WHY = {"tool": "after a tool call", "turn_start": "turn start",
                  "turn_end": "turn end", "save": "after a save", "exec": "after a command",
                  "before_rewind": "before a rewind", "rewind": "after a rewind",
                  "review": "after a review"}
