import { useCallback, useEffect, useMemo, useState } from "react";
import { sessions as api } from "../api";
import { DiffView, parseDiff } from "../lib/diff";
import type { WireEvent } from "../types";

/** The working tree against HEAD, per file; refreshed as files change. */
export function DiffTab(props: {
  sessionId: string;
  subscribe: (fn: (batch: WireEvent[]) => void) => () => void;
  openFile: (path: string) => void;
}) {
  const [diff, setDiff] = useState<{ base: string; diff: string } | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [loading, setLoading] = useState(false);

  const load = useCallback(async () => {
    setLoading(true);
    try {
      setDiff(await api.diff(props.sessionId));
      setError(null);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setLoading(false);
    }
  }, [props.sessionId]);

  useEffect(() => {
    load();
    let timer = 0;
    const off = props.subscribe((batch) => {
      if (batch.some((e) => e.type === "file_change" || e.type === "file_changes_coalesced")) {
        clearTimeout(timer);
        timer = window.setTimeout(load, 600);
      }
    });
    return () => {
      off();
      clearTimeout(timer);
    };
  }, [load, props.subscribe]);

  const files = useMemo(() => (diff?.diff ? parseDiff(diff.diff) : []), [diff]);
  const added = files.reduce((n, f) => n + f.added, 0);
  const removed = files.reduce((n, f) => n + f.removed, 0);

  return (
    <div className="tab-page">
      <div className="tab-head">
        <h2>Changes against {diff?.base ?? "HEAD"}</h2>
        {files.length > 0 && (
          <span className="small">
            {files.length} file{files.length === 1 ? "" : "s"} · <span className="add">+{added}</span>{" "}
            <span className="del">−{removed}</span>
          </span>
        )}
        <span className="spacer" />
        <button onClick={load} disabled={loading}>
          {loading ? "Refreshing…" : "Refresh"}
        </button>
      </div>
      {error && <p className="error" role="alert">{error}</p>}
      {diff && files.length === 0 && <p className="muted">No changes since the last commit.</p>}
      {files.map((f) => (
        <DiffView key={f.path} file={f} collapsible onOpen={props.openFile} />
      ))}
    </div>
  );
}
