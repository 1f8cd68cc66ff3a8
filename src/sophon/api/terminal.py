"""A session's terminal over a WebSocket: bytes both ways.

``GET /v1/sessions/{id}/terminal`` upgraded: a new shell on a pty in the session's box
(``?rows=&cols=``), or one still running (``?terminal=<id>``, after a reload) from its
scrollback on. Binary frames are keystrokes in and output out; text frames are JSON:
the server's first says which terminal it is (``{"type": "terminal", "id"}``), its last
how it ended (``{"type": "exit"}``); the client's set the size
(``{"type": "resize", "rows", "cols"}``).

Authenticated like every route: ``Authorization: Bearer``, or the dashboard's cookie with
an ``Origin`` that is this server (a browser cannot add the CSRF header to a WebSocket,
and always sends Origin). Refused before the upgrade: the client sees a 403.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from sophon.api.deps import COOKIE, CsrfFailed, check_origin
from sophon.errors import BoxError, BoxRequestError, SophonError
from sophon.sessions.terminals import Terminal
from sophon.users import Principal

log = logging.getLogger(__name__)
router = APIRouter()


async def _principal(ws: WebSocket) -> Principal:
    services = ws.app.state.services
    header = ws.headers.get("authorization")
    if header is None and (cookie := ws.cookies.get(COOKIE)):
        if ws.headers.get("origin") is None:
            raise CsrfFailed("a terminal signed in by cookie must come from this server's "
                             "page (no Origin)")
        check_origin(ws)  # type: ignore[arg-type]
        principal, _ = await services.users.web_session(cookie)
        return principal  # type: ignore[no-any-return]
    scheme, _, key = (header or "").partition(" ")
    return await services.users.authenticate(  # type: ignore[no-any-return]
        key.strip() if scheme.lower() == "bearer" else None)


@router.websocket("/v1/sessions/{session_id}/terminal")
async def terminal(ws: WebSocket, session_id: str, terminal: str | None = None,
                   rows: int = 24, cols: int = 80) -> None:
    terminals = ws.app.state.services.terminals
    try:
        principal = await _principal(ws)
        if terminal:
            term = terminals.get(principal, session_id, terminal)
        else:
            term = await terminals.open(principal, session_id, max(1, min(rows, 1000)),
                                        max(1, min(cols, 1000)))
    except SophonError as exc:
        log.info("terminal for session %s refused: %s", session_id, exc.message)
        await ws.close(code=1008, reason=exc.message[:120])
        return
    await ws.accept()
    await ws.send_text(json.dumps({"type": "terminal", "id": term.id}))
    viewer = term.attach()
    output = asyncio.create_task(_send_output(ws, term, viewer))
    try:
        await _take_input(ws, term)
    except WebSocketDisconnect:
        pass
    finally:
        output.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await output
        ws.app.state.services.terminals.detach(term, viewer)


async def _send_output(ws: WebSocket, term: Terminal, viewer: asyncio.Queue[bytes | None]) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while (data := await viewer.get()) is not None:
            await ws.send_bytes(data)
        await ws.send_text(json.dumps({"type": "exit"} if term.ended.is_set()
                                      else {"type": "detached", "reason": "too far behind; "
                                            "attach again with ?terminal=" + term.id}))
        await ws.close()


async def _take_input(ws: WebSocket, term: Terminal) -> None:
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            return
        try:
            if msg.get("bytes") is not None:
                await term.keys.write(msg["bytes"].decode(errors="replace"))
            elif msg.get("text") is not None:
                control = json.loads(msg["text"])
                if isinstance(control, dict) and control.get("type") == "resize":
                    # A size that cannot be set is no reason to stop taking keys.
                    with contextlib.suppress(BoxRequestError):
                        await term.keys.resize(int(control["rows"]), int(control["cols"]))
        except (BoxError, BoxRequestError):
            return  # the shell has ended; its end reaches the viewer
        except (ValueError, KeyError, TypeError):
            continue  # a control message that is not one: ignored
