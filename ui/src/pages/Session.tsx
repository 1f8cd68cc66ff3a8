// The session page: the project tree on the left, the editor, terminal, diff, usage and
// secrets in the centre, the live event stream with the chat box on the right.
import { lazy, Suspense, useCallback, useEffect, useMemo, useRef, useState } from "react";
import { ApiError, sessions as api, type PendingApproval, type TreeEntry } from "../api";
import { ago, bytes, oneLine, tokens, toolSummary, usd } from "../lib/format";
import { navigate, onLinkClick } from "../lib/router";
import { Composer } from "../session/Composer";
import { DiffTab } from "../session/DiffTab";
import { EventPane } from "../session/EventPane";
import { FileTree } from "../session/FileTree";
import { hostPort, NetworkTab } from "../session/NetworkTab";
import { pendingApprovals } from "../session/items";
import { SecretsTab } from "../session/SecretsTab";
import { SettingsTab } from "../session/SettingsTab";
import { TimelineTab } from "../session/TimelineTab";
import { Countdown, NotifyToggle, useAttention } from "../session/attention";
import { useEvents } from "../session/useEvents";
import type { NetworkUsage, SessionView, Status, WireEvent } from "../types";
import { StatusBadge } from "./Sessions";

const EditorPane = lazy(() => import("../session/Editor"));
const TerminalPane = lazy(() => import("../session/Terminal"));
const UsageTab = lazy(() => import("../session/UsageTab"));

type Tab = "chat" | "files" | "editor" | "terminal" | "diff" | "timeline" | "usage" | "network" | "secrets" | "settings";
const TAB_LABEL: Record<Tab, string> = {
  chat: "Chat", files: "Files", editor: "Editor", terminal: "Terminal", diff: "Diff", timeline: "Timeline",
  usage: "Usage", network: "Network", secrets: "Secrets", settings: "Settings",
};
// Events after which the session's network traffic is read again.
const NETWORK_EVENTS = new Set(["network_denied", "exec_end", "status", "approval_decision", "tool_result"]);

function useNarrow(): boolean {
  const query = "(max-width: 960px)";
  const [narrow, setNarrow] = useState(() => matchMedia(query).matches);
  useEffect(() => {
    const m = matchMedia(query);
    const on = () => setNarrow(m.matches);
    m.addEventListener("change", on);
    return () => m.removeEventListener("change", on);
  }, []);
  return narrow;
}

export default function SessionPage({ id }: { id: string }) {
  const [view, setView] = useState<SessionView | null>(null);
  const [missing, setMissing] = useState<string | null>(null);
  const [initialSeq, setInitialSeq] = useState<number | null>(null);

  const loadView = useCallback(async () => {
    try {
      const v = await api.get(id);
      setView(v);
      setInitialSeq((s) => (s === null ? v.last_seq : s));
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        setMissing("This session does not exist: it was deleted, or it belongs to another user.");
      } else if (!(err instanceof ApiError && err.status === 401)) {
        window.setTimeout(loadView, 2000); // offline: the banner says so; try again
      }
    }
  }, [id]);

  useEffect(() => {
    loadView();
  }, [loadView]);

  if (missing) {
    return (
      <div className="empty">
        <h1>Session not found</h1>
        <p>{missing}</p>
        <a href="/" onClick={onLinkClick}>Back to the sessions</a>
      </div>
    );
  }
  if (!view || initialSeq === null) return <div className="splash">Opening the session…</div>;
  return <SessionWorkspace view={view} initialSeq={initialSeq} reloadView={loadView} setView={setView} />;
}

function SessionWorkspace({ view, initialSeq, reloadView, setView }: { view: SessionView; initialSeq: number; reloadView: () => void; setView: (v: SessionView) => void }) {
  const id = view.id;
  const log = useEvents(id, initialSeq);
  const narrow = useNarrow();
  const [tab, setTab] = useState<Tab>("editor");
  const [openFiles, setOpenFiles] = useState<string[]>([]);
  const [activeFile, setActiveFile] = useState<string | null>(null);
  const [terminalOpened, setTerminalOpened] = useState(false);
  const [tree, setTree] = useState<{ entries: TreeEntry[] | null; truncated: boolean; error: string | null }>({ entries: null, truncated: false, error: null });
  const [serverPending, setServerPending] = useState<PendingApproval[]>([]);
  const [actionError, setActionError] = useState<string | null>(null);
  const [confirmDelete, setConfirmDelete] = useState(false);
  const [netUsage, setNetUsage] = useState<NetworkUsage | null>(null);
  const [, setTick] = useState(0);

  // Status: the newest status event wins over the view loaded with the page.
  const status: Status = useMemo(() => {
    for (let i = log.events.length - 1; i >= 0; i--) {
      const ev = log.events[i];
      if (ev.type === "status") return ev.status;
    }
    return view.status;
  }, [log.version, view.status]);
  const busy = status === "running" || status === "waiting_approval";

  // Tokens: the view's totals plus the usage events that arrived after it was read.
  const usage = useMemo(() => {
    const u = { ...view.usage };
    for (let i = log.events.length - 1; i >= 0 && log.events[i].seq > view.last_seq; i--) {
      const ev = log.events[i];
      if (ev.type === "usage") {
        u.input_tokens += ev.input_tokens;
        u.output_tokens += ev.output_tokens;
        u.cost_usd += ev.cost_usd;
      }
    }
    return u;
  }, [log.version, view]);

  const loadTree = useCallback(async () => {
    try {
      const t = await api.tree(id);
      setTree({ entries: t.entries, truncated: t.truncated, error: null });
    } catch (err) {
      setTree((old) => ({ ...old, error: err instanceof Error ? err.message : String(err) }));
    }
  }, [id]);

  const loadApprovals = useCallback(async () => {
    try {
      setServerPending((await api.approvals(id)).approvals);
    } catch {
      // the events still show the cards
    }
  }, [id]);

  const loadNetwork = useCallback(async () => {
    try {
      const u = await api.usage(id);
      if (u.network) setNetUsage(u.network);
    } catch {
      // the header just keeps the last figures
    }
  }, [id]);

  useEffect(() => {
    loadTree();
    loadApprovals();
    loadNetwork();
  }, [loadTree, loadApprovals, loadNetwork]);

  // Live reactions to the stream: the tree, the header's tokens, the pending approvals.
  useEffect(() => {
    let treeTimer = 0;
    let viewTimer = 0;
    let netTimer = 0;
    return log.subscribe((batch: WireEvent[]) => {
      if (batch.some((e) => NETWORK_EVENTS.has(e.type))) {
        // Read now, and again once the server has written its next count (every ~2 s).
        clearTimeout(netTimer);
        netTimer = window.setTimeout(() => {
          loadNetwork();
          netTimer = window.setTimeout(loadNetwork, 2500);
        }, 400);
      }
      if (batch.some((e) => e.type === "approval_decision")) {
        // "remember" on a network approval adds the host to the session's list
        clearTimeout(viewTimer);
        viewTimer = window.setTimeout(reloadView, 250);
      }
      if (batch.some((e) => e.type === "file_change" || e.type === "file_changes_coalesced")) {
        clearTimeout(treeTimer);
        treeTimer = window.setTimeout(loadTree, 300);
      }
      if (batch.some((e) => e.type === "usage" || e.type === "status")) {
        clearTimeout(viewTimer);
        viewTimer = window.setTimeout(reloadView, 250);
      }
      if (batch.some((e) => e.type === "approval_request" || e.type === "approval_decision")) loadApprovals();
    });
  }, [log.subscribe, loadTree, reloadView, loadApprovals, loadNetwork]);

  // Waiting times tick.
  useEffect(() => {
    const timer = window.setInterval(() => setTick((t) => t + 1), 5000);
    return () => clearInterval(timer);
  }, []);

  const marks = useMemo(() => {
    const m = new Map<string, string>();
    for (const ev of log.events) {
      if (ev.type === "file_changes_coalesced") {
        // Folded changes say which files, not how: marked as changed unless new.
        for (const path of ev.paths) if (m.get(path) !== "created") m.set(path, "modified");
        continue;
      }
      if (ev.type !== "file_change") continue;
      const before = m.get(ev.path);
      if (ev.change === "deleted") {
        if (before === "created") m.delete(ev.path);
        else m.set(ev.path, "deleted");
      } else if (ev.change === "created") m.set(ev.path, before === "deleted" ? "modified" : "created");
      else if (before !== "created") m.set(ev.path, "modified");
    }
    return m;
  }, [log.version]);

  const pending = useMemo(() => {
    const fromEvents = pendingApprovals(log.events);
    const answered = new Set<string>();
    for (const ev of log.events) if (ev.type === "approval_decision") answered.add(ev.approval_id);
    const seen = new Set(fromEvents.map((a) => a.approval_id));
    const extra = serverPending
      .filter((a) => !seen.has(a.approval_id) && !answered.has(a.approval_id))
      .map((a) => ({ approval_id: a.approval_id, tool: a.tool, input: a.input, reason: a.reason, ts: a.created_at, expires_at: null, on_timeout: null }));
    return [...extra, ...fromEvents.map((a) => ({ approval_id: a.approval_id, tool: a.tool, input: a.input, reason: a.reason, ts: a.ts, expires_at: a.expires_at ?? null, on_timeout: a.on_timeout ?? null }))];
  }, [log.version, serverPending]);
  useAttention(view.name, pending.length, log.subscribe);

  const decide = useCallback(
    async (approvalId: string, decision: "allow" | "deny", remember: boolean) => {
      setActionError(null);
      try {
        await api.decide(id, approvalId, decision, remember);
      } catch (err) {
        setActionError(err instanceof Error ? err.message : String(err));
      }
      loadApprovals();
    },
    [id, loadApprovals],
  );

  const openFile = useCallback((path: string) => {
    setOpenFiles((files) => (files.includes(path) ? files : [...files, path]));
    setActiveFile(path);
    setTab("editor");
  }, []);

  const closeFile = useCallback((path: string) => {
    setOpenFiles((files) => {
      const next = files.filter((f) => f !== path);
      setActiveFile((a) => (a === path ? (next[next.length - 1] ?? null) : a));
      return next;
    });
  }, []);

  const interrupt = useCallback(async () => {
    setActionError(null);
    try {
      await api.interrupt(id);
    } catch (err) {
      setActionError(err instanceof Error ? err.message : String(err));
    }
  }, [id]);

  // Approval shortcuts, when no text field has the focus: a allow, A always, d deny.
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      const target = e.target as HTMLElement;
      if (!pending.length || e.ctrlKey || e.metaKey || e.altKey) return;
      if (target.closest("input, textarea, select, [contenteditable], .monaco-editor, .xterm")) return;
      const first = pending[0];
      if (e.key === "a") decide(first.approval_id, "allow", false);
      else if (e.key === "A") decide(first.approval_id, "allow", true);
      else if (e.key === "d") decide(first.approval_id, "deny", false);
      else return;
      e.preventDefault();
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [pending, decide]);

  const selectTab = (t: Tab) => {
    setTab(t);
    if (t === "terminal") setTerminalOpened(true);
  };
  useEffect(() => {
    if (!narrow && (tab === "chat" || tab === "files")) setTab("editor");
  }, [narrow, tab]);

  const tabs: Tab[] = narrow
    ? ["chat", "files", "editor", "terminal", "diff", "timeline", "usage", "network", "secrets", "settings"]
    : ["editor", "terminal", "diff", "timeline", "usage", "network", "secrets", "settings"];

  const remove = async () => {
    try {
      await api.remove(id);
      navigate("/");
    } catch (err) {
      setActionError(err instanceof Error ? err.message : String(err));
      setConfirmDelete(false);
    }
  };

  const recent = useMemo(() => [...marks.keys()].filter((p) => marks.get(p) !== "deleted").slice(-8).reverse(), [marks]);
  const treeView = (
    <FileTree entries={tree.entries} truncated={tree.truncated} error={tree.error} marks={marks} active={activeFile} onOpen={openFile} />
  );
  const stream = (
    <section className="stream" aria-label="Chat and events">
      <EventPane log={log} decide={decide} openFile={openFile} />
      <Composer sessionId={id} busy={busy} onInterrupt={interrupt} />
    </section>
  );

  return (
    <div className="session-page">
      <header className="session-head">
        <a href="/" onClick={onLinkClick} className="crumb">Sessions</a>
        <span className="crumb-sep" aria-hidden="true">/</span>
        <h1 title={view.id}>{view.name}</h1>
        <StatusBadge status={status} />
        <span className="muted small hide-narrow">{view.base} · {view.model}</span>
        <span className="small" title="tokens used (input + output)">
          {tokens(usage.input_tokens + usage.output_tokens)} tokens · {usd(usage.cost_usd)}
        </span>
        <button className="linkish small net-chip" onClick={() => selectTab("network")} data-testid="network-chip"
          title={`Network: ${view.network?.allow.length ?? 0} host(s) on the list, ${view.connectors?.length ?? 0} connector(s)${view.network?.ask ? ", asks before others" : ""}. Traffic: sent, received; connections refused.`}>
          net {netUsage ? `↑${bytes(netUsage.bytes_out)} ↓${bytes(netUsage.bytes_in)}` : "…"}
          {netUsage && netUsage.denied > 0 ? <span className="bad"> · {netUsage.denied} refused</span> : null}
        </button>
        <span className="spacer" />
        <NotifyToggle />
        <button onClick={interrupt} disabled={!busy} className={busy ? "warn" : ""} aria-keyshortcuts="Escape">
          Interrupt
        </button>
        <a className="button" href={api.exportUrl(id)} download={`${id}.tar.gz`}>Export</a>
        <button className="danger ghost" onClick={() => setConfirmDelete(true)}>Delete</button>
      </header>
      {status === "sleeping" && (
        <div className="banner info" role="status">
          This session is sleeping: its sandbox stopped while idle. It starts again with the next message, command or file action.
        </div>
      )}
      {log.connection === "reconnecting" && (
        <div className="banner warn" role="status">
          Lost the live connection to this session; reconnecting{log.attempts > 1 ? ` (attempt ${log.attempts})` : ""}… Nothing will be missed.
        </div>
      )}
      {log.reconnected && log.connection === "live" && (
        <div className="banner ok" role="status">Reconnected: the stream resumed where it stopped, nothing was missed.</div>
      )}
      {log.connection === "gone" && <div className="banner err" role="alert">This session was deleted.</div>}
      {actionError && <div className="banner err" role="alert">{actionError}</div>}
      {pending.length > 0 && (
        <div className="banner approval-banner" role="alert">
          {pending[0].tool === "Network" ? (
            <>
              <strong>Network approval:</strong> connect to <code>{networkTarget(pending[0].input)}</code>?
            </>
          ) : (
            <>
              <strong>Approval needed:</strong> {pending[0].tool} <code>{oneLine(toolSummary(pending[0].tool, pending[0].input), 140)}</code>
            </>
          )}
          <span className="muted small"> waiting {ago(pending[0].ts).replace(" ago", "")}{pending.length > 1 ? ` · ${pending.length - 1} more` : ""}</span>
          <Countdown until={pending[0].expires_at} answer={pending[0].on_timeout} />
          <span className="spacer" />
          <button className="primary" onClick={() => decide(pending[0].approval_id, "allow", false)} aria-keyshortcuts="a">Allow <kbd>a</kbd></button>
          <button onClick={() => decide(pending[0].approval_id, "allow", true)} aria-keyshortcuts="Shift+A">{pending[0].tool === "Network" ? "Allow and remember" : "Always allow"} <kbd>A</kbd></button>
          <button className="danger" onClick={() => decide(pending[0].approval_id, "deny", false)} aria-keyshortcuts="d">Deny <kbd>d</kbd></button>
        </div>
      )}
      <div className={`session-body ${narrow ? "narrow" : ""}`}>
        {!narrow && (
          <aside className="rail" aria-label="Project">
            <div className="rail-title">Files</div>
            {treeView}
            <nav className="rail-links" aria-label="Session">
              <button className="linkish" onClick={() => selectTab("diff")}>Diff</button>
              <button className="linkish" onClick={() => selectTab("timeline")}>Timeline</button>
              <button className="linkish" onClick={() => selectTab("usage")}>Usage</button>
              <button className="linkish" onClick={() => selectTab("network")}>Network</button>
              <button className="linkish" onClick={() => selectTab("secrets")}>Secrets</button>
              <button className="linkish" onClick={() => selectTab("settings")}>Settings</button>
              <a href={api.exportUrl(id)} download={`${id}.tar.gz`}>Export</a>
            </nav>
          </aside>
        )}
        <section className="centre">
          <div className="tabs" role="tablist" aria-label="Views">
            {tabs.map((t) => (
              <button key={t} role="tab" aria-selected={tab === t} className={tab === t ? "active" : ""} onClick={() => selectTab(t)}>
                {TAB_LABEL[t]}
                {t === "editor" && activeFile ? `: ${activeFile.split("/").pop()}` : ""}
              </button>
            ))}
          </div>
          <div className="tab-body">
            {tab === "chat" && narrow && stream}
            {tab === "files" && narrow && treeView}
            {tab === "editor" &&
              (openFiles.length ? (
                <Suspense fallback={<div className="empty">Loading the editor…</div>}>
                  <EditorPane sessionId={id} files={openFiles} active={activeFile} onActivate={setActiveFile} onClose={closeFile} subscribe={log.subscribe} />
                </Suspense>
              ) : (
                <div className="empty">
                  <p>Choose a file in the tree to open it here.</p>
                  {recent.length > 0 && (
                    <>
                      <p className="muted small">Changed in this session:</p>
                      <ul className="plain">
                        {recent.map((p) => (
                          <li key={p}><button className="linkish mono" onClick={() => openFile(p)}>{p}</button></li>
                        ))}
                      </ul>
                    </>
                  )}
                </div>
              ))}
            {terminalOpened && (
              <div hidden={tab !== "terminal"} className="fill">
                <Suspense fallback={<div className="empty">Loading the terminal…</div>}>
                  <TerminalPane sessionId={id} visible={tab === "terminal"} />
                </Suspense>
              </div>
            )}
            {tab === "diff" && <DiffTab sessionId={id} subscribe={log.subscribe} openFile={openFile} />}
            {tab === "timeline" && (
              <TimelineTab session={view} events={log.events} busy={busy} subscribe={log.subscribe} openFile={openFile} />
            )}
            {tab === "usage" && (
              <Suspense fallback={<div className="empty">Loading…</div>}>
                <UsageTab session={view} subscribe={log.subscribe} />
              </Suspense>
            )}
            {tab === "network" && (
              <NetworkTab session={view} usage={netUsage} events={log.events} version={log.version} onSaved={(v) => { setView(v); loadNetwork(); }} />
            )}
            {tab === "secrets" && <SecretsTab sessionId={id} />}
            {tab === "settings" && <SettingsTab session={view} onSaved={setView} />}
          </div>
        </section>
        {!narrow && stream}
      </div>
      {confirmDelete && <ConfirmDelete name={view.name} onCancel={() => setConfirmDelete(false)} onConfirm={remove} />}
    </div>
  );
}

function networkTarget(input: Record<string, unknown>): string {
  return hostPort(String(input.host ?? "?"), typeof input.port === "number" ? input.port : null);
}

function ConfirmDelete(props: { name: string; onCancel: () => void; onConfirm: () => Promise<void> }) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    const d = dialog.current!;
    if (!d.open) d.showModal();
    return () => d.close();
  }, []);
  return (
    <dialog ref={dialog} className="dialog" aria-labelledby="delete-title" onCancel={(e) => { e.preventDefault(); props.onCancel(); }}>
      <h2 id="delete-title">Delete “{props.name}”?</h2>
      <p>Its sandbox, its files and its event log are removed for good. Export it first to keep a copy.</p>
      <div className="actions">
        <button className="ghost" onClick={props.onCancel} autoFocus disabled={busy}>Cancel</button>
        <button className="danger" disabled={busy} onClick={async () => { setBusy(true); await props.onConfirm(); setBusy(false); }}>
          {busy ? "Deleting…" : "Delete session"}
        </button>
      </div>
    </dialog>
  );
}
