"""Claude Code's PreToolUse hook in a claude-code session's box: asks Sophon whether a
tool call may run, and tells the CLI. Standard library only; run by the CLI per call.

The question goes to the model gateway's host through the egress door (the proxy in the
environment), with the session's own gateway token; the answer follows the session's
approval policy (it may wait for a person). Anything but a clear allow is a deny. A
plain socket, not urllib: the CLI starts this for every tool call, and importing
urllib.request (ssl, email, ...) would cost it some 30 ms each time.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from urllib.parse import urlsplit


def answer(decision: str, reason: str) -> None:
    sys.stdout.write(json.dumps({"hookSpecificOutput": {
        "hookEventName": "PreToolUse", "permissionDecision": decision,
        "permissionDecisionReason": reason}}))


def ask(tool: object, tool_input: object) -> dict:
    proxy = urlsplit(os.environ["HTTP_PROXY"])
    base = os.environ["ANTHROPIC_BASE_URL"].rstrip("/")
    body = json.dumps({"tool_name": tool, "tool_input": tool_input}).encode()
    head = (f"POST {base}/v1/box/approvals HTTP/1.1\r\nHost: {urlsplit(base).netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"x-api-key: {os.environ['ANTHROPIC_AUTH_TOKEN']}\r\nConnection: close\r\n\r\n")
    with socket.create_connection((proxy.hostname, proxy.port or 80)) as s:
        s.sendall(head.encode() + body)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    status, _, rest = b"".join(chunks).partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    if b" 200 " not in status + b" ":
        raise RuntimeError(status.decode(errors="replace"))
    return json.loads(payload)


def main() -> None:
    try:
        asked = json.load(sys.stdin)
        got = ask(asked.get("tool_name"), asked.get("tool_input") or {})
        if got.get("decision") == "allow":
            answer("allow", got.get("reason") or "allowed by Sophon")
        else:
            answer("deny", got.get("reason") or "denied by Sophon")
    except Exception as exc:  # no answer is no permission
        answer("deny", f"Sophon could not be asked: {exc}")


if __name__ == "__main__":
    main()
