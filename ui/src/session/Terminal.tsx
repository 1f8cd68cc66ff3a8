// The terminal (lazy chunk): xterm.js on a real shell in the session's sandbox, a pty in
// the box over a WebSocket (/v1/sessions/{id}/terminal): keys go as binary frames, output
// comes as binary frames, size and lifecycle as JSON text. The shell outlives the page:
// a reload attaches to it again (its id is kept for the tab) with what it printed.
import { FitAddon } from "@xterm/addon-fit";
import { Terminal } from "@xterm/xterm";
import "@xterm/xterm/css/xterm.css";
import { useEffect, useRef, useState } from "react";
import { sessionPath } from "../api";

type State = "connecting" | "connected" | "exited" | "lost";

const storeKey = (sessionId: string) => `sophon.terminal.${sessionId}`;

export default function TerminalPane({ sessionId, visible }: { sessionId: string; visible: boolean }) {
  const host = useRef<HTMLDivElement>(null);
  const fit = useRef<FitAddon | null>(null);
  const term = useRef<Terminal | null>(null);
  const [state, setState] = useState<State>("connecting");
  const [termId, setTermId] = useState<string | null>(null);
  const [generation, setGeneration] = useState(0); // a new shell on demand

  useEffect(() => {
    const t = new Terminal({
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

    let ws: WebSocket | null = null;
    let closed = false;
    let retry: number | undefined;
    const encoder = new TextEncoder();

    const sendSize = () => {
      if (ws?.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "resize", rows: t.rows, cols: t.cols }));
    };

    const open = (attempt: number) => {
      const known = sessionStorage.getItem(storeKey(sessionId));
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      const query = known ? `terminal=${encodeURIComponent(known)}` : `rows=${t.rows}&cols=${t.cols}`;
      setState("connecting");
      const sock = new WebSocket(`${scheme}//${location.host}${sessionPath(sessionId)}/terminal?${query}`);
      sock.binaryType = "arraybuffer";
      ws = sock;
      let opened = false;
      sock.onmessage = (msg) => {
        if (typeof msg.data !== "string") {
          t.write(new Uint8Array(msg.data as ArrayBuffer));
          return;
        }
        const control = JSON.parse(msg.data);
        if (control.type === "terminal") {
          opened = true;
          if (control.id !== known) t.reset(); // a new shell: start from a clean screen
          sessionStorage.setItem(storeKey(sessionId), control.id);
          setTermId(control.id);
          setState("connected");
          sendSize();
        } else if (control.type === "exit") {
          sessionStorage.removeItem(storeKey(sessionId));
          setState("exited");
          t.write("\r\n\x1b[2m[the shell has exited: press Enter for a new one]\x1b[0m\r\n");
        }
      };
      sock.onclose = () => {
        if (closed || ws !== sock) return;
        ws = null;
        if (!opened && known) {
          // That shell is gone (ended, or the server restarted): start a new one.
          sessionStorage.removeItem(storeKey(sessionId));
          open(0);
          return;
        }
        setState((s) => (s === "exited" ? s : "lost"));
        if (attempt < 20) retry = window.setTimeout(() => open(attempt + 1), Math.min(500 * 2 ** attempt, 5000));
      };
    };
    open(0);

    const sub = t.onData((data) => {
      if (ws?.readyState === WebSocket.OPEN) {
        ws.send(encoder.encode(data));
      } else if (data === "\r" && !ws) {
        open(0); // after an exit: Enter starts a new shell
      }
    });
    const onResize = () => {
      try {
        f.fit();
      } catch {
        // hidden
      }
    };
    const sizeSub = t.onResize(sendSize);
    const observer = new ResizeObserver(onResize);
    observer.observe(host.current!);
    return () => {
      closed = true;
      window.clearTimeout(retry);
      observer.disconnect();
      sub.dispose();
      sizeSub.dispose();
      ws?.close();
      t.dispose();
    };
  }, [sessionId, generation]);

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

  const newShell = () => {
    sessionStorage.removeItem(storeKey(sessionId));
    setGeneration((g) => g + 1);
  };

  return (
    <div className="terminal-pane">
      <div ref={host} className="terminal-host" aria-label="Terminal" />
      <div className="terminal-status small" role="status" data-testid="terminal-status" data-state={state}>
        {state === "connected" ? (
          <>
            A shell in the session's sandbox <span className="muted">({termId}; it keeps running if you leave)</span>
          </>
        ) : state === "connecting" ? (
          <span className="muted">Connecting to the sandbox…</span>
        ) : state === "exited" ? (
          <>The shell has exited.</>
        ) : (
          <span className="bad">Lost the connection; reconnecting…</span>
        )}{" "}
        <button className="link" onClick={newShell}>
          New shell
        </button>
      </div>
    </div>
  );
}
