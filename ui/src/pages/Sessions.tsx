import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import { ApiError, sessions as api } from "../api";
import { ago, STATUS_LABEL, tokens, usd } from "../lib/format";
import { navigate, onLinkClick } from "../lib/router";
import type { SessionView } from "../types";
import { NewSessionDialog } from "./NewSession";

const POLL_MS = 3000;

export function StatusBadge({ status }: { status: string }) {
  return (
    <span className={`status status-${status}`} data-status={status}>
      <span className="dot" aria-hidden="true" />
      {STATUS_LABEL[status] ?? status}
    </span>
  );
}

export function SessionsPage() {
  const [list, setList] = useState<SessionView[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [query, setQuery] = useState("");
  const [creating, setCreating] = useState(false);
  const [, setTick] = useState(0);
  const search = useRef<HTMLInputElement>(null);

  const load = useCallback(async () => {
    try {
      setList(await api.all());
      setError(null);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) {
        setError(err instanceof Error ? err.message : String(err));
      }
    }
  }, []);

  // Status and activity stay live: a cheap list poll while the page is visible.
  useEffect(() => {
    load();
    const timer = window.setInterval(() => {
      if (document.visibilityState === "visible") load();
      setTick((t) => t + 1);
    }, POLL_MS);
    return () => clearInterval(timer);
  }, [load]);

  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      const target = e.target as HTMLElement;
      if (target.closest("input, textarea, select, [contenteditable]")) return;
      if (e.key === "/") {
        e.preventDefault();
        search.current?.focus();
      } else if (e.key === "n" && !creating) {
        e.preventDefault();
        setCreating(true);
      }
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [creating]);

  const shown = useMemo(() => {
    if (!list) return [];
    const q = query.trim().toLowerCase();
    if (!q) return list;
    return list.filter((s) =>
      [s.name, s.id, s.model, s.base, s.status].some((f) => f.toLowerCase().includes(q)),
    );
  }, [list, query]);

  return (
    <div className="page">
      <div className="page-head">
        <h1>Sessions</h1>
        <input
          ref={search}
          type="search"
          className="search"
          placeholder="Search sessions  ( / )"
          aria-label="Search sessions"
          value={query}
          onChange={(e) => setQuery(e.target.value)}
        />
        <button className="primary" onClick={() => setCreating(true)} aria-keyshortcuts="n">
          New session
        </button>
      </div>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
      {list === null && !error && <p className="muted">Loading sessions…</p>}
      {list !== null && list.length === 0 && (
        <div className="empty">
          <p>No sessions yet.</p>
          <button className="primary" onClick={() => setCreating(true)}>
            Start your first session
          </button>
        </div>
      )}
      {list !== null && list.length > 0 && (
        <div className="table-wrap">
          <table className="sessions" aria-label="Sessions">
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Status</th>
                <th scope="col" className="hide-narrow">Base</th>
                <th scope="col" className="hide-narrow">Model</th>
                <th scope="col">Last activity</th>
                <th scope="col" className="num">Tokens</th>
                <th scope="col" className="num hide-narrow">Cost</th>
              </tr>
            </thead>
            <tbody>
              {shown.map((s) => (
                <tr
                  key={s.id}
                  data-session-id={s.id}
                  onClick={(e) => {
                    if (!(e.target as HTMLElement).closest("a")) navigate(`/sessions/${s.id}`);
                  }}
                >
                  <td>
                    <a href={`/sessions/${s.id}`} onClick={onLinkClick} className="session-link">
                      {s.name}
                    </a>
                    <div className="muted small mono">{s.id}</div>
                  </td>
                  <td>
                    <StatusBadge status={s.status} />
                  </td>
                  <td className="hide-narrow">{s.base}</td>
                  <td className="hide-narrow">{s.model}</td>
                  <td title={new Date(s.last_activity_at).toLocaleString()}>
                    {ago(s.last_activity_at)}
                  </td>
                  <td className="num">{tokens(s.usage.input_tokens + s.usage.output_tokens)}</td>
                  <td className="num hide-narrow">{usd(s.usage.cost_usd)}</td>
                </tr>
              ))}
              {shown.length === 0 && (
                <tr>
                  <td colSpan={7} className="muted">
                    No session matches “{query}”.
                  </td>
                </tr>
              )}
            </tbody>
          </table>
        </div>
      )}
      {creating && (
        <NewSessionDialog
          onClose={() => setCreating(false)}
          onCreated={(s) => {
            setCreating(false);
            navigate(`/sessions/${s.id}`);
          }}
        />
      )}
    </div>
  );
}
