// Connectors: a user's credentials for named hosts. The sandbox only ever holds a
// placeholder; the server's egress door puts the real value on the wire. A value goes in
// once, through a password field that is emptied as soon as the server has it, and is
// never shown back (the API never returns it).
import { useCallback, useEffect, useRef, useState, type FormEvent } from "react";
import { ApiError, connectors as api } from "../api";
import { ago } from "../lib/format";
import type { ConnectorType, ConnectorView } from "../types";

const NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;

const TYPE_HINT: Record<ConnectorType, string> = {
  github: "A GitHub token for github.com and api.github.com (git clone/push, gh).",
  anthropic: "A provider key for Claude calls from the sandbox (through Sophon's gateway); leave the value empty to use the server's own.",
  http: "A header (Authorization, X-Api-Key, …) sent to one host of your own.",
};

const VALUE_PLACEHOLDER: Record<ConnectorType, string> = {
  github: "github_pat_…",
  anthropic: "sk-ant-… (optional)",
  http: "Bearer …",
};

/** An API error as a person reads it: the sentence, and the code in small print. */
export function ErrorLine({ error }: { error: unknown }) {
  if (!error) return null;
  const code = error instanceof ApiError ? error.code : null;
  const message = error instanceof Error ? error.message : String(error);
  return (
    <p className="error" role="alert">
      {message}
      {code && code !== "offline" && <span className="muted small"> ({code})</span>}
    </p>
  );
}

export default function ConnectorsPage() {
  const [list, setList] = useState<ConnectorView[] | null>(null);
  const [loadError, setLoadError] = useState<unknown>(null);
  const [removing, setRemoving] = useState<ConnectorView | null>(null);
  const [notice, setNotice] = useState<string | null>(null);

  const load = useCallback(async () => {
    try {
      setList((await api.list()).connectors);
      setLoadError(null);
    } catch (err) {
      setLoadError(err);
    }
  }, []);

  useEffect(() => {
    load();
  }, [load]);

  return (
    <div className="page">
      <div className="page-head">
        <h1>Connectors</h1>
      </div>
      <p className="muted small intro">
        Credentials your sandboxes use without ever holding them: a sandbox gets a placeholder,
        and Sophon's network door swaps in the real value on the way out, for the connector's
        hosts only. Attach a connector to a session in its settings; values are encrypted on the
        server and never shown again.
      </p>
      <ErrorLine error={loadError} />
      {notice && (
        <p className="ok small" role="status">
          {notice}
        </p>
      )}
      <section>
        {list === null && !loadError && <p className="muted">Loading connectors…</p>}
        {list !== null && list.length === 0 && <p className="muted">No connectors yet.</p>}
        {list !== null && list.length > 0 && (
          <div className="table-wrap">
            <table className="connectors" aria-label="Connectors">
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Type</th>
                  <th scope="col">Host</th>
                  <th scope="col">Header</th>
                  <th scope="col" className="hide-narrow">Execute API</th>
                  <th scope="col">Push to</th>
                  <th scope="col" className="hide-narrow">Added</th>
                  <th scope="col"><span className="visually-hidden">Actions</span></th>
                </tr>
              </thead>
              <tbody>
                {list.map((c) => (
                  <tr key={c.name} data-connector={c.name}>
                    <td className="mono nowrap">{c.name}</td>
                    <td>
                      <span className={`type-tag t-${c.type}`}>{c.type}</span>
                    </td>
                    <td className="mono">
                      {c.type === "github" ? <span className="muted">github.com, api.github.com</span> : (c.host ?? <span className="muted">—</span>)}
                    </td>
                    <td className="mono">{c.header ?? <span className="muted">—</span>}</td>
                    <td className="hide-narrow">
                      {c.execute ? "every key of yours" : c.keys && c.keys.length ? (
                        <span title={c.keys.join(", ")}>{c.keys.length === 1 ? "one key" : `${c.keys.length} keys`}</span>
                      ) : <span className="muted">no</span>}
                    </td>
                    <td className="mono small">
                      {c.type !== "github" ? (
                        <span className="muted">—</span>
                      ) : c.push && c.push.length ? (
                        c.push.join(", ")
                      ) : (
                        <span className="muted">anywhere the token may</span>
                      )}
                    </td>
                    <td className="hide-narrow" title={new Date(c.created_at).toLocaleString()}>{ago(c.created_at)}</td>
                    <td className="num">
                      <button className="danger ghost small" onClick={() => setRemoving(c)} aria-label={`Delete connector ${c.name}`}>
                        Delete
                      </button>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </section>
      <AddConnector
        taken={new Set((list ?? []).map((c) => c.name))}
        onAdded={(c) => {
          setNotice(`Added the connector ${c.name}.`);
          load();
        }}
      />
      {removing && (
        <ConfirmRemove
          connector={removing}
          onCancel={() => setRemoving(null)}
          onRemoved={() => {
            setNotice(`Deleted the connector ${removing.name}.`);
            setRemoving(null);
            load();
          }}
        />
      )}
    </div>
  );
}

function AddConnector(props: { taken: Set<string>; onAdded: (c: ConnectorView) => void }) {
  const [name, setName] = useState("");
  const [type, setType] = useState<ConnectorType>("github");
  const [value, setValue] = useState("");
  const [host, setHost] = useState("");
  const [header, setHeader] = useState("Authorization");
  const [push, setPush] = useState("");
  const [executions, setExecutions] = useState<"none" | "all" | "this">("none");
  const [thisKey, setThisKey] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    // The key this dashboard was signed in with (none after a one-time link).
    api.keys().then((r) => setThisKey(r.keys.find((k) => k.current)?.id ?? null), () => setThisKey(null));
  }, []);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    const n = name.trim();
    if (!NAME.test(n)) {
      setError(new Error("A name is lowercase letters, digits and '-', starting with a letter or digit (e.g. github-work)."));
      return;
    }
    if (props.taken.has(n)) {
      setError(new Error(`You have a connector named ${n} already; delete it first to replace it.`));
      return;
    }
    const body: Record<string, unknown> = { name: n, type, execute: executions === "all" };
    if (executions === "this" && thisKey) body.keys = [thisKey];
    if (value) body.value = value;
    if (type === "http") {
      body.host = host.trim();
      body.header = header.trim();
    }
    if (type === "github") {
      const rules = push.split(/[\n,]/).map((r) => r.trim()).filter(Boolean);
      if (rules.length) body.push = rules;
    }
    setBusy(true);
    try {
      const created = await api.create(body);
      // The value leaves the page as soon as the server has it.
      setValue("");
      setName("");
      setHost("");
      setPush("");
      setExecutions("none");
      props.onAdded(created);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <section className="card add-connector" aria-labelledby="add-connector-title">
      <form onSubmit={submit} className="form" autoComplete="off">
        <h2 id="add-connector-title">Add a connector</h2>
        <div className="grid2">
          <label>
            Name
            <input required maxLength={63} value={name} onChange={(e) => setName(e.target.value.toLowerCase())} placeholder="github-work" />
          </label>
          <label>
            Type
            <select value={type} onChange={(e) => setType(e.target.value as ConnectorType)}>
              <option value="github">github: a GitHub token</option>
              <option value="anthropic">anthropic: a provider key</option>
              <option value="http">http: a header for one host</option>
            </select>
          </label>
        </div>
        <p className="muted small hint">{TYPE_HINT[type]}</p>
        {type === "http" && (
          <div className="grid2">
            <label>
              Host
              <input required value={host} onChange={(e) => setHost(e.target.value)} placeholder="api.example.com or api.example.com:8443" />
            </label>
            <label>
              Header
              <input required value={header} onChange={(e) => setHeader(e.target.value)} placeholder="Authorization" />
            </label>
          </div>
        )}
        <div className="field">
          <label>
            Value{type === "anthropic" ? " (optional)" : ""}
            <input
              type="password"
              autoComplete="new-password"
              spellCheck={false}
              required={type !== "anthropic"}
              value={value}
              onChange={(e) => setValue(e.target.value)}
              placeholder={VALUE_PLACEHOLDER[type]}
            />
          </label>
          <span className="muted small">Encrypted on the server; never shown again, not even to you.</span>
        </div>
        {type === "github" && (
          <div className="field">
            <label>
              Pushes may go to (optional, one per line)
              <textarea rows={2} value={push} onChange={(e) => setPush(e.target.value)} placeholder={"acme/api\nacme/web:feature/*"} spellCheck={false} />
            </label>
            <span className="muted small">owner/repo, or owner/repo:branch (a glob such as feature/* allowed). Empty: anywhere the token may push.</span>
          </div>
        )}
        <label>
          The execution API's runs get it
          <select value={executions} onChange={(e) => setExecutions(e.target.value as "none" | "all" | "this")}>
            <option value="none">No (sessions only)</option>
            <option value="all">With every API key of yours</option>
            <option value="this" disabled={!thisKey}>
              Only with the key you signed in with{thisKey ? "" : " (signed in by link: no key)"}
            </option>
          </select>
        </label>
        <ErrorLine error={error} />
        <div className="actions">
          <button type="submit" className="primary" disabled={busy}>
            {busy ? "Adding…" : "Add connector"}
          </button>
        </div>
      </form>
    </section>
  );
}

function ConfirmRemove(props: { connector: ConnectorView; onCancel: () => void; onRemoved: () => void }) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    const d = dialog.current!;
    if (!d.open) d.showModal();
    return () => d.close();
  }, []);
  const remove = async () => {
    setBusy(true);
    setError(null);
    try {
      await api.remove(props.connector.name);
      props.onRemoved();
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  };
  return (
    <dialog ref={dialog} className="dialog" aria-labelledby="remove-connector-title" onCancel={(e) => { e.preventDefault(); if (!busy) props.onCancel(); }}>
      <h2 id="remove-connector-title">Delete the connector “{props.connector.name}”?</h2>
      <p>
        Its value is deleted for good. Sessions it is attached to lose it from their next
        connection on.
      </p>
      <ErrorLine error={error} />
      <div className="actions">
        <button className="ghost" onClick={props.onCancel} autoFocus disabled={busy}>Cancel</button>
        <button className="danger" onClick={remove} disabled={busy}>
          {busy ? "Deleting…" : "Delete connector"}
        </button>
      </div>
    </dialog>
  );
}
