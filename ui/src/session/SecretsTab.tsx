import { useCallback, useEffect, useState, type FormEvent } from "react";
import { sessions as api } from "../api";

const NAME = /^[A-Z][A-Z0-9_]{0,127}$/;

/** Secrets are environment variables in the sandbox; only their names ever come back. */
export function SecretsTab({ sessionId }: { sessionId: string }) {
  const [names, setNames] = useState<string[] | null>(null);
  const [name, setName] = useState("");
  const [value, setValue] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const load = useCallback(async () => {
    try {
      setNames((await api.secrets(sessionId)).names);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  }, [sessionId]);

  useEffect(() => {
    load();
  }, [load]);

  const add = async (e: FormEvent) => {
    e.preventDefault();
    if (!NAME.test(name)) {
      setError("A name is uppercase letters, digits and _, starting with a letter (e.g. GITHUB_TOKEN).");
      return;
    }
    setBusy(true);
    setError(null);
    try {
      await api.putSecret(sessionId, name, value);
      setName("");
      setValue("");
      await load();
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };

  const remove = async (n: string) => {
    if (!window.confirm(`Remove the secret ${n}?`)) return;
    try {
      await api.deleteSecret(sessionId, n);
      await load();
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  };

  return (
    <div className="tab-page narrow-form">
      <h2>Secrets</h2>
      <p className="muted small">
        Set as environment variables for the agent's commands and the terminal. Values are
        encrypted on the server, replaced by [redacted] in every event, and never shown again.
      </p>
      {names && names.length === 0 && <p className="muted">No secrets.</p>}
      <ul className="plain">
        {names?.map((n) => (
          <li key={n} className="secret-item">
            <code>{n}</code>
            <button className="ghost small" onClick={() => remove(n)} aria-label={`Remove ${n}`}>
              Remove
            </button>
          </li>
        ))}
      </ul>
      <form onSubmit={add} className="secret-row">
        <input aria-label="Name" placeholder="NAME" value={name} onChange={(e) => setName(e.target.value.toUpperCase())} />
        <input aria-label="Value" type="password" autoComplete="off" placeholder="value" value={value} onChange={(e) => setValue(e.target.value)} />
        <button type="submit" disabled={busy || !name || !value}>
          Set
        </button>
      </form>
      {error && <p className="error" role="alert">{error}</p>}
    </div>
  );
}
