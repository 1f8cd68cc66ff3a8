import { useRef, useState, type KeyboardEvent } from "react";
import { sessions as api } from "../api";

/** The chat box: Enter sends, Shift-Enter is a newline. While a turn runs, a message is
 * queued and runs after it. */
export function Composer(props: { sessionId: string; busy: boolean; onInterrupt: () => void }) {
  const [text, setText] = useState("");
  const [sending, setSending] = useState(false);
  const [note, setNote] = useState<{ kind: "error" | "info"; text: string } | null>(null);
  const area = useRef<HTMLTextAreaElement>(null);

  const send = async () => {
    const content = text.trim();
    if (!content || sending) return;
    setSending(true);
    setNote(null);
    try {
      const got = await api.send(props.sessionId, content, true);
      setText("");
      if (got.queued) {
        setNote({
          kind: "info",
          text: `Queued (position ${got.position}): it runs when the current turn ends.`,
        });
      }
    } catch (err) {
      setNote({ kind: "error", text: err instanceof Error ? err.message : String(err) });
    } finally {
      setSending(false);
      area.current?.focus();
    }
  };

  const onKey = (e: KeyboardEvent<HTMLTextAreaElement>) => {
    if (e.key === "Enter" && !e.shiftKey && !e.nativeEvent.isComposing) {
      e.preventDefault();
      send();
    } else if (e.key === "Escape" && props.busy) {
      e.preventDefault();
      props.onInterrupt();
    }
  };

  return (
    <div className="composer">
      {note && (
        <div className={note.kind === "error" ? "error small" : "muted small"} role={note.kind === "error" ? "alert" : "status"}>
          {note.text}
        </div>
      )}
      <div className="composer-row">
        <textarea
          ref={area}
          rows={Math.min(8, Math.max(2, text.split("\n").length))}
          value={text}
          onChange={(e) => setText(e.target.value)}
          onKeyDown={onKey}
          placeholder={props.busy ? "Claude is working… a message now is queued (Esc interrupts)" : "Message Claude (Enter sends, Shift-Enter for a newline)"}
          aria-label="Message"
        />
        <button className="primary" onClick={send} disabled={sending || !text.trim()}>
          Send
        </button>
      </div>
    </div>
  );
}
