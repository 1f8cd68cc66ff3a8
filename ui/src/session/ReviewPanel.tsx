// One turn's changes, reviewed: reject any hunk (it is reverted in the workspace and the
// agent is told with the next message), comment on any line (the comments go to the
// agent at once, as one message).
import { useEffect, useMemo, useState } from "react";
import { sessions as api } from "../api";
import { parseDiff, type FileDiff } from "../lib/diff";

type Key = string; // path + "\u0000" + hunk index, or path + "\u0001" + line

function hunksOf(file: FileDiff) {
  const out: { index: number; lines: FileDiff["lines"] }[] = [];
  for (const line of file.lines) {
    if (line.kind === "hunk") out.push({ index: out.length, lines: [line] });
    else if (out.length) out[out.length - 1].lines.push(line);
  }
  return out;
}

export function ReviewPanel(props: {
  sessionId: string;
  turn: number;
  busy: boolean;
  openFile: (path: string) => void;
  onDone: (summary: string) => void;
}) {
  const [diff, setDiff] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [rejected, setRejected] = useState<Set<Key>>(new Set());
  const [comments, setComments] = useState<Map<Key, { path: string; line: number; text: string }>>(new Map());
  const [editing, setEditing] = useState<Key | null>(null);
  const [sending, setSending] = useState(false);

  useEffect(() => {
    api.turnDiff(props.sessionId, props.turn).then(
      (d) => setDiff(d.diff),
      (err) => setError(err instanceof Error ? err.message : String(err)),
    );
  }, [props.sessionId, props.turn]);
  const files = useMemo(() => (diff ? parseDiff(diff) : []), [diff]);

  const toggle = (key: Key) => {
    const next = new Set(rejected);
    if (next.has(key)) next.delete(key);
    else next.add(key);
    setRejected(next);
  };
  const setComment = (key: Key, path: string, line: number, text: string) => {
    const next = new Map(comments);
    if (text) next.set(key, { path, line, text });
    else next.delete(key);
    setComments(next);
  };

  const submit = async () => {
    setSending(true);
    setError(null);
    const reject = [...rejected].map((k) => {
      const [path, hunk] = k.split("\u0000");
      return { path, hunk: Number(hunk) };
    });
    const said = [...comments.values()].filter((c) => c.text.trim());
    try {
      await api.review(props.sessionId, props.turn, { reject, comments: said });
      const parts = [];
      if (reject.length) parts.push(`${reject.length} hunk${reject.length === 1 ? "" : "s"} reverted`);
      if (said.length) parts.push(`${said.length} comment${said.length === 1 ? "" : "s"} sent to the agent`);
      else parts.push("the agent hears of it with your next message");
      props.onDone(`Review of turn ${props.turn}: ${parts.join("; ")}.`);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setSending(false);
    }
  };

  if (error && diff === null) return <p className="error" role="alert">{error}</p>;
  if (diff === null) return <p className="muted small">Loading the turn's changes…</p>;
  if (!files.length) return <p className="muted small">This turn changed no file.</p>;
  const count = rejected.size + comments.size;
  return (
    <section className="review" aria-label={`Review of turn ${props.turn}`}>
      <p className="small muted">
        Reject a hunk to take it back out of the workspace; click a line number to comment on it.
      </p>
      {files.map((f) => (
        <section key={f.path} className="diff-file">
          <header className="diff-head">
            <button className="linkish mono" onClick={() => props.openFile(f.path)}>{f.path}</button>
            <span className="diff-stat"><span className="add">+{f.added}</span> <span className="del">−{f.removed}</span></span>
          </header>
          <div className="diff-body" role="table" aria-label={`Changes to ${f.path}`}>
            {hunksOf(f).map((h) => {
              const hk = `${f.path}\u0000${h.index}`;
              const out = rejected.has(hk);
              return (
                <div key={hk} className={`hunk ${out ? "rejected" : ""}`}>
                  {h.lines.map((l, i) =>
                    l.kind === "hunk" ? (
                      <div key={i} className="dl hunk" role="row">
                        <span className="txt">{l.text}</span>
                        <label className="reject small">
                          <input type="checkbox" checked={out} onChange={() => toggle(hk)} aria-label={`Reject hunk ${h.index + 1} of ${f.path}`} />
                          Reject
                        </label>
                      </div>
                    ) : l.kind === "meta" ? (
                      <div key={i} className="dl meta" role="row"><span className="txt">{l.text}</span></div>
                    ) : (
                      <LineRow
                        key={i}
                        line={l}
                        comment={l.new ? comments.get(`${f.path}\u0001${l.new}`)?.text ?? "" : ""}
                        editing={l.new !== undefined && editing === `${f.path}\u0001${l.new}`}
                        onEdit={() => l.new !== undefined && setEditing(`${f.path}\u0001${l.new}`)}
                        onComment={(text) => { setComment(`${f.path}\u0001${l.new}`, f.path, l.new!, text); setEditing(null); }}
                      />
                    ),
                  )}
                </div>
              );
            })}
          </div>
        </section>
      ))}
      {error && <p className="error" role="alert">{error}</p>}
      <div className="actions left">
        <button className="primary" disabled={!count || sending || props.busy} onClick={submit}>
          {sending ? "Sending…" : `Submit review${count ? ` (${count})` : ""}`}
        </button>
        {props.busy && <span className="small muted">A turn is running: submit once it ends.</span>}
      </div>
    </section>
  );
}

function LineRow(props: {
  line: FileDiff["lines"][number];
  comment: string;
  editing: boolean;
  onEdit: () => void;
  onComment: (text: string) => void;
}) {
  const { line: l } = props;
  const [text, setText] = useState(props.comment);
  return (
    <>
      <div className={`dl ${l.kind}`} role="row">
        <span className="ln">{l.old ?? ""}</span>
        {l.new !== undefined ? (
          <button className="ln linkish" title="Comment on this line" aria-label={`Comment on line ${l.new}`} onClick={props.onEdit}>{l.new}</button>
        ) : (
          <span className="ln" />
        )}
        <span className="sign">{l.kind === "add" ? "+" : l.kind === "del" ? "−" : " "}</span>
        <span className="txt">{l.text}</span>
      </div>
      {props.editing ? (
        <div className="line-comment">
          <textarea rows={2} autoFocus aria-label={`Comment on line ${l.new}`} value={text} onChange={(e) => setText(e.target.value)} />
          <button onClick={() => props.onComment(text.trim())}>{text.trim() ? "Keep comment" : "Remove"}</button>
        </div>
      ) : props.comment ? (
        <div className="line-comment shown small" onClick={props.onEdit}>Comment: {props.comment}</div>
      ) : null}
    </>
  );
}
