// One row of the event pane. Rows are pure: fold state lives in the pane (rows unmount
// as they scroll out of the virtualised list).
import { memo, useState, type ReactNode } from "react";
import { DiffView, parseDiff, syntheticDiff } from "../lib/diff";
import { ago, clock, duration, oneLine, relative, STATUS_LABEL, tokens, toolSummary, usd } from "../lib/format";
import { Markdown } from "../lib/markdown";
import type { EventOf, WireEvent } from "../types";
import { Countdown } from "./attention";
import type { Item } from "./items";

export interface RowActions {
  toggle: (key: string) => void;
  decide: (approvalId: string, decision: "allow" | "deny", remember: boolean) => void;
  openFile: (path: string) => void;
}

const MAX_TEXT = 20_000;

function Clipped({ text, className }: { text: string; className?: string }) {
  const [all, setAll] = useState(false);
  const long = text.length > MAX_TEXT;
  return (
    <>
      <pre className={className ?? "out"}>{long && !all ? text.slice(0, MAX_TEXT) : text}</pre>
      {long && !all && (
        <button className="linkish small" onClick={() => setAll(true)}>
          Show all ({text.length.toLocaleString()} characters)
        </button>
      )}
    </>
  );
}

function Fold(props: {
  id: string;
  open: boolean;
  actions: RowActions;
  head: ReactNode;
  className?: string;
  children: () => ReactNode;
}) {
  return (
    <div className={`row fold-row ${props.className ?? ""}`}>
      <button
        className="fold-head"
        aria-expanded={props.open}
        onClick={() => props.actions.toggle(props.id)}
      >
        <span className="chev" aria-hidden="true">
          {props.open ? "▾" : "▸"}
        </span>
        {props.head}
      </button>
      {props.open && <div className="fold-body">{props.children()}</div>}
    </div>
  );
}

function ToolInput({ use }: { use: EventOf<"tool_use"> }) {
  const input = use.input;
  const str = (k: string) => (typeof input[k] === "string" ? (input[k] as string) : "");
  if (use.tool === "Bash") return <pre className="cmd">$ {str("command")}</pre>;
  if (use.tool === "Write") {
    return <DiffView file={syntheticDiff(relative(str("file_path")), "", str("content"))} />;
  }
  if (use.tool === "Edit") {
    return (
      <DiffView
        file={syntheticDiff(relative(str("file_path")), str("old_string"), str("new_string"))}
      />
    );
  }
  return <pre className="json">{JSON.stringify(input, null, 2)}</pre>;
}

function ToolRow({ item, open, actions }: { item: Extract<Item, { kind: "tool" }>; open: boolean; actions: RowActions }) {
  const { use, result, output } = item;
  const state = !result ? "running" : result.is_error ? "failed" : "ok";
  const printed = output.map((o) => o.data).join("");
  const lastLine = printed.trimEnd().split("\n").pop() ?? "";
  return (
    <Fold
      id={item.key}
      open={open}
      actions={actions}
      className={`tool tool-${state}`}
      head={
        <>
          <span className="tool-name">{use.tool}</span>
          <span className="tool-sum mono">{oneLine(toolSummary(use.tool, use.input), 120)}</span>
          {!result && lastLine && <span className="tool-live mono muted" aria-live="polite">{oneLine(lastLine, 80)}</span>}
          <span className={`tool-state ${state}`} aria-label={state}>
            {state === "running" ? "…" : state === "ok" ? "✓" : "✗"}
          </span>
        </>
      }
    >
      {() => (
        <>
          <div className="label">Input</div>
          <ToolInput use={use} />
          {!result && printed && (
            <>
              <div className="label">Output so far</div>
              <Clipped text={printed} className="out live-output" />
            </>
          )}
          <div className="label">{result ? (result.is_error ? "Error" : "Result") : "Waiting for the result…"}</div>
          {result && <Clipped text={result.content} className={result.is_error ? "out err" : "out"} />}
        </>
      )}
    </Fold>
  );
}

/** A connection outside the session's list, waiting for the owner (network.ask). */
function NetworkApprovalCard({ item, actions }: { item: Extract<Item, { kind: "approval" }>; actions: RowActions }) {
  const { req, decision } = item;
  const target = toolSummary("Network", req.input);
  return (
    <div className={`row approval network-approval ${decision ? "answered" : "waiting"}`} data-approval-id={req.approval_id} data-tool="Network">
      <div className="approval-head">
        <span className="net-icon" aria-hidden="true">⇄</span>{" "}
        <span>
          <strong>{decision ? "Network connection to" : "Allow a connection to"}</strong>{" "}
          <code className="approval-cmd">{target}</code>
          {decision ? "" : "?"}
        </span>
      </div>
      {!decision && <div className="muted small">The sandbox asked for a host that is not on this session's network list; the connection waits for your answer.</div>}
      {decision ? (
        <div className={`decision ${decision.decision}`}>
          {decision.decision === "allow" ? "Allowed" : "Denied"}
          {decision.remember && decision.decision === "allow" ? ", and added to the session's list," : ""} by {decision.by}
          {decision.reason ? `: ${decision.reason}` : ""}
        </div>
      ) : (
        <div className="approval-actions">
          <button className="primary" onClick={() => actions.decide(req.approval_id, "allow", false)}>
            Allow
          </button>
          <button onClick={() => actions.decide(req.approval_id, "allow", true)} title="Allow, and add the host to the session's list">
            Allow and remember
          </button>
          <button className="danger" onClick={() => actions.decide(req.approval_id, "deny", false)}>
            Deny
          </button>
          <span className="muted small">waiting since {ago(req.ts)}</span>
          <Countdown until={req.expires_at} answer={req.on_timeout} />
        </div>
      )}
    </div>
  );
}

const RULE_LABEL: Record<string, string> = {
  not_allowed: "not on the list",
  private_address: "private address",
  sophon_server: "the Sophon server",
  denied: "denied by the admin",
  approval_denied: "not approved",
  push_not_allowed: "push not allowed",
};

function NetworkDenied({ ev }: { ev: EventOf<"network_denied"> }) {
  const target = toolSummary("Network", { host: ev.host, port: ev.port });
  return (
    <div className="row net-denied" role="note" data-rule={ev.rule}>
      <div className="net-denied-head">
        <span aria-hidden="true">⊘</span>{" "}
        <strong>Network refused:</strong> <code>{target}</code>{" "}
        <span className="rule-tag" title={`rule: ${ev.rule}`}>{RULE_LABEL[ev.rule] ?? ev.rule}</span>{" "}
        <span className="muted small">{clock(ev.ts)}</span>
      </div>
      {ev.message && <div className="net-denied-msg small">{ev.message}</div>}
    </div>
  );
}

function ApprovalCard({ item, actions }: { item: Extract<Item, { kind: "approval" }>; actions: RowActions }) {
  const { req, decision } = item;
  if (req.tool === "Network") return <NetworkApprovalCard item={item} actions={actions} />;
  const summary = toolSummary(req.tool, req.input);
  return (
    <div className={`row approval ${decision ? "answered" : "waiting"}`} data-approval-id={req.approval_id}>
      <div className="approval-head">
        <strong>{decision ? "Approval" : "Approve"}</strong> {req.tool}
        <code className="approval-cmd">{oneLine(summary, 300)}</code>
      </div>
      {req.reason && <div className="muted small">{req.reason}</div>}
      {decision ? (
        <div className={`decision ${decision.decision}`}>
          {decision.decision === "allow" ? "Allowed" : "Denied"}
          {decision.remember ? " (always)" : ""} by {decision.by}
          {decision.reason ? `: ${decision.reason}` : ""}
        </div>
      ) : (
        <div className="approval-actions">
          <button className="primary" onClick={() => actions.decide(req.approval_id, "allow", false)}>
            Allow
          </button>
          <button onClick={() => actions.decide(req.approval_id, "allow", true)}>Always allow</button>
          <button className="danger" onClick={() => actions.decide(req.approval_id, "deny", false)}>
            Deny
          </button>
          <span className="muted small">waiting since {ago(req.ts)}</span>
          <Countdown until={req.expires_at} answer={req.on_timeout} />
        </div>
      )}
    </div>
  );
}

function ExecRow({ item, open, actions }: { item: Extract<Item, { kind: "exec" }>; open: boolean; actions: RowActions }) {
  const { start, end, output } = item;
  const code = end ? end.exit_code : null;
  return (
    <Fold
      id={item.key}
      open={open}
      actions={actions}
      className="exec"
      head={
        <>
          <span className="tool-name">$</span>
          <span className="tool-sum mono">{oneLine(start.command, 120)}</span>
          <span className={`exit ${code === 0 ? "ok" : code === null ? "" : "bad"}`}>
            {end ? `exit ${code}${end.error ? ` · ${end.error}` : ""}` : "running…"}
          </span>
        </>
      }
    >
      {() => (
        <>
          <Clipped text={output.map((o) => o.data).join("")} />
          {end && <div className="muted small">took {duration(end.duration_ms ?? 0)}</div>}
        </>
      )}
    </Fold>
  );
}

function FileChangeRow({ ev, open, actions, id }: { ev: EventOf<"file_change">; open: boolean; actions: RowActions; id: string }) {
  const files = ev.diff ? parseDiff(ev.diff, ev.path) : [];
  const added = files.reduce((n, f) => n + f.added, 0);
  const removed = files.reduce((n, f) => n + f.removed, 0);
  return (
    <div className="row file-change" data-path={ev.path}>
      <button className="fold-head" aria-expanded={open} onClick={() => actions.toggle(id)} disabled={!ev.diff}>
        <span className="chev" aria-hidden="true">{ev.diff ? (open ? "▾" : "▸") : "·"}</span>
        <span className={`change ${ev.change}`}>{ev.change}</span>
        <span className="mono">{ev.path}</span>
        {ev.diff && (
          <span className="diff-stat">
            <span className="add">+{added}</span> <span className="del">−{removed}</span>
          </span>
        )}
        {ev.binary && <span className="muted small">binary</span>}
      </button>
      {ev.change !== "deleted" && (
        <button className="linkish small" onClick={() => actions.openFile(ev.path)}>
          open
        </button>
      )}
      {open && ev.diff && (
        <div className="fold-body">
          {files.map((f, i) => (
            <DiffView key={i} file={f} showHeader={false} />
          ))}
          {ev.diff_truncated && <div className="muted small">(diff cut at 64 KiB)</div>}
        </div>
      )}
    </div>
  );
}

export const CHECKPOINT_LABEL: Record<string, string> = {
  tool: "after a tool call", turn_start: "turn start", turn_end: "turn end", save: "after a save",
  exec: "after a command", before_rewind: "before a rewind", rewind: "after a rewind",
};

function PlainEvent({ ev, open, actions, id }: { ev: WireEvent; open: boolean; actions: RowActions; id: string }) {
  switch (ev.type) {
    case "user":
      return (
        <div className="row msg user">
          <div className="who">You <span className="muted small">{clock(ev.ts)}</span></div>
          <div className="bubble">{ev.content}</div>
        </div>
      );
    case "assistant":
      return (
        <div className="row msg assistant">
          <Markdown text={ev.text} />
        </div>
      );
    case "thinking":
      return (
        <Fold id={id} open={open} actions={actions} className="thinking" head={<span className="muted">Thinking · {oneLine(ev.text, 80)}</span>}>
          {() => <div className="thinking-text">{ev.text}</div>}
        </Fold>
      );
    case "file_change":
      return <FileChangeRow ev={ev} open={open} actions={actions} id={id} />;
    case "file_changes_coalesced":
      return (
        <div className="row quiet" title={ev.paths.join("\n")}>
          ✎ {ev.changes} changes to {ev.files} {ev.files === 1 ? "file" : "files"} in {Math.round(ev.seconds)} s
          (too fast to show one by one){ev.paths.length ? `: ${ev.paths.slice(0, 3).join(", ")}${ev.files > 3 ? ", …" : ""}` : ""}
        </div>
      );
    case "usage":
      return (
        <div className="row quiet usage-line">
          usage · {ev.model} · {tokens(ev.input_tokens)} in · {tokens(ev.output_tokens)} out
          {ev.cache_read_tokens ? ` · ${tokens(ev.cache_read_tokens)} cached` : ""} · {usd(ev.cost_usd)}
        </div>
      );
    case "status":
      return (
        <div className={`row quiet status-line s-${ev.status}`}>
          — {STATUS_LABEL[ev.status] ?? ev.status}
          {ev.detail ? `: ${ev.detail}` : ""} · {clock(ev.ts)}
        </div>
      );
    case "session_start":
      return (
        <div className="row quiet">
          Session “{ev.name}” started · {ev.base} · {ev.model} · {ev.runtime}
        </div>
      );
    case "session_end":
      return <div className="row quiet">Session ended: {ev.reason}</div>;
    case "session_error":
      return (
        <div className="row error-card" role="note">
          <strong>{ev.code.replace(/_/g, " ")}</strong>: {ev.message}
        </div>
      );
    case "task_update":
      return (
        <div className="row quiet task">
          {ev.status === "completed" ? "☑" : ev.status === "in_progress" ? "◐" : "☐"} {ev.subject}
        </div>
      );
    case "tool_result":
      return (
        <Fold id={id} open={open} actions={actions} className="tool" head={<span>result of {ev.tool_use_id}</span>}>
          {() => <Clipped text={ev.content} />}
        </Fold>
      );
    case "approval_decision":
      return (
        <div className="row quiet">
          {ev.decision === "allow" ? "Allowed" : "Denied"} {ev.approval_id} by {ev.by}
        </div>
      );
    case "network_denied":
      return <NetworkDenied ev={ev} />;
    case "checkpoint":
      return (
        <div className="row quiet checkpoint-line" title={ev.files.map((f) => `${f.change} ${f.path}`).join("\n")}>
          ⚑ checkpoint · {CHECKPOINT_LABEL[ev.reason]}
          {ev.files_changed ? ` · ${ev.files_changed} file${ev.files_changed === 1 ? "" : "s"} changed` : ""}
        </div>
      );
    case "rewind":
      return (
        <div className="row rewind-line" role="note">
          ↶ Rewound {ev.files && ev.conversation ? "files and conversation" : ev.files ? "files" : "conversation"} to{" "}
          <code>{ev.checkpoint_id}</code>
          {ev.conversation ? " · the agent no longer sees the messages between that checkpoint and here" : ""}
        </div>
      );
    case "exec_output":
      return <pre className="row out">{ev.data}</pre>;
    case "exec_end":
      return <div className="row quiet">command ended: exit {ev.exit_code}</div>;
    default:
      return <div className="row quiet">{(ev as WireEvent).type}</div>;
  }
}

export const EventRow = memo(function EventRow({ item, open, actions }: { item: Item; open: boolean; actions: RowActions }) {
  switch (item.kind) {
    case "tool":
      return <ToolRow item={item} open={open} actions={actions} />;
    case "approval":
      return <ApprovalCard item={item} actions={actions} />;
    case "exec":
      return <ExecRow item={item} open={open} actions={actions} />;
    default:
      return <PlainEvent ev={item.ev} open={open} actions={actions} id={item.key} />;
  }
});
