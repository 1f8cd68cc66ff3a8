"""`sophon claude-code shell ID`: the session's terminal in this one, as the dashboard's.

This terminal goes into raw mode; every key goes to the shell in the sandbox (Ctrl-C
interrupts what runs there, not this command) and what it prints comes back as it is,
over the session's terminal WebSocket. The size follows this window. The shell keeps
running when the connection drops; ``--attach ID`` comes back to it. Exit the shell
(``exit`` or Ctrl-D) to leave.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import termios
import threading
import tty
from typing import Any
from urllib.parse import urlsplit

MESSAGE_DETACHED = "sophon: left the shell running; come back with --attach {id}"


def _size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
        return size.lines, size.columns
    except OSError:
        return 24, 80


def ws_url(base_url: str, session_id: str, attach: str | None) -> str:
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    rows, cols = _size()
    query = f"terminal={attach}" if attach else f"rows={rows}&cols={cols}"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/v1/sessions/{session_id}" \
           f"/terminal?{query}"


def run(base_url: str, api_key: str, session_id: str, attach: str | None) -> int:
    """Returns the exit status for the command: 0 when the shell exited."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    try:
        ws = connect(ws_url(base_url, session_id, attach), open_timeout=30,
                     additional_headers={"Authorization": f"Bearer {api_key}"})
    except InvalidStatus as exc:
        sys.stderr.write(f"sophon: the server refused the terminal ({exc.response.status_code}):"
                         f" no such session or terminal of yours\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"sophon: cannot reach {base_url}: {exc}\n")
        return 1
    hello = json.loads(ws.recv(timeout=30))
    term_id = hello.get("id", "?")
    exited = threading.Event()  # the shell has exited
    gone = threading.Event()  # the connection has ended

    def pump_output() -> None:
        out = sys.stdout.buffer
        with contextlib.suppress(ConnectionClosed, OSError):
            for msg in ws:
                if isinstance(msg, bytes):
                    out.write(msg)
                    out.flush()
                elif json.loads(msg).get("type") == "exit":
                    exited.set()
        gone.set()

    def resized(*_: Any) -> None:
        rows, cols = _size()
        with contextlib.suppress(ConnectionClosed, OSError):
            ws.send(json.dumps({"type": "resize", "rows": rows, "cols": cols}))

    reader = threading.Thread(target=pump_output, daemon=True)
    reader.start()
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if interactive else None
    old_winch = signal.signal(signal.SIGWINCH, resized)
    try:
        if interactive:
            tty.setraw(stdin, termios.TCSANOW)  # keys typed already are kept, not dropped
            resized()
        while not gone.is_set():
            ready, _, _ = select.select([stdin], [], [], 0.2)
            if not ready:
                continue
            data = os.read(stdin, 4096)
            if not data:  # stdin closed (piped input ran out): leave the shell running
                break
            ws.send(data)
    except ConnectionClosed:
        pass
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, old_winch)
        ws.close()
        reader.join(5)
    if exited.is_set():
        return 0
    sys.stderr.write("\n" + MESSAGE_DETACHED.format(id=term_id) + "\n")
    return 0
