// Wire shapes of the API (docs/EVENTS.md and src/sophon/sessions/models.py).

export type Status = "idle" | "running" | "waiting_approval" | "sleeping" | "error";

export interface SessionView {
  id: string;
  name: string;
  status: Status;
  base: string;
  model: string;
  runtime: string;
  system_prompt: string | null;
  starter: Record<string, unknown>;
  approval: { shell: string; tools: Record<string, string>; webhook?: string | null };
  created_at: string;
  last_activity_at: string;
  usage: { input_tokens: number; output_tokens: number; cost_usd: number };
  max_turns: number | null;
  max_budget_usd: number | null;
  last_seq: number;
  disk?: { used_bytes: number; limit_bytes: number | null };
  network?: NetworkSettings;
  connectors?: string[];
  mcp_servers?: McpServer[];
}

/** An MCP server whose tools a session's agent gets: a command in the sandbox or a URL. */
export interface McpServer {
  name: string;
  command?: string[] | null;
  url?: string | null;
  env?: Record<string, string>;
  headers?: Record<string, string>;
}

/** What a session's sandbox may reach beyond its base's list. */
export interface NetworkSettings {
  allow: string[];
  ask: boolean;
}

export type ConnectorType = "github" | "anthropic" | "http";

/** A connector as its owner sees it: never its value. */
export interface ConnectorView {
  name: string;
  type: ConnectorType;
  host: string | null;
  header: string | null;
  execute: boolean;
  /** Only the executions made with these API keys get it (execute is then false). */
  keys: string[] | null;
  push: string[] | null;
  created_at: string;
}

/** One of the user's API keys: never the key itself. */
export interface KeyView {
  id: string;
  prefix: string;
  created_at: string;
  current: boolean;
}

export interface NetworkUsage {
  bytes_out: number;
  bytes_in: number;
  connections: number;
  denied: number;
}

export interface FileContent {
  path: string;
  size: number;
  etag: string | null;
  binary: boolean;
  truncated: boolean;
  content: string | null;
  encoding: "utf-8" | "base64" | null;
}

export interface UsageCall {
  ts: string;
  model: string;
  input_tokens: number;
  output_tokens: number;
  cache_read_tokens: number;
  cache_write_tokens: number;
  cost_usd: number;
  cumulative_input_tokens: number;
  cumulative_output_tokens: number;
  cumulative_cost_usd: number;
}

export interface UsageReport {
  session_id: string;
  totals: { input_tokens: number; output_tokens: number; cost_usd: number };
  calls: UsageCall[];
  network?: NetworkUsage;
}

interface Envelope {
  seq: number;
  ts: string;
}

export type WireEvent = Envelope &
  (
    | { type: "session_start"; name: string; base: string; model: string; runtime: string }
    | { type: "session_end"; reason: string }
    | { type: "session_error"; code: string; message: string }
    | { type: "status"; status: Status; detail: string | null }
    | { type: "user"; content: string }
    | { type: "assistant"; text: string }
    | { type: "thinking"; text: string }
    | { type: "tool_use"; tool_use_id: string; tool: string; input: Record<string, unknown> }
    | { type: "tool_result"; tool_use_id: string; content: string; is_error: boolean }
    | { type: "task_update"; task_id: string; subject: string; status: string }
    | {
        type: "usage";
        model: string;
        input_tokens: number;
        output_tokens: number;
        cache_read_tokens: number;
        cache_write_tokens: number;
        cost_usd: number;
      }
    | {
        type: "file_change";
        path: string;
        change: "created" | "modified" | "deleted";
        size: number | null;
        diff: string | null;
        diff_truncated: boolean;
        binary: boolean;
      }
    | { type: "file_changes_coalesced"; changes: number; files: number; paths: string[]; seconds: number }
    | {
        type: "approval_request";
        approval_id: string;
        tool: string;
        input: Record<string, unknown>;
        reason: string | null;
        expires_at?: string | null;
        on_timeout?: "allow" | "deny" | null;
      }
    | {
        type: "approval_decision";
        approval_id: string;
        decision: "allow" | "deny";
        remember: boolean;
        by: string | null;
        reason: string | null;
      }
    | { type: "network_denied"; host: string; port: number; rule: string; message: string }
    | {
        type: "checkpoint";
        checkpoint_id: string;
        commit: string;
        turn: number;
        step: number | null;
        reason: CheckpointReason;
        tool_use_id: string | null;
        files: { path: string; change: "added" | "modified" | "deleted" }[];
        files_changed: number;
      }
    | { type: "rewind"; checkpoint_id: string; to_seq: number; files: boolean; conversation: boolean; undo: string }
    | { type: "tool_output"; tool_use_id: string; stream: "stdout" | "stderr"; data: string; index: number }
    | { type: "exec_start"; exec_id: string; command: string }
    | { type: "exec_output"; exec_id: string; stream: "stdout" | "stderr"; data: string }
    | {
        type: "exec_end";
        exec_id: string;
        exit_code: number | null;
        error: string | null;
        duration_ms: number | null;
        truncated?: boolean;
      }
  );

export type EventOf<T extends WireEvent["type"]> = Extract<WireEvent, { type: T }>;

export type CheckpointReason = "tool" | "turn_start" | "turn_end" | "save" | "exec" | "before_rewind" | "rewind";

/** A checkpoint as GET /v1/sessions/{id}/checkpoints lists it. */
export interface CheckpointView {
  id: string;
  seq: number;
  turn: number;
  step: number | null;
  reason: CheckpointReason;
  tool_use_id: string | null;
  ts: string;
  commit: string;
  files: { path: string; change: "added" | "modified" | "deleted" }[];
  files_changed: number;
}
