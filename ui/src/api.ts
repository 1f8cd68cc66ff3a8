// The one place that talks to the server: same origin, the session cookie, and the CSRF
// token on every state-changing request. The API key itself is never kept by the page.
import type {
  KeyView, CheckpointView, ConnectorView, FileContent, SessionView, UsageReport, WireEvent } from "./types";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** Thrown when the server cannot be reached at all (stopped, restarting, network down). */
export class OfflineError extends ApiError {
  constructor() {
    super(0, "offline", "Cannot reach the Sophon server. It may be restarting; retrying.");
  }
}

let csrfToken = "";
type Listener = () => void;
const unauthorizedListeners = new Set<Listener>();
const connectivityListeners = new Set<(online: boolean) => void>();

export function setCsrfToken(token: string): void {
  csrfToken = token;
}

/** Called when a request comes back 401: the cookie expired, was signed out, or the key
 * behind it was revoked. */
export function onUnauthorized(fn: Listener): () => void {
  unauthorizedListeners.add(fn);
  return () => unauthorizedListeners.delete(fn);
}

export function onConnectivity(fn: (online: boolean) => void): () => void {
  connectivityListeners.add(fn);
  return () => connectivityListeners.delete(fn);
}

export function reportConnectivity(online: boolean): void {
  for (const fn of connectivityListeners) fn(online);
}

const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

export async function rawRequest(path: string, init: RequestInit = {}): Promise<Response> {
  const method = (init.method ?? "GET").toUpperCase();
  const headers = new Headers(init.headers);
  if (UNSAFE.has(method) && csrfToken) headers.set("X-CSRF-Token", csrfToken);
  let resp: Response;
  try {
    resp = await fetch(path, { ...init, method, headers, credentials: "same-origin" });
  } catch (err) {
    if (err instanceof DOMException && err.name === "AbortError") throw err;
    reportConnectivity(false);
    throw new OfflineError();
  }
  reportConnectivity(true);
  if (!resp.ok) {
    const error = await errorOf(resp);
    if (resp.status === 401 && !path.startsWith("/v1/auth/")) {
      for (const fn of unauthorizedListeners) fn();
    }
    throw error;
  }
  return resp;
}

async function errorOf(resp: Response): Promise<ApiError> {
  let code = "http_" + resp.status;
  let message = `${resp.status} ${resp.statusText}`.trim();
  try {
    const body = await resp.json();
    if (body && typeof body === "object") {
      if (typeof body.error === "string") code = body.error;
      if (typeof body.message === "string") message = body.message;
      else if (typeof body.detail === "string") message = body.detail;
    }
  } catch {
    // not JSON: keep the status line
  }
  if (resp.status === 502 || resp.status === 503 || resp.status === 504) {
    if (!message || message.startsWith(String(resp.status))) {
      message = "The server is unavailable right now; try again in a moment.";
    }
  }
  return new ApiError(resp.status, code, message);
}

export async function request<T>(path: string, init: RequestInit = {}): Promise<T> {
  const resp = await rawRequest(path, init);
  if (resp.status === 204) return undefined as T;
  return (await resp.json()) as T;
}

export function jsonBody(method: string, body: unknown): RequestInit {
  return {
    method,
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  };
}

export interface Capability {
  name: string;
  available: boolean;
  reason: string | null;
}

export interface BoxLimits {
  memory_mb: number;
  cpus: number;
  pids: number;
  disk_mb: number;
}

export interface Capabilities {
  bases: (Capability & { description: string; network: string[]; limits?: BoxLimits })[];
  runtimes: Capability[];
  models: { name: string; id: string }[];
  limits?: { memory_max_mb?: number; cpus_max?: number; pids_max?: number; disk_max_mb?: number };
}

/** What this server offers (bases, runtimes, models), and why not the rest. */
export const capabilities = () => request<Capabilities>("/v1/capabilities");

export interface ImageInfo {
  name: string;
  description: string;
  status: string; // ready | building | not built | failed | unavailable
  builtin: boolean;
  base: string | null;
  reason: string | null;
  limits?: BoxLimits | null;
}

/** The built-in images and the user's own (POST /v1/images). */
export const images = () => request<{ images: ImageInfo[] }>("/v1/images");

export const sessionPath = (id: string) => `/v1/sessions/${encodeURIComponent(id)}`;

export function filePath(id: string, path: string): string {
  return `${sessionPath(id)}/files/${path.split("/").map(encodeURIComponent).join("/")}`;
}

// --- typed helpers ---------------------------------------------------------------

export interface AuthInfo {
  user: string;
  csrf_token: string;
}

export const auth = {
  current: () => request<AuthInfo>("/v1/auth/session"),
  signIn: (apiKey: string) =>
    request<AuthInfo>("/v1/auth/session", jsonBody("POST", { api_key: apiKey })),
  signOut: () => request<void>("/v1/auth/session", { method: "DELETE" }),
};

export const sessions = {
  list: (cursor?: string | null) =>
    request<{ sessions: SessionView[]; next_cursor: string | null }>(
      `/v1/sessions?limit=200${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`,
    ),
  async all(maxPages = 10): Promise<SessionView[]> {
    const out: SessionView[] = [];
    let cursor: string | null = null;
    for (let i = 0; i < maxPages; i++) {
      const page: { sessions: SessionView[]; next_cursor: string | null } =
        await sessions.list(cursor);
      out.push(...page.sessions);
      cursor = page.next_cursor;
      if (!cursor) break;
    }
    return out;
  },
  get: (id: string) => request<SessionView>(sessionPath(id)),
  create: (body: unknown) => request<SessionView>("/v1/sessions", jsonBody("POST", body)),
  update: (id: string, body: unknown) =>
    request<SessionView>(sessionPath(id), jsonBody("PATCH", body)),
  remove: (id: string) => request<void>(sessionPath(id), { method: "DELETE" }),
  send: (id: string, content: string, queue: boolean) =>
    request<Record<string, unknown>>(
      `${sessionPath(id)}/messages`,
      jsonBody("POST", { content, queue }),
    ),
  checkpoints: (id: string) => request<{ checkpoints: CheckpointView[] }>(`${sessionPath(id)}/checkpoints`),
  rewind: (id: string, checkpoint: string, files: boolean, conversation: boolean) =>
    request<WireEvent>(`${sessionPath(id)}/rewind`, jsonBody("POST", { checkpoint, files, conversation })),
  fork: (id: string, checkpoint: string, name?: string) =>
    request<SessionView>(`${sessionPath(id)}/fork`, jsonBody("POST", name ? { checkpoint, name } : { checkpoint })),
  review: (id: string, turn: number, body: { reject: { path: string; hunk: number }[]; comments: { path: string; line: number; text: string }[] }) =>
    request<WireEvent>(`${sessionPath(id)}/turns/${turn}/review`, jsonBody("POST", body)),
  turnDiff: (id: string, turn: number) =>
    request<{ base: string; head: string; diff: string }>(`${sessionPath(id)}/turns/${turn}/diff`),
  interrupt: (id: string) =>
    request<{ interrupted: boolean }>(`${sessionPath(id)}/interrupt`, { method: "POST" }),
  page: (id: string, after: number, limit: number) =>
    request<{ events: WireEvent[]; last_seq: number }>(
      `${sessionPath(id)}/events?after=${after}&limit=${limit}`,
      { headers: { Accept: "application/json" } },
    ),
  approvals: (id: string) =>
    request<{ approvals: PendingApproval[] }>(`${sessionPath(id)}/approvals`),
  decide: (id: string, approvalId: string, decision: "allow" | "deny", remember: boolean) =>
    request<WireEvent>(
      `${sessionPath(id)}/approvals/${encodeURIComponent(approvalId)}`,
      jsonBody("POST", { decision, remember }),
    ),
  tree: (id: string) =>
    request<{ entries: TreeEntry[]; truncated: boolean }>(`${sessionPath(id)}/files`),
  readFile: (id: string, path: string) => request<FileContent>(filePath(id, path)),
  async writeFile(id: string, path: string, content: string, etag: string | null) {
    const headers: Record<string, string> = { "Content-Type": "application/octet-stream" };
    if (etag) headers["If-Match"] = `"${etag}"`;
    else headers["If-None-Match"] = "*";
    return request<{ path: string; size: number; etag: string }>(filePath(id, path), {
      method: "PUT",
      headers,
      body: content,
    });
  },
  diff: (id: string) => request<{ base: string; diff: string }>(`${sessionPath(id)}/diff`),
  secrets: (id: string) => request<{ names: string[] }>(`${sessionPath(id)}/secrets`),
  putSecret: (id: string, name: string, value: string) =>
    request<void>(
      `${sessionPath(id)}/secrets/${encodeURIComponent(name)}`,
      jsonBody("PUT", { value }),
    ),
  deleteSecret: (id: string, name: string) =>
    request<void>(`${sessionPath(id)}/secrets/${encodeURIComponent(name)}`, {
      method: "DELETE",
    }),
  usage: (id: string) => request<UsageReport>(`${sessionPath(id)}/usage`),
  exportUrl: (id: string) => `${sessionPath(id)}/export`,
};

export const connectors = {
  list: () => request<{ connectors: ConnectorView[] }>("/v1/connectors"),
  create: (body: Record<string, unknown>) =>
    request<ConnectorView>("/v1/connectors", jsonBody("POST", body)),
  remove: (name: string) =>
    request<void>(`/v1/connectors/${encodeURIComponent(name)}`, { method: "DELETE" }),
  keys: () => request<{ keys: KeyView[] }>("/v1/keys"),
};

export interface PendingApproval {
  approval_id: string;
  tool: string;
  input: Record<string, unknown>;
  reason: string | null;
  created_at: string;
}

export interface TreeEntry {
  path: string;
  type: "file" | "dir" | "symlink" | "other";
  size: number;
  mtime: number;
}

/** Reads a streamed response line by line (NDJSON), calling `onLine` for each. */
export async function readLines(
  resp: Response,
  onLine: (line: string) => void,
): Promise<void> {
  const reader = resp.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let nl: number;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      if (line.trim()) onLine(line);
    }
  }
  buffer += decoder.decode();
  if (buffer.trim()) onLine(buffer);
}
