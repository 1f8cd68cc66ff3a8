// Unified diffs, read like a code review: one section per file, old and new line numbers,
// additions and deletions coloured. Parses both `git diff` output and single-file diffs.
import { memo, useState } from "react";

export interface DiffLine {
  kind: "add" | "del" | "ctx" | "hunk" | "meta";
  text: string;
  old?: number;
  new?: number;
}

export interface FileDiff {
  path: string;
  lines: DiffLine[];
  added: number;
  removed: number;
  binary: boolean;
}

const HUNK = /^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@(.*)$/;

function pathOf(header: string): string {
  const m = /^diff --git a\/(.+?) b\/(.+)$/.exec(header);
  return m ? m[2] : header;
}

export function parseDiff(text: string, fallbackPath = ""): FileDiff[] {
  const files: FileDiff[] = [];
  let cur: FileDiff | null = null;
  let oldNo = 0;
  let newNo = 0;
  const start = (path: string) => {
    cur = { path, lines: [], added: 0, removed: 0, binary: false };
    files.push(cur);
  };
  for (const line of text.replace(/\n$/, "").split("\n")) {
    if (line.startsWith("diff --git ")) {
      start(pathOf(line));
      continue;
    }
    if (!cur) start(fallbackPath);
    const f = cur!;
    if (line.startsWith("--- ") || line.startsWith("+++ ")) {
      const p = line.slice(4).replace(/^[ab]\//, "").replace(/\t.*$/, "");
      if (line.startsWith("+++ ") && p !== "/dev/null" && !f.path) f.path = p;
      if (line.startsWith("--- ") && p !== "/dev/null" && !f.path) f.path = p;
      continue;
    }
    const h = HUNK.exec(line);
    if (h) {
      oldNo = Number(h[1]);
      newNo = Number(h[2]);
      f.lines.push({ kind: "hunk", text: line });
      continue;
    }
    if (/^(index |new file|deleted file|similarity|rename |old mode|new mode)/.test(line)) {
      continue;
    }
    if (line.startsWith("Binary files")) {
      f.binary = true;
      f.lines.push({ kind: "meta", text: line });
    } else if (line.startsWith("+")) {
      f.added++;
      f.lines.push({ kind: "add", text: line.slice(1), new: newNo++ });
    } else if (line.startsWith("-")) {
      f.removed++;
      f.lines.push({ kind: "del", text: line.slice(1), old: oldNo++ });
    } else if (line.startsWith("\\")) {
      f.lines.push({ kind: "meta", text: line });
    } else {
      f.lines.push({ kind: "ctx", text: line.slice(1), old: oldNo++, new: newNo++ });
    }
  }
  return files.filter((f) => f.lines.length || f.binary || f.path);
}

/** A diff of a whole new file (Write) or of one replacement (Edit), built on the client. */
export function syntheticDiff(path: string, before: string, after: string): FileDiff {
  const lines: DiffLine[] = [];
  const a = before ? before.replace(/\n$/, "").split("\n") : [];
  const b = after ? after.replace(/\n$/, "").split("\n") : [];
  a.forEach((t, i) => lines.push({ kind: "del", text: t, old: i + 1 }));
  b.forEach((t, i) => lines.push({ kind: "add", text: t, new: i + 1 }));
  return { path, lines, added: b.length, removed: a.length, binary: false };
}

const MAX_LINES = 2000;

export const DiffView = memo(function DiffView({
  file,
  showHeader = true,
  collapsible = false,
  onOpen,
}: {
  file: FileDiff;
  showHeader?: boolean;
  collapsible?: boolean;
  onOpen?: (path: string) => void;
}) {
  const [open, setOpen] = useState(true);
  const [all, setAll] = useState(false);
  const shown = all ? file.lines : file.lines.slice(0, MAX_LINES);
  return (
    <section className="diff-file">
      {showHeader && (
        <header className="diff-head">
          {collapsible && (
            <button
              className="fold"
              aria-expanded={open}
              aria-label={open ? "Collapse file" : "Expand file"}
              onClick={() => setOpen(!open)}
            >
              {open ? "▾" : "▸"}
            </button>
          )}
          {onOpen ? (
            <button className="linkish mono" onClick={() => onOpen(file.path)}>
              {file.path}
            </button>
          ) : (
            <span className="mono">{file.path}</span>
          )}
          <span className="diff-stat">
            <span className="add">+{file.added}</span> <span className="del">−{file.removed}</span>
          </span>
        </header>
      )}
      {open && (
        <div className="diff-body" role="table" aria-label={`Diff of ${file.path}`}>
          {shown.map((l, i) =>
            l.kind === "hunk" || l.kind === "meta" ? (
              <div key={i} className={`dl ${l.kind}`} role="row">
                <span className="txt">{l.text}</span>
              </div>
            ) : (
              <div key={i} className={`dl ${l.kind}`} role="row">
                <span className="ln">{l.old ?? ""}</span>
                <span className="ln">{l.new ?? ""}</span>
                <span className="sign">{l.kind === "add" ? "+" : l.kind === "del" ? "−" : " "}</span>
                <span className="txt">{l.text}</span>
              </div>
            ),
          )}
          {!all && file.lines.length > MAX_LINES && (
            <button className="linkish more" onClick={() => setAll(true)}>
              Show {file.lines.length - MAX_LINES} more lines
            </button>
          )}
        </div>
      )}
    </section>
  );
});
