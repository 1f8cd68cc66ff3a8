"""An MCP server at a URL, spoken to on stdio: run in a session's box for an MCP server
the session reaches over HTTP (agent/mcp_servers.py), so that its requests go out as any
program's in the box do, through the egress door (the *_proxy variables): the session's
network list, its connectors and its network approvals apply. Standard library only.

One JSON-RPC message a line in; each is POSTed (MCP streamable HTTP); the answer, JSON or
an SSE stream of messages, comes back a message a line. A failed request is answered as
a JSON-RPC error, so the client hears why.

    python3 mcp_http.py URL        (headers as JSON in SOPHON_MCP_HEADERS)
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

TIMEOUT = 300


def _say(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _fail(msg: dict, why: str) -> None:
    if "id" in msg and "method" in msg:
        _say({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32000, "message": why}})


def _events(resp) -> None:  # type: ignore[no-untyped-def]
    data: list[str] = []
    for raw in resp:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif not line and data:
            sys.stdout.write("\n".join(data).replace("\n", " ") + "\n")
            sys.stdout.flush()
            data = []


def main() -> None:
    url = sys.argv[1]
    headers = json.loads(os.environ.get("SOPHON_MCP_HEADERS") or "{}")
    session = None
    opener = urllib.request.build_opener()  # proxies from the environment: the door
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        sent = {"Content-Type": "application/json",
                "Accept": "application/json, text/event-stream", **headers}
        if session:
            sent["Mcp-Session-Id"] = session
        request = urllib.request.Request(url, data=line.encode(), headers=sent, method="POST")
        try:
            with opener.open(request, timeout=TIMEOUT) as resp:
                session = resp.headers.get("Mcp-Session-Id") or session
                if "text/event-stream" in resp.headers.get("Content-Type", ""):
                    _events(resp)
                else:
                    body = resp.read().decode("utf-8", "replace").strip()
                    if body:
                        sys.stdout.write(body.replace("\n", " ") + "\n")
                        sys.stdout.flush()
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode("utf-8", "replace").strip()
            _fail(msg, f"HTTP {exc.code} from {url}" + (f": {detail}" if detail else ""))
        except (OSError, ValueError) as exc:
            _fail(msg, f"{url} could not be reached: {exc}")


if __name__ == "__main__":
    main()
