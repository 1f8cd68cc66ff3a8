// The event stream, virtualised: only the rows in view are in the DOM, so a session with
// tens of thousands of events scrolls as a short one does. It follows the bottom while
// the reader is there, and stays put when they scroll up to read.
import { useVirtualizer } from "@tanstack/react-virtual";
import { useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState } from "react";
import { EventRow, type RowActions } from "./EventItem";
import { buildItems, rewoundSeqs } from "./items";
import type { EventLog } from "./useEvents";

const NEAR_BOTTOM_PX = 80;

export function EventPane(props: {
  log: EventLog;
  decide: RowActions["decide"];
  openFile: RowActions["openFile"];
}) {
  const { log } = props;
  const [showQuiet, setShowQuiet] = useState(true);
  const items = useMemo(
    () => buildItems(log.events, showQuiet),
    [log.version, showQuiet],
  );
  const rewound = useMemo(() => rewoundSeqs(log.events), [log.version]);
  const scroller = useRef<HTMLDivElement>(null);
  const atBottom = useRef(true);
  const [following, setFollowing] = useState(true);
  const folds = useRef(new Map<string, boolean>());
  const [foldVersion, setFoldVersion] = useState(0);

  const toggle = useCallback((key: string) => {
    folds.current.set(key, !folds.current.get(key));
    setFoldVersion((v) => v + 1);
  }, []);
  const actions = useMemo<RowActions>(
    () => ({ toggle, decide: props.decide, openFile: props.openFile }),
    [toggle, props.decide, props.openFile],
  );

  const virtualizer = useVirtualizer({
    count: items.length,
    getScrollElement: () => scroller.current,
    estimateSize: () => 40,
    overscan: 8,
    getItemKey: (i) => items[i].key,
  });

  const scrollToEnd = useCallback(() => {
    if (items.length) virtualizer.scrollToIndex(items.length - 1, { align: "end" });
  }, [items.length, virtualizer]);

  // The first rows of the session are in the DOM (a mark for the performance test).
  const marked = useRef(false);
  useLayoutEffect(() => {
    if (!marked.current && items.length) {
      marked.current = true;
      performance.mark("sophon:events-painted", { detail: { events: log.events.length } });
    }
  }, [items, log.events.length]);

  // New rows: keep to the bottom if the reader was there.
  useLayoutEffect(() => {
    if (atBottom.current) {
      scrollToEnd();
      // Heights are measured after paint: settle on the real bottom once they are known.
      const id = requestAnimationFrame(() => {
        const el = scroller.current;
        if (el && atBottom.current) el.scrollTop = el.scrollHeight;
      });
      return () => cancelAnimationFrame(id);
    }
  }, [items, scrollToEnd]);

  const onScroll = () => {
    const el = scroller.current!;
    const bottom = el.scrollHeight - el.scrollTop - el.clientHeight < NEAR_BOTTOM_PX;
    atBottom.current = bottom;
    if (bottom !== following) setFollowing(bottom);
  };

  // Older pages: prepend, then keep the row that was on top where it was.
  const earlier = async () => {
    const before = items.length;
    atBottom.current = false;
    setFollowing(false);
    await log.loadEarlier();
    requestAnimationFrame(() => {
      const idx = virtualizer.options.count - before;
      if (idx > 0) virtualizer.scrollToIndex(idx, { align: "start" });
    });
  };

  useEffect(() => {
    // Keyboard: End follows the stream again.
    const el = scroller.current!;
    const onKey = (e: KeyboardEvent) => {
      if (e.key === "End") {
        atBottom.current = true;
        setFollowing(true);
        scrollToEnd();
      }
    };
    el.addEventListener("keydown", onKey);
    return () => el.removeEventListener("keydown", onKey);
  }, [scrollToEnd]);

  return (
    <div className="event-pane">
      <div className="pane-tools">
        <label className="inline small">
          <input type="checkbox" checked={showQuiet} onChange={(e) => setShowQuiet(e.target.checked)} />
          status and usage
        </label>
        <span className="muted small">{log.events.length.toLocaleString()} events</span>
        {log.firstSeq > 1 && (
          <button className="linkish small" onClick={earlier} disabled={log.loadingEarlier}>
            {log.loadingEarlier ? "Loading…" : `Load ${Math.min(1000, log.firstSeq - 1)} earlier`}
          </button>
        )}
      </div>
      <div
        ref={scroller}
        className="event-scroll"
        onScroll={onScroll}
        tabIndex={0}
        role="log"
        aria-label="Session events"
        data-fold-version={foldVersion}
      >
        {items.length === 0 && log.connection !== "loading" && (
          <div className="empty small">No events yet. Send a message to start.</div>
        )}
        <div style={{ height: virtualizer.getTotalSize(), position: "relative" }}>
          {virtualizer.getVirtualItems().map((v) => {
            const item = items[v.index];
            return (
              <div
                key={v.key}
                data-index={v.index}
                data-seq={item.key}
                ref={virtualizer.measureElement}
                className={rewound.has(Number(item.key)) ? "vrow rewound" : "vrow"}
                title={rewound.has(Number(item.key)) ? "Rewound: the agent no longer sees this" : undefined}
                style={{ transform: `translateY(${v.start}px)` }}
              >
                <EventRow item={item} open={!!folds.current.get(item.key)} actions={actions} />
              </div>
            );
          })}
        </div>
      </div>
      {!following && items.length > 0 && (
        <button
          className="jump"
          onClick={() => {
            atBottom.current = true;
            setFollowing(true);
            scrollToEnd();
          }}
        >
          ↓ Newest
        </button>
      )}
    </div>
  );
}
