"""A scripted stand-in for the Anthropic Messages API, for tests and offline demos.

Clients talk to it with the official SDK pointed at ``base_url``; it answers each request with
the next turn of a script (see ``sophon.testing.script``) in the real wire format, and records
every request body so tests can check what the client sent. ``ModelServer`` runs it in-process
on a free loopback port in a background thread; ``sophon testing model-server`` runs it as a
process, and then ``/_sophon/requests`` and ``/_sophon/script`` stand in for the attributes.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
import yaml
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sophon.testing.conversation import Conversation
from sophon.testing.script import (
    ERROR_STATUS,
    SCRIPT_ENDED,
    Reply,
    Script,
    load_script,
    loads_script,
    parse_script,
)
from sophon.testing.wire import (
    build_message,
    count_input_tokens,
    error_body,
    new_id,
    sse_frame,
    stream_events,
)

ScriptSource = Script | Mapping[str, Any] | list[Any] | str | Path | None
"""A script, its parsed data, or the path of a YAML/JSON file (a ``str`` is a path too)."""

START_TIMEOUT = 10.0


def to_script(source: ScriptSource) -> Script:
    if source is None:
        return Script()
    if isinstance(source, str | Path):
        return load_script(source)
    return parse_script(source)


class ScriptPlayer:
    """The server's state: the script, how far it has got, and what it was sent.

    Locked because tests read it from their own thread while the server thread writes it.
    """

    def __init__(self, script: ScriptSource = None) -> None:
        self._lock = threading.Lock()
        self._script = to_script(script)
        self._next = 0
        self._requests: list[dict[str, Any]] = []
        self._headers: list[dict[str, str]] = []

    def load(self, script: ScriptSource) -> None:
        """Replace the script and forget the requests, as if the server had just started."""
        new = to_script(script)
        with self._lock:
            self._script, self._next = new, 0
            self._requests.clear()
            self._headers.clear()

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._requests)

    @property
    def request_headers(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self._headers)

    @property
    def turns_used(self) -> int:
        with self._lock:
            return self._next

    def take(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Reply | None]:
        """Record a request and consume a turn: (turn index, reply or None if no rule matched).

        Past the end of the script every request gets ``SCRIPT_ENDED``.
        """
        with self._lock:
            self._requests.append(body)
            self._headers.append(headers)
            index, turns = self._next, self._script.turns
            if index >= len(turns):
                return index, SCRIPT_ENDED
            self._next += 1
            return index, turns[index].choose(Conversation.from_body(body))


def create_app(player: ScriptPlayer) -> Starlette:
    async def messages(request: Request) -> Response:
        body, failure = await _read_request(request, require=("model", "max_tokens", "messages"))
        if failure is not None:
            return failure
        index, reply = player.take(body, dict(request.headers))
        if reply is None:
            return _error(400, "invalid_request_error",
                          f"scripted model: no rule of turn {index} matched and it has no "
                          "default")
        if reply.delay_ms:
            await asyncio.sleep(reply.delay_ms / 1000)
        if reply.error is not None:
            spec = reply.error
            return _error(spec.status or 500, spec.type or "api_error", spec.message,
                          spec.headers)
        message = build_message(reply, body)
        if body.get("stream") is True:
            return StreamingResponse(_stream(message, reply), media_type="text/event-stream",
                                     headers={"request-id": new_id("req_"),
                                              "cache-control": "no-cache"})
        if reply.stream_error is not None:  # no stream to break: fail the way the API would
            kind = reply.stream_error.type
            return _error(ERROR_STATUS.get(kind, 500), kind, reply.stream_error.message)
        return JSONResponse(message, headers={"request-id": new_id("req_")})

    async def count_tokens(request: Request) -> Response:
        body, failure = await _read_request(request, require=("model", "messages"))
        if failure is not None:
            return failure
        return JSONResponse({"input_tokens": count_input_tokens(body)})

    async def recorded(request: Request) -> Response:
        return JSONResponse({"requests": player.requests, "turns_used": player.turns_used})

    async def replace_script(request: Request) -> Response:
        text = (await request.body()).decode("utf-8", errors="replace")
        try:
            is_json = "json" in request.headers.get("content-type", "")
            script = parse_script(json.loads(text)) if is_json else loads_script(text)
        except (ValueError, ValidationError, yaml.YAMLError) as exc:
            return _error(400, "invalid_request_error", f"bad script: {exc}")
        player.load(script)
        return JSONResponse({"turns": len(script.turns)})

    return Starlette(routes=[
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        Route("/_sophon/requests", recorded, methods=["GET"]),
        Route("/_sophon/script", replace_script, methods=["POST"]),
    ])


async def _read_request(request: Request, *,
                        require: tuple[str, ...]) -> tuple[dict[str, Any], Response | None]:
    """The JSON body, or an error response shaped like the real API's."""
    authorization = request.headers.get("authorization", "")
    if not request.headers.get("x-api-key") and not authorization.lower().startswith("bearer "):
        return {}, _error(401, "authentication_error", "x-api-key header is required")
    try:
        body = json.loads(await request.body())
    except ValueError:
        return {}, _error(400, "invalid_request_error", "request body is not valid JSON")
    if not isinstance(body, dict):
        return {}, _error(400, "invalid_request_error", "request body must be a JSON object")
    problem = _problem(body, require)
    if problem is not None:
        return body, _error(400, "invalid_request_error", problem)
    return body, None


ROLES = ("user", "assistant", "system")


def _problem(body: dict[str, Any], require: tuple[str, ...]) -> str | None:
    for key in require:
        if key not in body:
            return f"{key}: Field required"
    if not isinstance(body["model"], str) or not body["model"]:
        return "model: Input should be a non-empty string"
    max_tokens = body.get("max_tokens", 1)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Input should be an integer of at least 1"
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages: Input should be a non-empty list"
    for i, message in enumerate(messages):
        # Claude Code (2.1) sends "system" messages between turns as well, and the API
        # takes them, so the stand-in must too.
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return f"messages.{i}.role: Input should be 'user', 'assistant' or 'system'"
        if not isinstance(message.get("content"), str | list):
            return f"messages.{i}.content: Input should be a string or a list of blocks"
    return None


def _error(status: int, kind: str, message: str,
           headers: Mapping[str, str] | None = None) -> JSONResponse:
    request_id = new_id("req_")
    return JSONResponse(error_body(kind, message, request_id), status_code=status,
                        headers={"request-id": request_id, **(headers or {})})


async def _stream(message: dict[str, Any], reply: Reply) -> AsyncIterator[bytes]:
    for number, event in enumerate(stream_events(message, reply.stream_error)):
        if number and reply.chunk_delay_ms:
            await asyncio.sleep(reply.chunk_delay_ms / 1000)
        yield sse_frame(event)


class ModelServer:
    """The scripted server on a loopback port, served from a background thread.

    Use as a context manager (``with ModelServer(script) as srv: ... srv.url``) or call
    ``start()``/``stop()``. Port 0 picks a free port; ``url`` says which.
    """

    def __init__(self, script: ScriptSource = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.player = ScriptPlayer(script)
        self.app = create_app(self.player)
        self.host = host
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The base URL to hand to the SDK (``Anthropic(base_url=srv.url, ...)``)."""
        if self._server is None:
            raise RuntimeError("the model server is not running")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of the /v1/messages requests that reached the script, in order."""
        return self.player.requests

    @property
    def request_headers(self) -> list[dict[str, str]]:
        """The headers of those same requests (lower-case names), in the same order."""
        return self.player.request_headers

    def set_script(self, script: ScriptSource) -> None:
        """Replace the script and forget recorded requests; the server keeps running."""
        self.player.load(script)

    def start(self) -> ModelServer:
        if self._server is not None:
            raise RuntimeError("the model server is already running")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._port))
        except OSError:
            sock.close()
            raise
        self._socket, self._port = sock, int(sock.getsockname()[1])
        config = uvicorn.Config(self.app, log_config=None, log_level="warning",
                                access_log=False, lifespan="off", timeout_graceful_shutdown=1)
        server = self._server = uvicorn.Server(config)
        thread = self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                                 name="sophon-model-server", daemon=True)
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        if not server.started:
            self.stop()
            raise RuntimeError("the model server did not start")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and wait for the thread; safe to call twice."""
        server, thread, sock = self._server, self._thread, self._socket
        self._server = self._thread = self._socket = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(timeout)
        if sock is not None:
            sock.close()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def serve_forever(script: ScriptSource, *, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run the server in the foreground until interrupted (what the CLI command does)."""
    uvicorn.run(create_app(ScriptPlayer(script)), host=host, port=port, log_level="warning",
                access_log=False, lifespan="off")
