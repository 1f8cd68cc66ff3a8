// Events folded into what the pane shows: a tool call with its result, an approval with
// its answer, a command with its output and exit code. One pass over the loaded events.
import type { EventOf, WireEvent } from "../types";

export type Item =
  | { kind: "event"; key: string; ev: WireEvent }
  | {
      kind: "tool";
      key: string;
      use: EventOf<"tool_use">;
      result?: EventOf<"tool_result">;
      output: { stream: string; data: string }[]; // printed while it ran (tool_output)
    }
  | {
      kind: "approval";
      key: string;
      req: EventOf<"approval_request">;
      decision?: EventOf<"approval_decision">;
    }
  | {
      kind: "exec";
      key: string;
      start: EventOf<"exec_start">;
      output: { stream: string; data: string }[];
      end?: EventOf<"exec_end">;
    };

export const QUIET_TYPES = new Set(["status", "usage", "session_start", "checkpoint"]);

export function buildItems(events: WireEvent[], showQuiet: boolean): Item[] {
  const results = new Map<string, EventOf<"tool_result">>();
  const decisions = new Map<string, EventOf<"approval_decision">>();
  const uses = new Set<string>();
  const requests = new Set<string>();
  const execs = new Map<string, Extract<Item, { kind: "exec" }>>();
  const tools = new Map<string, Extract<Item, { kind: "tool" }>>();
  for (const ev of events) {
    if (ev.type === "tool_result") results.set(ev.tool_use_id, ev);
    else if (ev.type === "approval_decision") decisions.set(ev.approval_id, ev);
    else if (ev.type === "tool_use") uses.add(ev.tool_use_id);
    else if (ev.type === "approval_request") requests.add(ev.approval_id);
  }
  const items: Item[] = [];
  for (const ev of events) {
    const key = String(ev.seq);
    switch (ev.type) {
      case "tool_use": {
        const item = { kind: "tool" as const, key, use: ev, result: results.get(ev.tool_use_id), output: [] };
        tools.set(ev.tool_use_id, item);
        items.push(item);
        break;
      }
      case "tool_output": {
        const item = tools.get(ev.tool_use_id);
        if (item) item.output.push({ stream: ev.stream, data: ev.data });
        break;
      }
      case "tool_result":
        if (!uses.has(ev.tool_use_id)) items.push({ kind: "event", key, ev });
        break;
      case "approval_request":
        items.push({ kind: "approval", key, req: ev, decision: decisions.get(ev.approval_id) });
        break;
      case "approval_decision":
        if (!requests.has(ev.approval_id)) items.push({ kind: "event", key, ev });
        break;
      case "exec_start": {
        const item = { kind: "exec" as const, key, start: ev, output: [] };
        execs.set(ev.exec_id, item);
        items.push(item);
        break;
      }
      case "exec_output": {
        const item = execs.get(ev.exec_id);
        if (item) item.output.push({ stream: ev.stream, data: ev.data });
        else items.push({ kind: "event", key, ev });
        break;
      }
      case "exec_end": {
        const item = execs.get(ev.exec_id);
        if (item) item.end = ev;
        else items.push({ kind: "event", key, ev });
        break;
      }
      default:
        if (showQuiet || !QUIET_TYPES.has(ev.type)) items.push({ kind: "event", key, ev });
    }
  }
  return items;
}

/** Approvals still waiting for an answer among the loaded events. */
export function pendingApprovals(events: WireEvent[]): EventOf<"approval_request">[] {
  const answered = new Set<string>();
  const out: EventOf<"approval_request">[] = [];
  for (const ev of events) if (ev.type === "approval_decision") answered.add(ev.approval_id);
  for (const ev of events) {
    if (ev.type === "approval_request" && !answered.has(ev.approval_id)) out.push(ev);
  }
  return out;
}

const CONVERSATION = new Set(["user", "assistant", "thinking", "tool_use", "tool_result"]);

/** The seqs of conversation events a rewind took out of what the agent is sent, among
 *  the loaded events: the server's rule (agent/history.py, `effective`), where a rewind
 *  puts the conversation back as it stood at its `to_seq`. */
export function rewoundSeqs(events: WireEvent[]): Set<number> {
  if (!events.some((e) => e.type === "rewind" && e.conversation)) return new Set();
  const parent = new Map<number, number>();
  const headAt: [number, number][] = [];
  let head = 0;
  for (const ev of events) {
    if (ev.type === "rewind" && ev.conversation) {
      let at = 0;
      for (const [seq, h] of headAt) {
        if (seq > ev.to_seq) break;
        at = h;
      }
      head = at;
    } else {
      parent.set(ev.seq, head);
      head = ev.seq;
    }
    headAt.push([ev.seq, head]);
  }
  const kept = new Set<number>();
  for (let s = head; s; s = parent.get(s) ?? 0) kept.add(s);
  return new Set(events.filter((e) => CONVERSATION.has(e.type) && !kept.has(e.seq)).map((e) => e.seq));
}
