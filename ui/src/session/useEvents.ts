// The session's event log in the page: the newest page first, then the live stream from
// the last seq seen (never a replay of what the page already has), older pages on demand,
// and a reconnect of its own after a dropped connection or a server restart.
import { useCallback, useEffect, useRef, useState } from "react";
import { ApiError, rawRequest, reportConnectivity, sessionPath, sessions as api } from "../api";
import type { WireEvent } from "../types";

export const FIRST_PAGE = 400;
const OLDER_PAGE = 1000;
const SILENCE_MS = 45_000; // the server sends a heartbeat every 15 s

export type Connection = "loading" | "live" | "reconnecting" | "gone" | "stopped";

export interface EventLog {
  events: WireEvent[];
  version: number;
  firstSeq: number; // the oldest loaded seq (1 when the whole log is loaded)
  connection: Connection;
  attempts: number;
  reconnected: boolean;
  error: string | null;
  loadEarlier: () => Promise<void>;
  loadingEarlier: boolean;
  subscribe: (fn: (batch: WireEvent[]) => void) => () => void;
}

export function useEvents(sessionId: string, lastSeq: number | null): EventLog {
  const events = useRef<WireEvent[]>([]);
  const last = useRef(0);
  const listeners = useRef(new Set<(batch: WireEvent[]) => void>());
  const [version, setVersion] = useState(0);
  const [firstSeq, setFirstSeq] = useState(1);
  const [connection, setConnection] = useState<Connection>("loading");
  const [attempts, setAttempts] = useState(0);
  const [reconnected, setReconnected] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [loadingEarlier, setLoadingEarlier] = useState(false);

  const pending = useRef<WireEvent[]>([]);
  const frame = useRef(0);

  const flush = useCallback(() => {
    frame.current = 0;
    const batch = pending.current;
    pending.current = [];
    if (!batch.length) return;
    events.current = events.current.concat(batch);
    setVersion((v) => v + 1);
    for (const fn of listeners.current) fn(batch);
  }, []);

  const accept = useCallback(
    (ev: WireEvent) => {
      if (ev.seq <= last.current) return; // already have it
      last.current = ev.seq;
      pending.current.push(ev);
      if (!frame.current) frame.current = requestAnimationFrame(flush);
    },
    [flush],
  );

  useEffect(() => {
    if (lastSeq === null) return;
    let stopped = false;
    let controller: AbortController | null = null;
    let retry = 0;
    let timer = 0;
    events.current = [];
    last.current = 0;

    const follow = async (): Promise<void> => {
      controller = new AbortController();
      const ctl = controller;
      let silence = 0;
      const arm = () => {
        clearTimeout(silence);
        silence = window.setTimeout(() => ctl.abort(), SILENCE_MS);
      };
      try {
        arm();
        const resp = await rawRequest(`${sessionPath(sessionId)}/events?after=${last.current}`, {
          headers: { Accept: "text/event-stream" },
          signal: ctl.signal,
        });
        if (retry > 0) {
          setReconnected(true);
          window.setTimeout(() => setReconnected(false), 5000);
        }
        retry = 0;
        setAttempts(0);
        setConnection("live");
        setError(null);
        await readSse(resp, arm, (data) => {
          try {
            accept(JSON.parse(data) as WireEvent);
          } catch {
            // a malformed frame is skipped; the next reconnect resumes by seq
          }
        });
      } catch (err) {
        if (stopped) return;
        if (err instanceof ApiError && err.status === 404) {
          setConnection("gone");
          return;
        }
        if (err instanceof ApiError && err.status === 401) {
          setConnection("stopped");
          return;
        }
        if (err instanceof ApiError && err.status > 0) setError(err.message);
      } finally {
        clearTimeout(silence);
      }
      if (stopped) return;
      // The stream ended (server restart, proxy timeout, network): resume after the last seq.
      if (retry > 0) reportConnectivity(false);
      retry += 1;
      setAttempts(retry);
      setConnection("reconnecting");
      timer = window.setTimeout(follow, Math.min(5000, 250 * 2 ** Math.min(retry, 5)));
    };

    (async () => {
      setConnection("loading");
      try {
        const after = Math.max(0, lastSeq - FIRST_PAGE);
        const page = await api.page(sessionId, after, FIRST_PAGE + 50);
        if (stopped) return;
        for (const ev of page.events) accept(ev);
        flush();
        setFirstSeq(page.events.length ? page.events[0].seq : after + 1);
        follow();
      } catch (err) {
        if (stopped) return;
        if (err instanceof ApiError && err.status === 404) setConnection("gone");
        else {
          setError(err instanceof Error ? err.message : String(err));
          setConnection("reconnecting");
          timer = window.setTimeout(follow, 1000);
        }
      }
    })();

    return () => {
      stopped = true;
      clearTimeout(timer);
      controller?.abort();
      cancelAnimationFrame(frame.current);
      frame.current = 0;
      pending.current = [];
    };
  }, [sessionId, lastSeq, accept, flush]);

  const loadEarlier = useCallback(async () => {
    const first = events.current.length ? events.current[0].seq : last.current + 1;
    if (first <= 1 || loadingEarlier) return;
    setLoadingEarlier(true);
    try {
      const after = Math.max(0, first - 1 - OLDER_PAGE);
      const page = await api.page(sessionId, after, first - 1 - after);
      const older = page.events.filter((e) => e.seq < first);
      events.current = older.concat(events.current);
      setFirstSeq(older.length ? older[0].seq : 1);
      setVersion((v) => v + 1);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setLoadingEarlier(false);
    }
  }, [sessionId, loadingEarlier]);

  const subscribe = useCallback((fn: (batch: WireEvent[]) => void) => {
    listeners.current.add(fn);
    return () => {
      listeners.current.delete(fn);
    };
  }, []);

  return {
    events: events.current,
    version,
    firstSeq,
    connection,
    attempts,
    reconnected,
    error,
    loadEarlier,
    loadingEarlier,
    subscribe,
  };
}

/** Reads a text/event-stream response, calling `onData` with each event's data. */
async function readSse(resp: Response, onBytes: () => void, onData: (data: string) => void) {
  const reader = resp.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let data: string[] = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onBytes();
    buffer += decoder.decode(value, { stream: true });
    let nl: number;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl).replace(/\r$/, "");
      buffer = buffer.slice(nl + 1);
      if (line === "") {
        if (data.length) onData(data.join("\n"));
        data = [];
      } else if (line.startsWith("data:")) {
        data.push(line.slice(line[5] === " " ? 6 : 5));
      }
      // id:, event:, retry: and comments (heartbeats) need nothing more: the data carries
      // the seq and the type, and the reconnect delay is ours.
    }
  }
}
