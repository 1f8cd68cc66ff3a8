// The session's turns and checkpoints on a timeline: go back to any checkpoint (files,
// conversation or both; undoable), fork a new session from one, and review what a turn
// changed hunk by hunk, with comments on lines that go to the agent.
import { useCallback, useEffect, useMemo, useState } from "react";
import { sessions as api } from "../api";
import { clock, oneLine } from "../lib/format";
import { navigate } from "../lib/router";
import type { CheckpointView, SessionView, WireEvent } from "../types";
import { CHECKPOINT_LABEL } from "./EventItem";
import { ReviewPanel } from "./ReviewPanel";

const SIGN = { added: "+", modified: "~", deleted: "−" } as const;
const RELOAD_ON = new Set(["checkpoint", "rewind", "review"]);

function filesOf(cp: CheckpointView): string {
  if (!cp.files_changed) return "no file changed";
  const shown = cp.files.slice(0, 4).map((f) => `${SIGN[f.change]}${f.path}`).join(" ");
  return cp.files_changed > 4 ? `${shown} … (${cp.files_changed} files)` : shown;
}

export function TimelineTab(props: {
  session: SessionView;
  events: WireEvent[];
  busy: boolean;
  subscribe: (fn: (batch: WireEvent[]) => void) => () => void;
  openFile: (path: string) => void;
}) {
  const { session } = props;
  const [cps, setCps] = useState<CheckpointView[] | null>(null);
  const [selected, setSelected] = useState<string | null>(null);
  const [reviewing, setReviewing] = useState<number | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [notice, setNotice] = useState<{ text: string; undo?: string } | null>(null);
  const [working, setWorking] = useState(false);
  const [forkName, setForkName] = useState<string | null>(null);

  const load = useCallback(async () => {
    try {
      setCps((await api.checkpoints(session.id)).checkpoints);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  }, [session.id]);

  useEffect(() => {
    load();
    let timer = 0;
    const off = props.subscribe((batch) => {
      if (batch.some((e) => RELOAD_ON.has(e.type))) {
        clearTimeout(timer);
        timer = window.setTimeout(load, 300);
      }
    });
    return () => {
      off();
      clearTimeout(timer);
    };
  }, [load, props.subscribe]);

  // The user's message of each turn, where the loaded events have it.
  const asked = useMemo(() => {
    const out = new Map<number, string>();
    let n = 0;
    for (const ev of props.events) if (ev.type === "user") out.set(++n, ev.content);
    return out;
  }, [props.events]);

  const turns = useMemo(() => {
    const out: { turn: number; cps: CheckpointView[] }[] = [];
    for (const cp of cps ?? []) {
      const last = out[out.length - 1];
      if (last && last.turn === cp.turn) last.cps.push(cp);
      else out.push({ turn: cp.turn, cps: [cp] });
    }
    return out;
  }, [cps]);
  const chosen = cps?.find((c) => c.id === selected) ?? null;

  const rewind = async (cp: string, files: boolean, conversation: boolean, undoing = false) => {
    setWorking(true);
    setError(null);
    try {
      const ev = await api.rewind(session.id, cp, files, conversation);
      const what = files && conversation ? "Files and conversation" : files ? "Files" : "Conversation";
      setNotice(undoing ? { text: "Undone." } : {
        text: `${what} restored to ${cp}.`,
        undo: ev.type === "rewind" ? ev.undo : undefined,
      });
      await load();
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setWorking(false);
    }
  };

  const fork = async () => {
    if (!chosen) return;
    setWorking(true);
    setError(null);
    try {
      const created = await api.fork(session.id, chosen.id, forkName?.trim() || undefined);
      navigate(`/sessions/${created.id}`);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
      setWorking(false);
    }
  };

  const blocked = props.busy || working;
  return (
    <div className="tab-page timeline-tab">
      <div className="tab-head">
        <h2>Timeline</h2>
        <span className="small muted">{cps ? `${cps.length} checkpoint${cps.length === 1 ? "" : "s"}` : "loading…"}</span>
      </div>
      {error && <p className="error" role="alert">{error}</p>}
      {notice && (
        <p className="ok small" role="status">
          {notice.text}{" "}
          {notice.undo && (
            <button className="linkish" disabled={blocked} onClick={() => rewind(notice.undo!, true, true, true)}>
              Undo
            </button>
          )}
        </p>
      )}
      {chosen && (
        <div className="checkpoint-actions" role="group" aria-label="Checkpoint actions">
          <span className="small">
            <code>{chosen.id}</code> · turn {chosen.turn} · {CHECKPOINT_LABEL[chosen.reason]}
          </span>
          <button disabled={blocked} onClick={() => rewind(chosen.id, true, false)}>Restore files</button>
          <button disabled={blocked} onClick={() => rewind(chosen.id, false, true)}>Restore conversation</button>
          <button className="primary" disabled={blocked} onClick={() => rewind(chosen.id, true, true)}>Restore both</button>
          {forkName === null ? (
            <button disabled={working} onClick={() => setForkName(`${session.name} (fork)`)}>Fork…</button>
          ) : (
            <span className="fork-form">
              <input aria-label="Fork name" value={forkName} maxLength={200} onChange={(e) => setForkName(e.target.value)} />
              <button className="primary" disabled={working} onClick={fork}>{working ? "Forking…" : "Create fork"}</button>
              <button className="ghost" onClick={() => setForkName(null)}>Cancel</button>
            </span>
          )}
          {props.busy && <span className="small muted">A turn is running: restore once it ends.</span>}
        </div>
      )}
      {cps && cps.length === 0 && (
        <p className="muted">No checkpoints yet: one is kept after every step that changes files.</p>
      )}
      <ol className="timeline" aria-label="Turns and checkpoints">
        {turns.map(({ turn, cps: list }) => (
          <li key={`${turn}-${list[0].id}`} className="timeline-turn">
            <div className="turn-head">
              <strong>{turn === 0 ? "Before the first turn" : `Turn ${turn}`}</strong>
              {asked.get(turn) && <span className="muted small"> · {oneLine(asked.get(turn)!, 90)}</span>}
              <span className="spacer" />
              {turn > 0 && (
                <button className="linkish small" aria-expanded={reviewing === turn} onClick={() => setReviewing(reviewing === turn ? null : turn)}>
                  {reviewing === turn ? "Close review" : "Review changes"}
                </button>
              )}
            </div>
            <ul className="checkpoints">
              {list.map((cp) => (
                <li key={cp.id}>
                  <button
                    className={`checkpoint ${selected === cp.id ? "selected" : ""}`}
                    aria-pressed={selected === cp.id}
                    onClick={() => { setSelected(cp.id); setForkName(null); }}
                  >
                    <span className="when mono small">{clock(cp.ts)}</span>
                    <span className="why">{CHECKPOINT_LABEL[cp.reason]}{cp.step ? ` ${cp.step}` : ""}</span>
                    <span className="what mono small">{filesOf(cp)}</span>
                  </button>
                </li>
              ))}
            </ul>
            {reviewing === turn && (
              <ReviewPanel sessionId={session.id} turn={turn} busy={props.busy} openFile={props.openFile} onDone={(text) => { setNotice({ text }); setReviewing(null); }} />
            )}
          </li>
        ))}
      </ol>
    </div>
  );
}
