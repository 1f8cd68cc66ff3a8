"""``sophon mcp``: Sophon's MCP tools on stdio, for agents that run MCP servers as a
command. A bridge: each message from stdin goes to the server's /mcp with the saved
login's key (``sophon login``, or SOPHON_URL and SOPHON_API_KEY), and each answer comes
back on stdout; the tools themselves run in the server (mcp/server.py)."""

from __future__ import annotations

from typing import Any

import typer

from sophon.commands.claude_code import client, friendly


@friendly
def mcp() -> None:
    """Serve Sophon's MCP tools (claude_code_start, claude_code_send, ...) on stdin and
    stdout, through the server you are logged in to.

    Example: claude mcp add sophon -- sophon mcp
    """
    import anyio

    c = client()
    c.me()  # a wrong key or a server that is down: said now, on stderr, not mid-protocol
    anyio.run(_bridge, c.base_url.rstrip("/") + "/mcp", c._key)


async def _bridge(url: str, key: str) -> None:
    import anyio
    from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client
    from mcp.server.stdio import stdio_server

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    async with stdio_server() as (local_in, local_out), \
            streamable_http_client(url, http_client=http) as (remote_in, remote_out), \
            anyio.create_task_group() as tasks:

        async def pump(source: Any, sink: Any, done_ends_all: bool) -> None:
            async for message in source:
                if isinstance(message, Exception):  # a malformed line or a lost answer
                    typer.echo(f"sophon mcp: {message}", err=True)
                    continue
                await sink.send(message)
            if done_ends_all:  # stdin closed: the agent is gone
                tasks.cancel_scope.cancel()

        tasks.start_soon(pump, local_in, remote_out, True)
        tasks.start_soon(pump, remote_in, local_out, False)
