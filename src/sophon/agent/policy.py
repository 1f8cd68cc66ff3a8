"""Whether a tool call may run: the session's approval policy, the owner, or a webhook.

Per tool the policy says allow, ask or deny; Bash follows ``shell`` (``ask_once`` by
default: the first use asks, and an allow holds for the rest of the session). Other
tools are allowed unless the policy names them. With a webhook, the webhook answers
what would be asked; if it cannot be reached, or is slow, the answer is deny.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import httpx

from sophon.events.types import ApprovalDecision, ApprovalRequest
from sophon.sessions.models import ApprovalPolicy
from sophon.sessions.service import SessionService

SHELL_TOOL = "Bash"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str | None = None


def mode_for(policy: ApprovalPolicy, tool: str) -> str:
    if tool in policy.tools:
        return policy.tools[tool]
    if tool == SHELL_TOOL:
        return {"ask_once": "ask", "allow": "allow", "deny": "deny"}[policy.shell]
    return "allow"


async def authorize(sessions: SessionService, session_id: str, policy: ApprovalPolicy,
                    tool: str, input: dict[str, Any], webhook_timeout: float,
                    owner: Any) -> Verdict:
    mode = mode_for(policy, tool)
    if mode == "allow":
        return Verdict(True)
    if mode == "deny":
        return Verdict(False, f"the session's policy denies {tool}")
    reason = (f"first use of the shell in this session: {input.get('command', '')!r}"
              if tool == SHELL_TOOL else f"the session's policy asks before {tool}")
    if policy.webhook:
        verdict = await _ask_webhook(policy.webhook, session_id, tool, input, webhook_timeout)
        approval_id = "apr_" + secrets.token_hex(10)
        await sessions.events.append(session_id, ApprovalRequest(
            approval_id=approval_id, tool=tool, input=input, reason=reason))
        await sessions.events.append(session_id, ApprovalDecision(
            approval_id=approval_id, decision="allow" if verdict.allowed else "deny",
            by="webhook", reason=verdict.reason))
    else:
        decision = await sessions.approvals.ask(session_id, tool, input, reason)
        await sessions.set_status(session_id, "running")
        verdict = Verdict(decision.decision == "allow", decision.reason)
        if decision.remember:
            await _remember(sessions, owner, session_id, tool, decision.decision)
    if (verdict.allowed and tool == SHELL_TOOL and tool not in policy.tools
            and policy.shell == "ask_once"):
        # ask_once is the shell's setting; "tools": {"Bash": "ask"} asks every time.
        await _remember(sessions, owner, session_id, tool, "allow")
    return verdict


async def _remember(sessions: SessionService, owner: Any, session_id: str, tool: str,
                    decision: str) -> None:
    row = await sessions.get_row(owner, session_id)
    policy = ApprovalPolicy.model_validate(row.approval)
    if tool == SHELL_TOOL and tool not in policy.tools:
        policy.shell = decision  # type: ignore[assignment]
    else:
        policy.tools[tool] = decision  # type: ignore[assignment]
    await sessions.update(owner, session_id, {"approval": policy.model_dump()})


async def _ask_webhook(url: str, session_id: str, tool: str, input: dict[str, Any],
                       timeout: float) -> Verdict:
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            r = await client.post(url, json={"session_id": session_id, "tool": tool,
                                             "input": input})
        body = r.json()
    except httpx.TimeoutException:
        return Verdict(False, f"the approval webhook did not answer within {timeout:g} s")
    except (httpx.HTTPError, ValueError) as exc:
        return Verdict(False, f"the approval webhook could not be reached: {exc}")
    if r.status_code != 200 or not isinstance(body, dict):
        return Verdict(False, f"the approval webhook answered HTTP {r.status_code}")
    reason = body.get("reason") if isinstance(body.get("reason"), str) else None
    return Verdict(body.get("approved") is True, reason)
