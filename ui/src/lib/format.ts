export function tokens(n: number): string {
  if (n < 1000) return String(n);
  if (n < 1_000_000) return `${(n / 1000).toFixed(n < 10_000 ? 1 : 0)}k`;
  return `${(n / 1_000_000).toFixed(1)}M`;
}

export function usd(n: number): string {
  if (n === 0) return "$0";
  if (n < 0.01) return `$${n.toFixed(4)}`;
  return `$${n.toFixed(2)}`;
}

/** Dollars with enough digits to tell small amounts apart (chart axes). */
export function usdFine(n: number): string {
  if (n === 0) return "$0";
  return `$${n.toFixed(n < 0.1 ? 3 : 2)}`;
}

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(1)} GiB`;
}

export function ago(iso: string, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 5) return "just now";
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export function duration(ms: number): string {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60_000)}m ${Math.round((ms % 60_000) / 1000)}s`;
}

export function clock(iso: string): string {
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export const STATUS_LABEL: Record<string, string> = {
  idle: "idle",
  running: "running",
  waiting_approval: "waiting for approval",
  sleeping: "sleeping",
  error: "error",
};

/** A one-line summary of a tool call's input, as a person would name it. */
export function toolSummary(tool: string, input: Record<string, unknown>): string {
  const s = (k: string) => (typeof input[k] === "string" ? (input[k] as string) : "");
  switch (tool) {
    case "Bash":
      return s("command");
    case "Read":
    case "Write":
    case "Edit":
      return relative(s("file_path"));
    case "Glob":
    case "Grep":
      return s("pattern") + (s("path") ? ` in ${relative(s("path"))}` : "");
    case "TaskCreate":
      return s("subject");
    case "TaskUpdate":
      return [s("taskId"), s("status")].filter(Boolean).join(" → ");
    case "Network": {
      const host = s("host");
      const port = typeof input.port === "number" ? input.port : null;
      const h = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
      return port ? `${h}:${port}` : h;
    }
    default: {
      const first = Object.values(input).find((v) => typeof v === "string");
      return typeof first === "string" ? first : JSON.stringify(input);
    }
  }
}

export function relative(path: string): string {
  return path.startsWith("/workspace/") ? path.slice("/workspace/".length) : path;
}

export function oneLine(text: string, max = 160): string {
  const line = text.replace(/\s+/g, " ").trim();
  return line.length > max ? line.slice(0, max - 1) + "…" : line;
}
