"""Whether a tool call may run: the session's approval policy, the owner, or a webhook.

Per tool the policy says allow, ask or deny; Bash follows ``shell`` (``ask_once`` by
default: the first use asks, and an allow holds for the rest of the session). Other
tools are allowed unless the policy names them. With a webhook, the webhook answers
what would be asked (through sophon.webhooks: checked again, pinned, signed with the
user's webhook secret if there is one). Anything but a valid answer in time is a deny
whose reason is one fixed sentence: the webhook's body, status or connection error would
let a user read or scan what the server can reach, so those go to the server's log only.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from sophon import metrics
from sophon.agent.mcp_servers import is_mcp_tool
from sophon.events.types import ApprovalDecision, ApprovalRequest
from sophon.sessions.models import ApprovalPolicy
from sophon.sessions.service import SessionService
from sophon.webhooks import Webhooks, describe, json_body

log = logging.getLogger(__name__)

SHELL_TOOL = "Bash"
WEBHOOK_FIELD = "approval.webhook"
NO_VALID_ANSWER = "the approval webhook gave no valid answer"
MAX_REASON = 500  # characters of a webhook's reason shown in the decision
READ_LIMIT = 64 * 1024  # bytes of a webhook's answer read; a longer one is not valid JSON


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str | None = None


def mode_for(policy: ApprovalPolicy, tool: str) -> str:
    if tool in policy.tools:
        return policy.tools[tool]
    if tool == SHELL_TOOL:
        return {"ask_once": "ask", "allow": "allow", "deny": "deny"}[policy.shell]
    if is_mcp_tool(tool):  # a tool of a server the session added: asked unless set
        return "ask"
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
        approval_id = "apr_" + secrets.token_hex(10)
        verdict = await ask_webhook(sessions.webhooks, policy.webhook, approval_id,
                                     session_id, owner.user_id, tool, input, webhook_timeout)
        await sessions.events.append(session_id, ApprovalRequest(
            approval_id=approval_id, tool=tool, input=input, reason=reason))
        await sessions.events.append(session_id, ApprovalDecision(
            approval_id=approval_id, decision="allow" if verdict.allowed else "deny",
            by="webhook", reason=verdict.reason))
    else:
        decision = await sessions.approvals.ask(session_id, tool, input, reason,
                                                policy.timeout_seconds, policy.on_timeout)
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


async def ask_webhook(webhooks: Webhooks, url: str, approval_id: str, session_id: str,
                      user_id: str, tool: str, input: dict[str, Any],
                      timeout: float) -> Verdict:
    body = json_body({"session_id": session_id, "tool": tool, "input": input})
    try:
        secret = await webhooks.secrets.get(user_id)
        reply = await webhooks.send(url, "msg_" + approval_id, body, secret,
                                    field=WEBHOOK_FIELD, timeout=timeout,
                                    read_limit=READ_LIMIT)
    except Exception as exc:  # refused, unreachable, slow: all look the same to the user
        log.info("approval webhook of %s (%s): %s", session_id, approval_id, describe(exc))
        metrics.webhook_deliveries.labels("approval", "failed").inc()
        return Verdict(False, NO_VALID_ANSWER)
    try:
        answer = json.loads(reply.body) if reply.status == 200 else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("approved"), bool):
        log.info("approval webhook of %s (%s): HTTP %d, not a JSON object with a boolean "
                 "'approved'", session_id, approval_id, reply.status)
        metrics.webhook_deliveries.labels("approval", "failed").inc()
        return Verdict(False, NO_VALID_ANSWER)
    metrics.webhook_deliveries.labels("approval", "answered").inc()
    reason = answer.get("reason")
    return Verdict(answer["approved"], reason[:MAX_REASON] if isinstance(reason, str) else None)
