// A session's network settings as form fields: the hosts it may reach beyond its base's
// list, whether to ask before others, and the connectors attached to it. Used by the
// New Session form and by the session's Network tab.
import { useEffect, useState } from "react";
import { connectors as connectorsApi } from "../api";
import { onLinkClick } from "../lib/router";
import type { ConnectorView } from "../types";

/** What a base may reach without being told (src/sophon/egress/policy.py). */
export const BASE_HOSTS: Record<string, string[]> = {
  python: ["pypi.org", "files.pythonhosted.org"],
  node: ["registry.npmjs.org"],
};

/** The hosts typed in the box: one a line (commas and spaces also split). */
export function parseHosts(text: string): string[] {
  const out: string[] = [];
  for (const h of text.split(/[\s,]+/)) {
    const t = h.trim();
    if (t && !out.includes(t)) out.push(t);
  }
  return out;
}

export interface NetworkDraft {
  allowText: string;
  ask: boolean;
  connectors: string[];
}

export function draftOf(network: { allow: string[]; ask: boolean } | undefined, connectors: string[] | undefined): NetworkDraft {
  return { allowText: (network?.allow ?? []).join("\n"), ask: network?.ask ?? false, connectors: [...(connectors ?? [])] };
}

/** The user's connectors, loaded once for a form. */
export function useConnectors(): { list: ConnectorView[] | null; error: string | null } {
  const [list, setList] = useState<ConnectorView[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    let live = true;
    connectorsApi
      .list()
      .then((r) => live && setList(r.connectors))
      .catch((err) => live && setError(err instanceof Error ? err.message : String(err)));
    return () => {
      live = false;
    };
  }, []);
  return { list, error };
}

export function NetworkFields(props: {
  base: string;
  draft: NetworkDraft;
  onChange: (d: NetworkDraft) => void;
  idPrefix: string;
}) {
  const { draft, onChange, base, idPrefix } = props;
  const { list, error } = useConnectors();
  const baseHosts = BASE_HOSTS[base] ?? [];
  // Attached names the user no longer has (deleted since): still shown, so they can be removed.
  const missing = draft.connectors.filter((n) => list && !list.some((c) => c.name === n));
  const toggle = (name: string, on: boolean) =>
    onChange({ ...draft, connectors: on ? [...draft.connectors, name] : draft.connectors.filter((n) => n !== name) });

  return (
    <>
      <div className="grid2 network-grid">
        <div className="field">
          <label>
            Hosts it may reach (one per line)
            <textarea
              id={`${idPrefix}-allow`}
              rows={4}
              spellCheck={false}
              className="mono"
              value={draft.allowText}
              onChange={(e) => onChange({ ...draft, allowText: e.target.value })}
              placeholder={"api.example.com\n*.example.org\nexample.net:8443"}
            />
          </label>
          <span className="muted small">
            A name, name:port or *.domain (ports 80 and 443 unless one is named).{" "}
            {baseHosts.length ? (
              <>The {base} base reaches {baseHosts.join(", ")} already.</>
            ) : (
              <>The {base} base reaches nothing by itself.</>
            )}
          </span>
        </div>
        <div className="connector-pick" role="group" aria-labelledby={`${idPrefix}-connectors-label`}>
          <span id={`${idPrefix}-connectors-label`} className="field-label">Connectors</span>
          {error && <span className="error small">{error}</span>}
          {list === null && !error && <span className="muted small">Loading…</span>}
          {list !== null && list.length === 0 && missing.length === 0 && (
            <span className="muted small">
              You have none yet.{" "}
              <a href="/connectors" onClick={onLinkClick}>
                Add one
              </a>{" "}
              (a GitHub token, a provider key, a header for a host).
            </span>
          )}
          {list?.map((c) => (
            <label key={c.name} className="inline">
              <input type="checkbox" checked={draft.connectors.includes(c.name)} onChange={(e) => toggle(c.name, e.target.checked)} />
              <span className="mono">{c.name}</span>
              <span className="muted small">
                {c.type}
                {c.host ? ` · ${c.host}` : ""}
              </span>
            </label>
          ))}
          {missing.map((n) => (
            <label key={n} className="inline">
              <input type="checkbox" checked onChange={() => toggle(n, false)} />
              <span className="mono">{n}</span>
              <span className="error small">deleted</span>
            </label>
          ))}
          {list !== null && list.length > 0 && (
            <span className="muted small">
              The sandbox gets a placeholder, never the value; their hosts are reachable.
            </span>
          )}
        </div>
      </div>
      <label className="inline">
        <input type="checkbox" checked={draft.ask} onChange={(e) => onChange({ ...draft, ask: e.target.checked })} />
        Ask before connecting to other hosts (otherwise they are refused)
      </label>
    </>
  );
}
