import { useState, type FormEvent } from "react";
import { ApiError, auth } from "../api";

export function SignIn(props: { notice?: string; onSignedIn: (user: string, csrf: string) => void }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!key.trim()) {
      setError("Enter an API key.");
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const me = await auth.signIn(key.trim());
      setKey("");
      props.onSignedIn(me.user, me.csrf_token);
    } catch (err) {
      setError(
        err instanceof ApiError && err.status === 401
          ? "That API key is not valid. Check it, or create one with `sophon users add NAME`."
          : err instanceof Error
            ? err.message
            : String(err),
      );
    } finally {
      setBusy(false);
    }
  };

  return (
    <div className="signin">
      <form className="card signin-card" onSubmit={submit} aria-labelledby="signin-title">
        <h1 id="signin-title">Sign in to Sophon</h1>
        {props.notice && (
          <p className="notice" role="status">
            {props.notice}
          </p>
        )}
        <label htmlFor="api-key">API key</label>
        <input
          id="api-key"
          name="api_key"
          type="password"
          autoComplete="off"
          spellCheck={false}
          autoFocus
          value={key}
          onChange={(e) => setKey(e.target.value)}
          placeholder="sk-sophon-…"
          aria-invalid={error ? true : undefined}
          aria-describedby={error ? "signin-error" : "signin-help"}
        />
        {error ? (
          <p id="signin-error" className="error" role="alert">
            {error}
          </p>
        ) : (
          <p id="signin-help" className="muted small">
            The key becomes a browser session cookie; the page never stores it. <code>make run</code>{" "}
            also prints a one-time sign-in link.
          </p>
        )}
        <button type="submit" className="primary" disabled={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
      </form>
    </div>
  );
}
