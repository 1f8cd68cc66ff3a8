"""Claude Code's PreToolUse hook in a claude-code session's box: asks Sophon whether a
tool call may run, and tells the CLI. Standard library only; run by the CLI per call.

The question goes to the model gateway's host through the egress door (the proxy in the
environment), with the session's own gateway token; the answer follows the session's
approval policy (it may wait for a person). Anything but a clear allow is a deny.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request


def answer(decision: str, reason: str) -> None:
    sys.stdout.write(json.dumps({"hookSpecificOutput": {
        "hookEventName": "PreToolUse", "permissionDecision": decision,
        "permissionDecisionReason": reason}}))


def main() -> None:
    try:
        asked = json.load(sys.stdin)
        body = json.dumps({"tool_name": asked.get("tool_name"),
                           "tool_input": asked.get("tool_input") or {}}).encode()
        base = os.environ["ANTHROPIC_BASE_URL"].rstrip("/")
        request = urllib.request.Request(
            base + "/v1/box/approvals", data=body, method="POST",
            headers={"content-type": "application/json",
                     "x-api-key": os.environ["ANTHROPIC_AUTH_TOKEN"]})
        with urllib.request.urlopen(request, timeout=86400) as response:
            got = json.load(response)
        if got.get("decision") == "allow":
            answer("allow", got.get("reason") or "allowed by Sophon")
        else:
            answer("deny", got.get("reason") or "denied by Sophon")
    except Exception as exc:  # no answer is no permission
        answer("deny", f"Sophon could not be asked: {exc}")


if __name__ == "__main__":
    main()
