// What asks for the user's attention while they look elsewhere: the tab's title says an
// approval waits or a turn ended, and a browser notification says so too (once the user
// allowed them); an approval that answers itself counts down.
import { useEffect, useRef, useState } from "react";
import type { WireEvent } from "../types";

const canNotify = () => typeof Notification !== "undefined";

/** The session page's title and notifications, from its live events. */
export function useAttention(name: string, waiting: number, subscribe: (fn: (batch: WireEvent[]) => void) => () => void) {
  const [ended, setEnded] = useState(false);
  const running = useRef(false);
  useEffect(() => {
    const off = subscribe((batch) => {
      for (const ev of batch) {
        if (ev.type === "status" && ev.status === "running") running.current = true;
        if (ev.type === "status" && (ev.status === "idle" || ev.status === "error") && running.current) {
          running.current = false;
          if (document.hidden) {
            setEnded(true);
            notify(`${name}: the turn ${ev.status === "error" ? "failed" : "ended"}`, ev.detail ?? "");
          }
        }
        if (ev.type === "approval_request" && document.hidden) {
          notify(`${name}: an approval waits`, `${ev.tool}: ${ev.reason ?? ""}`);
        }
      }
    });
    const seen = () => { if (!document.hidden) setEnded(false); };
    document.addEventListener("visibilitychange", seen);
    return () => {
      off();
      document.removeEventListener("visibilitychange", seen);
    };
  }, [name, subscribe]);
  useEffect(() => {
    const prefix = waiting ? `(${waiting}) Approval · ` : ended ? "✓ " : "";
    document.title = `${prefix}${name} · Sophon`;
    return () => { document.title = "Sophon"; };
  }, [name, waiting, ended]);
}

function notify(title: string, body: string) {
  if (canNotify() && Notification.permission === "granted") {
    new Notification(title, { body: body.slice(0, 200), tag: "sophon" });
  }
}

/** A button that asks the browser for notifications (a click is needed to ask). */
export function NotifyToggle() {
  const [state, setState] = useState(canNotify() ? Notification.permission : "denied");
  if (!canNotify() || state === "granted") return null;
  return (
    <button className="linkish small" title="Notify me when a turn ends or an approval waits, while I look elsewhere"
      disabled={state === "denied"} onClick={async () => setState(await Notification.requestPermission())}>
      {state === "denied" ? "Notifications blocked" : "Notify me"}
    </button>
  );
}

/** "answers allow in 0:42", ticking; nothing without a deadline. */
export function Countdown({ until, answer }: { until?: string | null; answer?: string | null }) {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (!until) return;
    const t = window.setInterval(() => setNow(Date.now()), 1000);
    return () => window.clearInterval(t);
  }, [until]);
  if (!until) return null;
  const left = Math.max(0, Math.round((Date.parse(until) - now) / 1000));
  const text = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
  return (
    <span className="countdown small" data-testid="approval-countdown" title="Then the session's answer on timeout applies">
      {" "}· {answer ?? "deny"} in {text}
    </span>
  );
}
