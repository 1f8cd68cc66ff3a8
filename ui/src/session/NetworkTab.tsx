// A session's network: what its sandbox may reach (editable: PATCH), the connectors
// attached to it, its traffic, and the connections refused lately.
import { useEffect, useMemo, useState, type FormEvent } from "react";
import { sessions as api } from "../api";
import { bytes, clock } from "../lib/format";
import type { NetworkUsage, SessionView, WireEvent } from "../types";
import { BASE_HOSTS, draftOf, NetworkFields, parseHosts, type NetworkDraft } from "./NetworkFields";

export function NetworkStats({ usage }: { usage: NetworkUsage | null }) {
  if (!usage) return null;
  return (
    <dl className="stats" data-testid="network-usage" aria-label="Network traffic">
      <div><dt>Sent</dt><dd>{bytes(usage.bytes_out)}</dd></div>
      <div><dt>Received</dt><dd>{bytes(usage.bytes_in)}</dd></div>
      <div><dt>Connections</dt><dd>{usage.connections}</dd></div>
      <div><dt>Refused</dt><dd className={usage.denied ? "bad" : ""}>{usage.denied}</dd></div>
    </dl>
  );
}

export function NetworkTab(props: {
  session: SessionView;
  usage: NetworkUsage | null;
  events: WireEvent[];
  version: number;
  onSaved: (v: SessionView) => void;
}) {
  const { session } = props;
  const saved = useMemo(() => draftOf(session.network, session.connectors), [session]);
  const [draft, setDraftState] = useState<NetworkDraft>(saved);
  const [touched, setTouched] = useState(false);
  // Settings changed elsewhere (a remembered network approval, the CLI) show up here
  // unless the user is in the middle of editing them.
  useEffect(() => {
    if (!touched) setDraftState(saved);
  }, [saved, touched]);
  const setDraft = (d: NetworkDraft) => {
    setTouched(true);
    setDraftState(d);
  };
  const [error, setError] = useState<string | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const dirty =
    draft.ask !== saved.ask ||
    parseHosts(draft.allowText).join("\n") !== parseHosts(saved.allowText).join("\n") ||
    [...draft.connectors].sort().join(",") !== [...saved.connectors].sort().join(",");

  const refused = useMemo(() => {
    const out: Extract<WireEvent, { type: "network_denied" }>[] = [];
    for (let i = props.events.length - 1; i >= 0 && out.length < 20; i--) {
      const ev = props.events[i];
      if (ev.type === "network_denied") out.push(ev);
    }
    return out;
  }, [props.version]);

  const save = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    setNotice(null);
    try {
      const v = await api.update(session.id, {
        network: { allow: parseHosts(draft.allowText), ask: draft.ask },
        connectors: draft.connectors,
      });
      setDraftState(draftOf(v.network, v.connectors));
      setTouched(false);
      setNotice("Saved: the sandbox's next connections follow these settings.");
      props.onSaved(v);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };

  const baseHosts = BASE_HOSTS[session.base] ?? [];
  const allow = session.network?.allow ?? [];
  return (
    <div className="tab-page network-tab">
      <div className="tab-head">
        <h2>Network</h2>
      </div>
      <p className="small reach" data-testid="network-summary">
        May reach:{" "}
        {baseHosts.length + allow.length === 0 && (session.connectors ?? []).length === 0 ? (
          <span className="muted">nothing</span>
        ) : (
          <>
            {[...baseHosts.map((h) => ({ h, from: `the ${session.base} base` })), ...allow.map((h) => ({ h, from: "this session" }))].map(({ h, from }) => (
              <code key={h} className="chip" title={`from ${from}`}>{h}</code>
            ))}
            {(session.connectors ?? []).map((n) => (
              <code key={`c-${n}`} className="chip connector" title="a connector: its hosts, with the credential put on by the door">
                {n} <span className="muted">connector</span>
              </code>
            ))}
          </>
        )}
        {" · "}
        {session.network?.ask ? "other hosts: ask first" : "other hosts: refused"}
      </p>
      <NetworkStats usage={props.usage} />
      <form className="form narrow-form" onSubmit={save}>
        <NetworkFields base={session.base} draft={draft} onChange={setDraft} idPrefix="edit" />
        {error && <p className="error" role="alert">{error}</p>}
        {notice && !dirty && <p className="ok small" role="status">{notice}</p>}
        <div className="actions left">
          <button type="submit" className="primary" disabled={busy || !dirty}>
            {busy ? "Saving…" : "Save network settings"}
          </button>
          {dirty && (
            <button type="button" className="ghost" onClick={() => { setDraftState(saved); setTouched(false); }} disabled={busy}>
              Undo changes
            </button>
          )}
        </div>
      </form>
      <h3 className="sub">Refused connections</h3>
      {refused.length === 0 ? (
        <p className="muted small">None among the events loaded.</p>
      ) : (
        <table className="small refused">
          <thead>
            <tr><th>Time</th><th>Host</th><th>Rule</th><th>What the program was told</th></tr>
          </thead>
          <tbody>
            {refused.map((r) => (
              <tr key={r.seq}>
                <td>{clock(r.ts)}</td>
                <td className="mono">{hostPort(r.host, r.port)}</td>
                <td className="mono">{r.rule}</td>
                <td>{r.message}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}

export function hostPort(host: string, port: number | null | undefined): string {
  const h = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
  return port ? `${h}:${port}` : h;
}
