// A session's settings after it started (PATCH): its name, the system prompt, its limits
// and the MCP servers whose tools its agent gets. The next turn uses what is saved.
import { useEffect, useMemo, useState, type FormEvent } from "react";
import { sessions as api } from "../api";
import type { SessionView } from "../types";
import { mcpText, parseMcpServers } from "./mcpServers";

interface Draft {
  name: string;
  systemPrompt: string;
  maxTurns: string;
  budget: string;
  servers: string;
}

function draftOf(s: SessionView): Draft {
  return {
    name: s.name,
    systemPrompt: s.system_prompt ?? "",
    maxTurns: s.max_turns == null ? "" : String(s.max_turns),
    budget: s.max_budget_usd == null ? "" : String(s.max_budget_usd),
    servers: mcpText(s.mcp_servers),
  };
}

const same = (a: Draft, b: Draft) => (Object.keys(a) as (keyof Draft)[]).every((k) => a[k].trim() === b[k].trim());

export function SettingsTab({ session, onSaved }: { session: SessionView; onSaved: (v: SessionView) => void }) {
  const saved = useMemo(() => draftOf(session), [session]);
  const [draft, setDraftState] = useState<Draft>(saved);
  const [touched, setTouched] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  // Changes made elsewhere (the CLI, another tab) show up unless the user is editing.
  useEffect(() => {
    if (!touched) setDraftState(saved);
  }, [saved, touched]);
  const set = (k: keyof Draft) => (value: string) => {
    setTouched(true);
    setDraftState((d) => ({ ...d, [k]: value }));
  };
  const dirty = !same(draft, saved);

  const save = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    setNotice(null);
    const servers = parseMcpServers(draft.servers, session.mcp_servers ?? []);
    if (typeof servers === "string") {
      setError(servers);
      return;
    }
    if (!draft.name.trim()) {
      setError("A session needs a name.");
      return;
    }
    const body: Record<string, unknown> = {};
    if (draft.name.trim() !== saved.name.trim()) body.name = draft.name.trim();
    if (draft.systemPrompt.trim() !== saved.systemPrompt.trim()) body.system_prompt = draft.systemPrompt.trim() || null;
    if (draft.maxTurns.trim() !== saved.maxTurns.trim()) body.max_turns = draft.maxTurns.trim() ? Number(draft.maxTurns) : null;
    if (draft.budget.trim() !== saved.budget.trim()) body.max_budget_usd = draft.budget.trim() ? Number(draft.budget) : null;
    if (draft.servers.trim() !== saved.servers.trim()) body.mcp_servers = servers;
    setBusy(true);
    try {
      const v = await api.update(session.id, body);
      setDraftState(draftOf(v));
      setTouched(false);
      setNotice("Saved: the next turn uses these settings.");
      onSaved(v);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <div className="tab-page settings-tab">
      <div className="tab-head">
        <h2>Settings</h2>
      </div>
      <p className="small muted">
        {session.base} base · {session.model} · {session.runtime === "claude-code" ? "Claude Code runtime" : "native agent"}.
        A turn that is running keeps what it started with.
      </p>
      <form className="form narrow-form" onSubmit={save}>
        <label>
          Name
          <input value={draft.name} maxLength={200} onChange={(e) => set("name")(e.target.value)} />
        </label>
        <label>
          System prompt
          <textarea rows={4} value={draft.systemPrompt} placeholder="Extra instructions for the agent (optional)" onChange={(e) => set("systemPrompt")(e.target.value)} />
        </label>
        <div className="grid3">
          <label>
            Max turns
            <input type="number" min={1} max={10000} step={1} value={draft.maxTurns} placeholder="no limit" onChange={(e) => set("maxTurns")(e.target.value)} />
          </label>
          <label>
            Budget (USD)
            <input type="number" min={0.01} step={0.01} value={draft.budget} placeholder="no limit" onChange={(e) => set("budget")(e.target.value)} />
          </label>
        </div>
        <label>
          MCP servers: one per line, as server=command (run in the sandbox) or server=URL; the
          agent gets their tools as mcp__server__tool and asks before each use
          <textarea rows={3} value={draft.servers} placeholder="docs=python3 docs_server.py" spellCheck={false} onChange={(e) => set("servers")(e.target.value)} />
        </label>
        {error && <p className="error" role="alert">{error}</p>}
        {notice && !dirty && <p className="ok small" role="status">{notice}</p>}
        <div className="actions left">
          <button type="submit" className="primary" disabled={busy || !dirty}>
            {busy ? "Saving…" : "Save settings"}
          </button>
          {dirty && (
            <button type="button" className="ghost" onClick={() => { setDraftState(saved); setTouched(false); setError(null); }} disabled={busy}>
              Undo changes
            </button>
          )}
        </div>
      </form>
    </div>
  );
}
