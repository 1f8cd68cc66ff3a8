// The project's files, with change marks from the file_change events loaded in the page.
import { memo, useMemo, useState } from "react";
import type { TreeEntry } from "../api";

interface Node {
  name: string;
  path: string;
  dir: boolean;
  children: Node[];
}

function build(entries: TreeEntry[]): Node {
  const root: Node = { name: "", path: "", dir: true, children: [] };
  const dirs = new Map<string, Node>([["", root]]);
  const dirOf = (path: string): Node => {
    const found = dirs.get(path);
    if (found) return found;
    const cut = path.lastIndexOf("/");
    const parent = dirOf(cut < 0 ? "" : path.slice(0, cut));
    const node: Node = { name: path.slice(cut + 1), path, dir: true, children: [] };
    parent.children.push(node);
    dirs.set(path, node);
    return node;
  };
  for (const e of entries) {
    if (e.type === "dir") {
      dirOf(e.path);
      continue;
    }
    const cut = e.path.lastIndexOf("/");
    dirOf(cut < 0 ? "" : e.path.slice(0, cut)).children.push({
      name: e.path.slice(cut + 1),
      path: e.path,
      dir: false,
      children: [],
    });
  }
  const sort = (n: Node) => {
    n.children.sort((a, b) => (a.dir === b.dir ? a.name.localeCompare(b.name) : a.dir ? -1 : 1));
    n.children.forEach(sort);
  };
  sort(root);
  return root;
}

const MARK: Record<string, string> = { created: "A", modified: "M", deleted: "D" };

export const FileTree = memo(function FileTree(props: {
  entries: TreeEntry[] | null;
  error: string | null;
  truncated: boolean;
  marks: Map<string, string>;
  active: string | null;
  onOpen: (path: string) => void;
}) {
  const root = useMemo(() => build(props.entries ?? []), [props.entries]);
  const [closed, setClosed] = useState<Set<string>>(new Set());
  const toggle = (path: string) => {
    const next = new Set(closed);
    if (next.has(path)) next.delete(path);
    else next.add(path);
    setClosed(next);
  };
  const deleted = [...props.marks].filter(([, c]) => c === "deleted").map(([p]) => p);

  const render = (n: Node, depth: number) =>
    n.children.map((c) => {
      const mark = props.marks.get(c.path);
      return (
        <li key={c.path} role="treeitem" aria-expanded={c.dir ? !closed.has(c.path) : undefined} aria-selected={props.active === c.path}>
          <button
            className={`tree-item ${props.active === c.path ? "active" : ""} ${mark ? `mark-${mark}` : ""}`}
            style={{ paddingLeft: 8 + depth * 14 }}
            onClick={() => (c.dir ? toggle(c.path) : props.onOpen(c.path))}
            data-path={c.path}
            title={c.path}
          >
            <span className="icon" aria-hidden="true">{c.dir ? (closed.has(c.path) ? "▸" : "▾") : ""}</span>
            <span className="name">{c.name}</span>
            {mark && <span className={`mark ${mark}`} title={mark}>{MARK[mark]}</span>}
          </button>
          {c.dir && !closed.has(c.path) && c.children.length > 0 && (
            <ul role="group">{render(c, depth + 1)}</ul>
          )}
        </li>
      );
    });

  return (
    <nav className="tree" aria-label="Project files">
      {props.error && <p className="error small">{props.error}</p>}
      {props.entries === null && !props.error && <p className="muted small pad">Loading files…</p>}
      {props.entries !== null && props.entries.length === 0 && <p className="muted small pad">No files yet.</p>}
      <ul role="tree" aria-label="Files">{render(root, 0)}</ul>
      {deleted.length > 0 && (
        <div className="deleted small">
          {deleted.map((p) => (
            <div key={p} className="mono muted">
              <span className="mark deleted">D</span> {p}
            </div>
          ))}
        </div>
      )}
      {props.truncated && <p className="muted small pad">(the list is cut: too many files)</p>}
    </nav>
  );
});
