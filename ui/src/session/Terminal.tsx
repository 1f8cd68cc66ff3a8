// The terminal (lazy chunk): xterm.js with line editing in the page; each line runs in the
// session's sandbox through the exec API, its output streamed as it comes, then its exit
// code. (Not a PTY: full-screen programs need a WebSocket the box does not offer yet.)
import { FitAddon } from "@xterm/addon-fit";
import { Terminal } from "@xterm/xterm";
import "@xterm/xterm/css/xterm.css";
import { useEffect, useRef, useState } from "react";
import { rawRequest, readLines, sessionPath } from "../api";

const PROMPT = "\x1b[1;32m$\x1b[0m ";
const RED = "\x1b[31m";
const RESET = "\x1b[0m";

interface Last {
  command: string;
  exitCode: number | null;
  error: string | null;
  ms: number | null;
}

export default function TerminalPane({ sessionId, visible }: { sessionId: string; visible: boolean }) {
  const host = useRef<HTMLDivElement>(null);
  const fit = useRef<FitAddon | null>(null);
  const term = useRef<Terminal | null>(null);
  const [running, setRunning] = useState<string | null>(null);
  const [last, setLast] = useState<Last | null>(null);

  useEffect(() => {
    const t = new Terminal({
      convertEol: true,
      cursorBlink: true,
      fontFamily: "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace",
      fontSize: 13,
      scrollback: 5000,
      theme: { background: "#0d1117", foreground: "#d6dde6" },
    });
    const f = new FitAddon();
    t.loadAddon(f);
    t.open(host.current!);
    term.current = t;
    fit.current = f;
    try {
      f.fit();
    } catch {
      // not visible yet
    }
    t.writeln("\x1b[2m# runs in the session's sandbox, in /workspace\x1b[0m");
    t.write(PROMPT);

    let line = "";
    let busy: AbortController | null = null;
    const history: string[] = [];
    let back = 0;

    const setLine = (next: string) => {
      t.write("\b \b".repeat(line.length));
      line = next;
      t.write(line);
    };

    const run = async (command: string) => {
      t.write("\r\n");
      if (!command.trim()) {
        t.write(PROMPT);
        return;
      }
      history.push(command);
      back = 0;
      busy = new AbortController();
      setRunning(command);
      const started = performance.now();
      let result: Last = { command, exitCode: null, error: null, ms: null };
      try {
        const resp = await rawRequest(`${sessionPath(sessionId)}/exec`, {
          method: "POST",
          headers: { "Content-Type": "application/json", Accept: "application/x-ndjson" },
          body: JSON.stringify({ command, timeout: 600 }),
          signal: busy.signal,
        });
        await readLines(resp, (raw) => {
          const ev = JSON.parse(raw);
          if (ev.type === "exec_output") {
            t.write(ev.stream === "stderr" ? RED + ev.data + RESET : ev.data);
          } else if (ev.type === "exec_end") {
            result = { command, exitCode: ev.exit_code, error: ev.error ?? null, ms: ev.duration_ms ?? null };
          }
        });
      } catch (err) {
        if (err instanceof DOMException && err.name === "AbortError") {
          result = { ...result, error: "detached (it keeps running in the sandbox)" };
        } else {
          result = { ...result, error: err instanceof Error ? err.message : String(err) };
        }
      }
      busy = null;
      const ms = result.ms ?? Math.round(performance.now() - started);
      const ok = result.exitCode === 0;
      const summary =
        result.exitCode === null
          ? `[${result.error ?? "no exit code"}]`
          : `[exit ${result.exitCode}${result.error ? ` · ${result.error}` : ""} · ${ms} ms]`;
      t.write(`${t.buffer.active.cursorX > 0 ? "\r\n" : ""}\x1b[${ok ? "2;32" : "1;31"}m${summary}${RESET}\r\n`);
      setLast({ ...result, ms });
      setRunning(null);
      t.write(PROMPT);
    };

    const sub = t.onData((data) => {
      if (busy) {
        if (data === "\x03") {
          busy.abort();
          t.write("^C");
        }
        return;
      }
      const text = data.replace(/\r\n/g, "\r");
      const cr = text.indexOf("\r");
      if (cr >= 0) {
        // Enter (or a pasted line): run it. The rest of a multi-line paste is dropped.
        const before = text.slice(0, cr).replace(/[\x00-\x1f\x7f]/g, "");
        t.write(before);
        const command = line + before;
        line = "";
        run(command);
        return;
      }
      if (data === "\x7f" || data === "\b") {
        if (line) {
          line = line.slice(0, -1);
          t.write("\b \b");
        }
      } else if (data === "\x1b[A") {
        if (back < history.length) setLine(history[history.length - ++back]);
      } else if (data === "\x1b[B") {
        if (back > 0) setLine(--back === 0 ? "" : history[history.length - back]);
      } else if (data === "\x03") {
        t.write("^C\r\n" + PROMPT);
        line = "";
      } else if (data === "\x15") {
        setLine("");
      } else if (data === "\x0c") {
        t.clear();
      } else if (!data.startsWith("\x1b")) {
        const printable = data.replace(/[\x00-\x1f\x7f]/g, "");
        line += printable;
        t.write(printable);
      }
    });

    const onResize = () => {
      try {
        f.fit();
      } catch {
        // hidden
      }
    };
    const observer = new ResizeObserver(onResize);
    observer.observe(host.current!);
    return () => {
      observer.disconnect();
      sub.dispose();
      busy?.abort();
      t.dispose();
    };
  }, [sessionId]);

  useEffect(() => {
    if (visible) {
      requestAnimationFrame(() => {
        try {
          fit.current?.fit();
        } catch {
          // not laid out
        }
        term.current?.focus();
      });
    }
  }, [visible]);

  return (
    <div className="terminal-pane">
      <div ref={host} className="terminal-host" aria-label="Terminal" />
      <div className="terminal-status small" role="status" data-testid="terminal-status">
        {running ? (
          <>Running <code>{running}</code>… (Ctrl-C stops waiting)</>
        ) : last ? (
          <>
            Last command <code>{last.command}</code>:{" "}
            <span className={last.exitCode === 0 ? "ok" : "bad"}>
              {last.exitCode === null ? last.error : `exit code ${last.exitCode}`}
            </span>
          </>
        ) : (
          <span className="muted">Type a command and press Enter.</span>
        )}
      </div>
    </div>
  );
}
