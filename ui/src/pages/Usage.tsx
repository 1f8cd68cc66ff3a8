import { useEffect, useMemo, useState } from "react";
import { request, sessions as api } from "../api";
import { Chart, type Series } from "../lib/Chart";
import { tokens, usd, usdFine } from "../lib/format";
import { onLinkClick } from "../lib/router";
import type { SessionView, UsageCall } from "../types";

const MAX_SESSIONS = 100;

/** One per-user limit from /v1/me: the use now, the ceiling (null: none), its setting. */
interface LimitUse {
  used: number;
  limit: number | null;
  setting: string;
}

interface Me {
  token_budget: number | null;
  tokens_used: number;
  limits?: {
    boxes_awake: LimitUse;
    concurrent_executions: LimitUse;
    disk_mb: LimitUse;
    events_per_minute: LimitUse;
    box_max_unattended_seconds: number | null;
  };
}

type LimitKey = "boxes_awake" | "concurrent_executions" | "disk_mb" | "events_per_minute";

const mib = (n: number) => (n >= 1024 ? `${(n / 1024).toFixed(n % 1024 ? 1 : 0)} GiB` : `${n} MiB`);

const LIMIT_ROWS: { key: LimitKey; label: string; hint: string; format: (n: number) => string }[] = [
  { key: "boxes_awake", label: "Sandboxes awake", hint: "threads, sessions and one-off executions running now", format: String },
  { key: "concurrent_executions", label: "Executions running", hint: "at the same time", format: String },
  { key: "disk_mb", label: "Disk", hint: "the sizes of your sessions', threads' and volumes' disks", format: mib },
  { key: "events_per_minute", label: "Session events", hint: "appended in the last minute", format: String },
];

function hours(seconds: number): string {
  if (seconds >= 3600) return `${+(seconds / 3600).toFixed(1)} h`;
  if (seconds >= 60) return `${+(seconds / 60).toFixed(1)} min`;
  return `${seconds} s`;
}

/** The per-user limits and the user's use of each, as bars. */
function Limits({ limits }: { limits: NonNullable<Me["limits"]> }) {
  return (
    <section>
      <h2>Your limits</h2>
      <table className="limits small" data-testid="limits">
        <tbody>
          {LIMIT_ROWS.map(({ key, label, hint, format }) => {
            const l = limits[key];
            const share = l.limit ? Math.min(1, l.used / l.limit) : 0;
            const level = share >= 1 ? "full" : share >= 0.8 ? "high" : "";
            return (
              <tr key={key} data-testid={`limit-${key}`} title={l.setting}>
                <td>
                  {label} <span className="muted">({hint})</span>
                </td>
                <td className="num">
                  {format(l.used)}
                  {l.limit === null ? " · no limit" : ` of ${format(l.limit)}`}
                </td>
                <td className="bar-cell">
                  {l.limit !== null && (
                    <div className={`meter ${level}`} role="meter" aria-label={label} aria-valuemin={0}
                      aria-valuemax={l.limit} aria-valuenow={l.used}>
                      <span style={{ width: `${(share * 100).toFixed(1)}%` }} />
                    </div>
                  )}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
      <p className="muted small">
        Past a limit, a request is refused with 429 <code>limit_exceeded</code>, saying which.
        {limits.box_max_unattended_seconds !== null &&
          ` A sandbox that gets no request for ${hours(limits.box_max_unattended_seconds)} is stopped, background processes included; the next request starts it again over the same files.`}
      </p>
    </section>
  );
}

interface Day {
  day: string; // YYYY-MM-DD, local time
  input: number;
  output: number;
  cost: number;
}

function dayOf(ts: string): string {
  return localDay(new Date(ts));
}

function localDay(d: Date): string {
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
}

async function mapLimit<T, R>(items: T[], limit: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** Tokens and cost per day and per session, over the signed-in user's sessions. */
export default function UsagePage() {
  const [list, setList] = useState<SessionView[] | null>(null);
  const [calls, setCalls] = useState<UsageCall[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [me, setMe] = useState<Me | null>(null);

  useEffect(() => {
    let live = true;
    (async () => {
      try {
        request<Me>("/v1/me")
          .then((m) => live && setMe(m))
          .catch(() => undefined);
        const all = await api.all();
        const used = all
          .filter((s) => s.usage.input_tokens + s.usage.output_tokens > 0)
          .slice(0, MAX_SESSIONS);
        const reports = await mapLimit(used, 4, (s) => api.usage(s.id).catch(() => null));
        if (!live) return;
        setList(all);
        setCalls(reports.flatMap((r) => r?.calls ?? []));
      } catch (err) {
        if (live) setError(err instanceof Error ? err.message : String(err));
      }
    })();
    return () => {
      live = false;
    };
  }, []);

  const days = useMemo(() => {
    const by = new Map<string, Day>();
    for (const c of calls) {
      const key = dayOf(c.ts);
      const d = by.get(key) ?? { day: key, input: 0, output: 0, cost: 0 };
      d.input += c.input_tokens;
      d.output += c.output_tokens;
      d.cost += c.cost_usd;
      by.set(key, d);
    }
    // Every day of the last two weeks (or since the first call), with the quiet ones at 0.
    const out: Day[] = [];
    const today = new Date();
    const first = [...by.keys()].sort()[0];
    const start = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 13);
    if (first && new Date(first + "T00:00:00") < start) start.setTime(new Date(first + "T00:00:00").getTime());
    for (const d = start; d <= today; d.setDate(d.getDate() + 1)) {
      const key = localDay(d);
      out.push(by.get(key) ?? { day: key, input: 0, output: 0, cost: 0 });
    }
    return by.size ? out : [];
  }, [calls]);

  const dayX = useMemo(() => days.map((d) => Date.parse(d.day + "T12:00:00") / 1000), [days]);
  const daySeries = useMemo<Series[]>(
    () => [
      { label: "tokens", color: "#58a6ff", values: days.map((d) => d.input + d.output), format: tokens },
      { label: "cost", color: "#f0b72f", axis: "right", values: days.map((d) => d.cost), format: usdFine },
    ],
    [days],
  );
  const top = useMemo(
    () =>
      (list ?? [])
        .filter((s) => s.usage.input_tokens + s.usage.output_tokens > 0)
        .sort((a, b) => b.usage.input_tokens + b.usage.output_tokens - (a.usage.input_tokens + a.usage.output_tokens))
        .slice(0, 20),
    [list],
  );
  const sessionX = useMemo(() => top.map((_, i) => i), [top]);
  // Names need not be unique: two sessions of one name are told apart by their ids.
  const sessionNames = useMemo(() => top.map((s) => labelOf(s, top)), [top]);
  const sessionSeries = useMemo<Series[]>(
    () => [
      { label: "tokens", color: "#58a6ff", values: top.map((s) => s.usage.input_tokens + s.usage.output_tokens), format: tokens },
      { label: "cost", color: "#f0b72f", axis: "right", values: top.map((s) => s.usage.cost_usd), format: usdFine },
    ],
    [top],
  );
  const total = (list ?? []).reduce(
    (t, s) => ({ tokens: t.tokens + s.usage.input_tokens + s.usage.output_tokens, cost: t.cost + s.usage.cost_usd }),
    { tokens: 0, cost: 0 },
  );

  return (
    <div className="page">
      <div className="page-head">
        <h1>Usage</h1>
      </div>
      {error && <p className="error" role="alert">{error}</p>}
      {!list && !error && <p className="muted">Adding up your sessions…</p>}
      {list && (
        <dl className="stats">
          <div><dt>Tokens, all sessions</dt><dd>{tokens(total.tokens)}</dd></div>
          <div><dt>Cost, all sessions</dt><dd>{usd(total.cost)}</dd></div>
          <div><dt>Sessions with usage</dt><dd>{top.length}</dd></div>
          {me && (
            <div>
              <dt>Your token budget</dt>
              <dd data-testid="token-budget">
                {me.token_budget === null
                  ? "no limit"
                  : `${tokens(Math.max(0, me.token_budget - me.tokens_used))} left of ${tokens(me.token_budget)}`}
              </dd>
            </div>
          )}
        </dl>
      )}
      {me?.limits && <Limits limits={me.limits} />}
      {list && days.length === 0 && <p className="muted">No model calls yet.</p>}
      {days.length > 0 && (
        <section>
          <h2>Per day</h2>
          <Chart title="Tokens and cost per day" x={dayX} series={daySeries} bars dayAxis />
          <p className="muted small">
            Today: {tokens(days[days.length - 1].input + days[days.length - 1].output)} tokens ·{" "}
            {usd(days[days.length - 1].cost)}
          </p>
        </section>
      )}
      {top.length > 0 && (
        <section>
          <h2>Per session</h2>
          <Chart title="Tokens and cost per session" x={sessionX} categories={sessionNames} series={sessionSeries} bars />
          <table className="sessions small">
            <thead>
              <tr>
                <th>Session</th><th className="num">Input</th><th className="num">Output</th><th className="num">Cost</th><th className="num">Budget left</th>
              </tr>
            </thead>
            <tbody>
              {top.map((s) => (
                <tr key={s.id}>
                  <td><a href={`/sessions/${s.id}`} onClick={onLinkClick}>{labelOf(s, top)}</a></td>
                  <td className="num">{tokens(s.usage.input_tokens)}</td>
                  <td className="num">{tokens(s.usage.output_tokens)}</td>
                  <td className="num">{usd(s.usage.cost_usd)}</td>
                  <td className="num">{s.max_budget_usd ? `${usd(Math.max(0, s.max_budget_usd - s.usage.cost_usd))} of ${usd(s.max_budget_usd)}` : "no limit"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </section>
      )}
    </div>
  );
}

function labelOf(s: { id: string; name: string }, all: { id: string; name: string }[]): string {
  return all.some((o) => o.name === s.name && o.id !== s.id) ? `${s.name} (${s.id.slice(4, 10)})` : s.name;
}
