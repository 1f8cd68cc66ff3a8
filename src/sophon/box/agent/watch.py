"""File change detection for boxd: who changed a file does not matter (the agent, an
exec, an editor save, a background process); every change is seen.

It polls: a scan compares (mtime, size, inode) of every entry with the last scan.
For text files it keeps the last content, to send a unified diff. Standard library
only. Directories of dependencies and caches are not watched (see SKIP_DIRS).
"""

from __future__ import annotations

import difflib
import os
import stat
import threading
import time

SKIP_DIRS = frozenset({".git", "node_modules", "__pycache__", ".venv", ".mypy_cache",
                       ".pytest_cache", ".ruff_cache"})
TEXT_LIMIT = 256 * 1024      # larger files get no diff
DIFF_LIMIT = 64 * 1024       # a longer diff is cut and flagged
# Per scan: at most this many changes are reported (the rest stay unseen, so the next
# scan reports them: a huge change is spread over scans, never lost), and diffs add up
# to at most this many bytes (later changes of the scan come without one, flagged).
CHANGES_PER_SCAN = 500
DIFF_BYTES_PER_SCAN = 1024 * 1024
CACHE_BUDGET = 32 * 1024 * 1024
# difflib's line matching can be quadratic: a changed stretch longer than this is shown
# as one hunk that replaces it (a correct diff, if not the smallest), made in linear time.
MATCH_LIMIT = 5000


def scan(root: str) -> dict[str, tuple[int, int, int, bool]]:
    found: dict[str, tuple[int, int, int, bool]] = {}

    def walk(path: str, prefix: str) -> None:
        try:
            it = os.scandir(path)
        except OSError:
            return
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if e.name not in SKIP_DIRS:
                        walk(e.path, prefix + e.name + "/")
                    continue
                found[prefix + e.name] = (st.st_mtime_ns, st.st_size, st.st_ino,
                                          stat.S_ISREG(st.st_mode))

    walk(root, "")
    return found


def _text(root: str, rel: str) -> tuple[str | None, bool]:
    """(content, binary): content is None for a large, unreadable or binary file."""
    try:
        fd = os.open(os.path.join(root, rel), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None, False
    with os.fdopen(fd, "rb") as f:
        data = f.read(TEXT_LIMIT + 1)
    if len(data) > TEXT_LIMIT:
        return None, b"\x00" in data[:8192]
    if b"\x00" in data[:8192]:
        return None, True
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return None, True


def _span(start: int, length: int) -> str:
    """A hunk range as unified diffs write it (1-based; an empty range names the line
    before it)."""
    if length == 1:
        return str(start + 1)
    return f"{start + 1 if length else start},{length}"


def unified(a: list[str], b: list[str], fromfile: str, tofile: str) -> str:
    """A unified diff of two lists of lines, with 3 lines of context."""
    p = 0
    while p < len(a) and p < len(b) and a[p] == b[p]:
        p += 1
    s = 0
    while s < len(a) - p and s < len(b) - p and a[-1 - s] == b[-1 - s]:
        s += 1
    if max(len(a), len(b)) - p - s <= MATCH_LIMIT:
        return "".join(difflib.unified_diff(a, b, fromfile, tofile))
    lo, end_a, end_b = max(0, p - 3), len(a) - s, len(b) - s
    hi_a, hi_b = min(len(a), end_a + 3), min(len(b), end_b + 3)
    out = [f"--- {fromfile}\n", f"+++ {tofile}\n",
           f"@@ -{_span(lo, hi_a - lo)} +{_span(lo, hi_b - lo)} @@\n"]
    out += [" " + line for line in a[lo:p]]
    out += ["-" + line for line in a[p:end_a]]
    out += ["+" + line for line in b[p:end_b]]
    out += [" " + line for line in a[end_a:hi_a]]
    return "".join(out)


class Watcher:
    def __init__(self, root: str) -> None:
        self.root = root
        self.cache: dict[str, str] = {}
        self.cached_bytes = 0
        self.state = scan(root)
        for rel, sig in self.state.items():
            if sig[3] and sig[1] <= TEXT_LIMIT:
                self._remember(rel, _text(root, rel)[0])

    def _remember(self, rel: str, text: str | None) -> None:
        old = self.cache.pop(rel, None)
        if old is not None:
            self.cached_bytes -= len(old)
        if text is not None and self.cached_bytes + len(text) <= CACHE_BUDGET:
            self.cache[rel] = text
            self.cached_bytes += len(text)

    def changes(self) -> list[dict]:
        new = scan(self.root)
        out: list[dict] = []
        budget = [DIFF_BYTES_PER_SCAN]
        seen = dict(self.state)  # what the next scan compares with: only what was reported
        for rel in sorted(self.state.keys() - new.keys()):
            if len(out) >= CHANGES_PER_SCAN:
                break
            before = self.cache.get(rel)
            out.append(self._change(rel, "deleted", None, before, "", False, budget))
            self._remember(rel, None)
            del seen[rel]
        for rel, sig in sorted(new.items()):
            old = self.state.get(rel)
            if old == sig:
                continue
            if len(out) >= CHANGES_PER_SCAN:
                break
            seen[rel] = sig
            kind = "created" if old is None else "modified"
            if not sig[3]:  # a symlink or special file: no content to diff
                out.append({"path": rel, "change": kind, "size": sig[1], "diff": None,
                            "diff_truncated": False, "binary": False})
                continue
            text, binary = _text(self.root, rel)
            before = self.cache.get(rel, "" if kind == "created" else None)
            if kind == "modified" and text is not None and text == before:
                continue  # touched, not changed
            out.append(self._change(rel, kind, sig[1], before, text, binary, budget))
            self._remember(rel, text)
        self.state = seen
        return out

    @staticmethod
    def _change(rel: str, kind: str, size: int | None, before: str | None,
                after: str | None, binary: bool, budget: list[int] | None = None) -> dict:
        diff, cut = None, False
        if budget is not None and budget[0] <= 0 and before is not None \
                and after is not None:
            return {"path": rel, "change": kind, "size": size, "diff": None,
                    "diff_truncated": True, "binary": binary}
        if before is not None and after is not None:
            diff = unified(before.splitlines(keepends=True), after.splitlines(keepends=True),
                           "/dev/null" if kind == "created" else f"a/{rel}",
                           "/dev/null" if kind == "deleted" else f"b/{rel}")
            if len(diff) > DIFF_LIMIT:
                diff, cut = diff[:DIFF_LIMIT], True
            if budget is not None:
                budget[0] -= len(diff)
        return {"path": rel, "change": kind, "size": size, "diff": diff,
                "diff_truncated": cut, "binary": binary}


class Control:
    """A running watch, from other threads: ``set`` stops it (as boxd's cancel does for
    any request), ``rescan`` makes it scan now and sets the returned event once that
    scan's changes have been emitted."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._waiting: list[threading.Event] = []

    def set(self) -> None:
        self.stopped.set()
        self._wake.set()

    def rescan(self) -> threading.Event:
        done = threading.Event()
        with self._lock:
            self._waiting.append(done)
        self._wake.set()
        return done

    def take(self) -> list[threading.Event]:
        with self._lock:
            out, self._waiting = self._waiting, []
        return out

    def sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()


def run(root: str, emit, control: Control, interval: float = 0.25,  # type: ignore[no-untyped-def]
        ready=None) -> None:
    """Scan every ``interval`` seconds (more slowly when a scan is slow, at once when
    asked) until stopped. ``ready`` is called once the first snapshot is taken: changes
    after it are seen."""
    watcher = Watcher(root)
    if ready is not None:
        ready()
    while not control.stopped.is_set():
        started = time.monotonic()
        asked = control.take()  # asked before this scan began: it answers them
        for change in watcher.changes():
            emit(change)
        for done in asked:
            done.set()
        spent = time.monotonic() - started
        control.sleep(max(interval, spent * 4))
    for done in control.take():  # stopped: nobody waits on a scan that will not come
        done.set()
