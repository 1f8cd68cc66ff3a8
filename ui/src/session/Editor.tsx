// The editor (lazy chunk): Monaco on the session's files, one tab per open file. It
// follows changes made by the agent (or a command) while the buffer has no unsaved
// edits, and when both sides changed it shows the conflict instead of overwriting either.
import { DiffEditor, Editor, type OnMount } from "@monaco-editor/react";
import { useCallback, useEffect, useRef, useState } from "react";
import { ApiError, sessions as api } from "../api";
import type { WireEvent } from "../types";
import { monaco } from "./monaco";

type IEditor = Parameters<OnMount>[0];
type Model = ReturnType<typeof monaco.editor.createModel>;

interface Conflict {
  kind: "changed" | "stale" | "deleted";
  theirs: string | null;
  theirsEtag: string | null;
}

interface Doc {
  path: string;
  etag: string | null;
  baseVersion: number;
  dirty: boolean;
  loading: boolean;
  saving: boolean;
  readOnly: string | null; // why it cannot be edited (binary, too large)
  error: string | null;
  conflict: Conflict | null;
  compare: boolean;
  savedAt: number | null;
}

const uriOf = (sessionId: string, path: string) =>
  monaco.Uri.from({ scheme: "sophon", authority: sessionId, path: "/" + path });

/** Replaces only the part that differs, so the cursor, the selection and the scroll
 * position stay where they were (and undo still works). */
function applyText(model: Model, text: string): void {
  const old = model.getValue();
  if (old === text) return;
  let start = 0;
  const max = Math.min(old.length, text.length);
  while (start < max && old.charCodeAt(start) === text.charCodeAt(start)) start++;
  let end = 0;
  while (
    end < max - start &&
    old.charCodeAt(old.length - 1 - end) === text.charCodeAt(text.length - 1 - end)
  ) {
    end++;
  }
  const from = model.getPositionAt(start);
  const to = model.getPositionAt(old.length - end);
  model.pushEditOperations(
    [],
    [{ range: monaco.Range.fromPositions(from, to), text: text.slice(start, text.length - end) }],
    () => null,
  );
}

export default function EditorPane(props: {
  sessionId: string;
  files: string[];
  active: string | null;
  onActivate: (path: string) => void;
  onClose: (path: string) => void;
  subscribe: (fn: (batch: WireEvent[]) => void) => () => void;
}) {
  const { sessionId, active } = props;
  const docs = useRef(new Map<string, Doc>());
  const [, setVersion] = useState(0);
  const editorRef = useRef<IEditor | null>(null);
  const activeRef = useRef(active);
  activeRef.current = active;
  const bump = useCallback(() => setVersion((v) => v + 1), []);

  const patch = useCallback(
    (path: string, change: Partial<Doc>) => {
      const doc = docs.current.get(path);
      if (!doc) return;
      Object.assign(doc, change);
      bump();
    },
    [bump],
  );

  const modelOf = useCallback(
    (path: string) => monaco.editor.getModel(uriOf(sessionId, path)),
    [sessionId],
  );

  const fetchFile = useCallback(
    async (path: string) => {
      try {
        return await api.readFile(sessionId, path);
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) return null;
        throw err;
      }
    },
    [sessionId],
  );

  const load = useCallback(
    async (path: string) => {
      const doc: Doc = {
        path, etag: null, baseVersion: 0, dirty: false, loading: true, saving: false,
        readOnly: null, error: null, conflict: null, compare: false, savedAt: null,
      };
      docs.current.set(path, doc);
      bump();
      try {
        const file = await fetchFile(path);
        if (!file) return patch(path, { loading: false, error: "This file does not exist." });
        let readOnly: string | null = null;
        if (file.binary || file.content === null) readOnly = "A binary file: it cannot be edited here.";
        else if (file.truncated) readOnly = "Too large to edit here: showing the beginning only.";
        const model =
          modelOf(path) ?? monaco.editor.createModel(file.content ?? "", undefined, uriOf(sessionId, path));
        applyText(model, file.content ?? "");
        model.onDidChangeContent(() => {
          const d = docs.current.get(path);
          if (!d) return;
          const dirty = model.getAlternativeVersionId() !== d.baseVersion;
          if (dirty !== d.dirty) patch(path, { dirty });
        });
        patch(path, { loading: false, etag: file.etag, readOnly, baseVersion: model.getAlternativeVersionId() });
      } catch (err) {
        patch(path, { loading: false, error: err instanceof Error ? err.message : String(err) });
      }
    },
    [bump, fetchFile, modelOf, patch, sessionId],
  );

  // Tabs opened from outside (the tree, a file_change row) load here; closed ones go.
  useEffect(() => {
    for (const path of props.files) if (!docs.current.has(path)) load(path);
    for (const path of [...docs.current.keys()]) {
      if (!props.files.includes(path)) {
        docs.current.delete(path);
        modelOf(path)?.dispose();
      }
    }
  }, [props.files, load, modelOf]);

  useEffect(
    () => () => {
      for (const path of docs.current.keys()) modelOf(path)?.dispose();
    },
    [modelOf],
  );

  /** The file changed on the server (agent, command, another tab): follow or flag it. */
  const refresh = useCallback(
    async (path: string) => {
      const doc = docs.current.get(path);
      const model = modelOf(path);
      if (!doc || !model || doc.loading || doc.saving) return;
      const file = await fetchFile(path).catch(() => undefined);
      if (file === undefined) return;
      if (file === null) {
        patch(path, { conflict: { kind: "deleted", theirs: null, theirsEtag: null } });
        return;
      }
      if (file.etag === doc.etag || file.content === null) return;
      if (!doc.dirty && !doc.conflict) {
        applyText(model, file.content);
        patch(path, { etag: file.etag, baseVersion: model.getAlternativeVersionId(), dirty: false });
      } else if (file.content !== model.getValue()) {
        patch(path, { conflict: { kind: "changed", theirs: file.content, theirsEtag: file.etag } });
      } else {
        patch(path, { etag: file.etag, baseVersion: model.getAlternativeVersionId(), dirty: false, conflict: null });
      }
    },
    [fetchFile, modelOf, patch],
  );

  useEffect(
    () =>
      props.subscribe((batch) => {
        const paths = new Set<string>();
        for (const ev of batch) {
          if (ev.type === "file_change") paths.add(ev.path);
          else if (ev.type === "file_changes_coalesced") ev.paths.forEach((p) => paths.add(p));
        }
        for (const path of paths) if (docs.current.has(path)) refresh(path);
      }),
    [props.subscribe, refresh],
  );

  const save = useCallback(
    async (path: string | null) => {
      const doc = path ? docs.current.get(path) : undefined;
      const model = path ? modelOf(path) : null;
      if (!path || !doc || !model || doc.readOnly || doc.saving || doc.loading) return;
      if (doc.conflict) return; // resolve it first: the banner says how
      const version = model.getAlternativeVersionId();
      patch(path, { saving: true, error: null });
      try {
        const got = await api.writeFile(sessionId, path, model.getValue(), doc.etag);
        patch(path, {
          saving: false, etag: got.etag, baseVersion: version, savedAt: Date.now(),
          dirty: model.getAlternativeVersionId() !== version,
        });
      } catch (err) {
        if (err instanceof ApiError && err.status === 412) {
          const file = await fetchFile(path).catch(() => null);
          patch(path, {
            saving: false,
            conflict: { kind: "stale", theirs: file?.content ?? null, theirsEtag: file?.etag ?? null },
          });
        } else {
          patch(path, { saving: false, error: err instanceof Error ? err.message : String(err) });
        }
      }
    },
    [fetchFile, modelOf, patch, sessionId],
  );

  const keepMine = (doc: Doc) => {
    // Save the buffer over the server's version, knowingly: with the ETag of theirs.
    patch(doc.path, { etag: doc.conflict?.theirsEtag ?? null, conflict: null, compare: false });
    save(doc.path);
  };

  const takeTheirs = (doc: Doc) => {
    const model = modelOf(doc.path);
    if (!model || !doc.conflict) return;
    if (doc.conflict.kind === "deleted") return props.onClose(doc.path);
    applyText(model, doc.conflict.theirs ?? "");
    patch(doc.path, {
      etag: doc.conflict.theirsEtag, baseVersion: model.getAlternativeVersionId(),
      dirty: false, conflict: null, compare: false,
    });
  };

  const onMount: OnMount = (editor) => {
    editorRef.current = editor;
    editor.addCommand(monaco.KeyMod.CtrlCmd | monaco.KeyCode.KeyS, () => save(activeRef.current));
    editor.focus();
  };

  const doc = active ? docs.current.get(active) : undefined;
  const model = active ? modelOf(active) : null;
  const close = (path: string) => {
    const d = docs.current.get(path);
    if (d?.dirty && !window.confirm(`${path} has unsaved changes. Close it anyway?`)) return;
    props.onClose(path);
  };

  return (
    <div
      className="editor-pane"
      onKeyDown={(e) => {
        if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "s") {
          e.preventDefault();
          save(activeRef.current);
        }
      }}
    >
      <div className="editor-tabs" role="tablist" aria-label="Open files">
        {props.files.map((path) => {
          const d = docs.current.get(path);
          return (
            <div key={path} className={`editor-tab ${path === active ? "active" : ""}`}>
              <button role="tab" aria-selected={path === active} onClick={() => props.onActivate(path)} title={path}>
                {path.split("/").pop()}
                {d?.dirty && <span className="dirty" aria-label="unsaved changes"> ●</span>}
              </button>
              <button className="close" aria-label={`Close ${path}`} onClick={() => close(path)}>
                ×
              </button>
            </div>
          );
        })}
      </div>
      {doc && (
        <div className="editor-status">
          <span className="mono small">{doc.path}</span>
          <span className="small muted" data-testid="editor-state">
            {doc.loading ? "loading…" : doc.saving ? "saving…" : doc.dirty ? "unsaved changes" : doc.savedAt ? "saved" : "up to date"}
          </span>
          <span className="spacer" />
          {!doc.readOnly && (
            <button onClick={() => save(doc.path)} disabled={!doc.dirty || doc.saving || !!doc.conflict} aria-keyshortcuts="Control+S">
              Save
            </button>
          )}
        </div>
      )}
      {doc?.error && <div className="banner err" role="alert">{doc.error}</div>}
      {doc?.readOnly && <div className="banner info">{doc.readOnly}</div>}
      {doc?.conflict && (
        <div className="banner conflict" role="alert" data-testid="conflict">
          <span>
            <strong>Conflict: </strong>
            {doc.conflict.kind === "stale"
              ? `not saved: ${doc.path} was changed on the server after you opened it. `
              : doc.conflict.kind === "deleted"
                ? `${doc.path} was deleted on the server while you had it open. `
                : `${doc.path} was changed on the server (by Claude or a command) while you have unsaved edits. `}
            Nothing was overwritten.
          </span>
          <span className="conflict-actions">
            {doc.conflict.theirs !== null && (
              <button onClick={() => patch(doc.path, { compare: !doc.compare })}>{doc.compare ? "Back to editing" : "Compare"}</button>
            )}
            <button onClick={() => keepMine(doc)} title="Save your version over the server's">
              {doc.conflict.kind === "deleted" ? "Save mine again" : "Keep mine (save it)"}
            </button>
            <button onClick={() => takeTheirs(doc)}>{doc.conflict.kind === "deleted" ? "Close the file" : "Take theirs"}</button>
          </span>
        </div>
      )}
      <div className="editor-host">
        {!active && <div className="empty">Choose a file in the tree.</div>}
        {doc && model && doc.compare && doc.conflict?.theirs != null ? (
          <DiffEditor
            theme="vs-dark"
            original={doc.conflict.theirs}
            modified={model.getValue()}
            originalModelPath={`sophon-theirs:/${sessionId}/${doc.path}`}
            modifiedModelPath={`sophon-mine:/${sessionId}/${doc.path}`}
            options={{ readOnly: true, renderSideBySide: true, automaticLayout: true }}
          />
        ) : (
          doc && model && (
            <Editor
              theme="vs-dark"
              path={uriOf(sessionId, doc.path).toString()}
              options={{
                readOnly: !!doc.readOnly,
                automaticLayout: true,
                minimap: { enabled: false },
                fontSize: 13,
                scrollBeyondLastLine: false,
                tabSize: 4,
              }}
              onMount={onMount}
            />
          )
        )}
        {doc?.loading && <div className="empty">Loading {doc.path}…</div>}
      </div>
    </div>
  );
}
