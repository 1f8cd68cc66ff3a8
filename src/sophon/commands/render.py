"""How the CLI shows events in a terminal: one line or a short folded block each."""

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


def render(console: Console, ev: Any) -> None:
    t = ev.type
    if t == "user":
        console.print(f"[bold cyan]› you[/bold cyan] {escape(ev.content)}")
    elif t == "assistant":
        console.print(f"[bold]● claude[/bold] {escape(ev.text)}")
    elif t == "thinking":
        console.print(f"[dim italic]  ✻ {escape(_fold(ev.text, 3))}[/dim italic]")
    elif t == "tool_use":
        console.print(f"[yellow]  ⏺ {escape(_summary(ev.tool, ev.input))}[/yellow]")
    elif t == "tool_result":
        style = "red" if ev.is_error else "dim"
        console.print(f"[{style}]{escape(_indent(_fold(ev.content)))}[/{style}]")
    elif t == "file_change":
        console.print(f"[magenta]  ✎ {ev.change} {escape(ev.path)}[/magenta]"
                      f"{_diffstat(ev.diff)}")
    elif t == "approval_request":
        console.print(f"[bold yellow]? approval needed[/bold yellow] "
                      f"{escape(_summary(ev.tool, ev.input))} — {escape(ev.reason)} "
                      f"[dim]({ev.approval_id})[/dim]")
    elif t == "approval_decision":
        color = "green" if ev.decision == "allow" else "red"
        console.print(f"[{color}]  {ev.decision} by {escape(ev.by)}[/{color}]"
                      + (f" — {escape(ev.reason)}" if ev.reason else ""))
    elif t == "usage":
        console.print(f"[dim]  tokens {ev.input_tokens} in / {ev.output_tokens} out, "
                      f"${ev.cost_usd:.4f}[/dim]")
    elif t == "status":
        detail = f" ({escape(ev.detail)})" if ev.detail else ""
        console.print(f"[dim]— {ev.status}{detail}[/dim]")
    elif t == "session_error":
        console.print(f"[bold red]✗ {escape(ev.code)}:[/bold red] {escape(ev.message)}")
    elif t == "session_start":
        console.print(f"[dim]— session {escape(ev.name)} started ({ev.base}, {ev.model})[/dim]")
    elif t == "exec_start":
        console.print(f"[bold]$ {escape(ev.command)}[/bold]")
    elif t == "exec_output":
        console.out(ev.data, end="", highlight=False)
    elif t == "exec_end":
        console.print(f"[dim]  exit {ev.exit_code}"
                      + (f" ({ev.error})" if ev.error else "") + "[/dim]")
    elif t == "task_update":
        mark = {"completed": "☑", "in_progress": "▶"}.get(ev.status, "☐")
        console.print(f"[blue]  {mark} #{ev.task_id} {escape(ev.subject)}[/blue]")
    else:
        console.print(f"[dim]{escape(t)}[/dim]")
