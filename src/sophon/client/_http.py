"""The SDK's HTTP/1.1 on the standard library (``http.client``): a few kept-alive
connections shared by threads, JSON requests, and streamed answers read as they come.

No httpx here: the CLI runs this on every command, and importing httpx alone costs more
than the whole command should take.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode, urlsplit

from sophon.client._common import error_for, split_lines, unreachable

# What a broken or refused connection raises here: socket errors (OSError, TimeoutError)
# and http.client's own (RemoteDisconnected, IncompleteRead, ...).
NETWORK_ERRORS = (OSError, http.client.HTTPException)
_KEEP_IDLE = 4  # idle connections kept for reuse
READ_CHUNK = 65536


def seg(value: str) -> str:
    """One path segment, quoted whole (an id typed by a user may hold anything)."""
    return quote(value, safe="")


def _readable(sock: socket.socket) -> bool:
    if hasattr(select, "poll"):  # any fd number (select() stops at 1024)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


class Response:
    """A streamed answer: read it whole, by chunks or by lines; ``close()`` when done."""

    def __init__(self, owner: Http, conn: http.client.HTTPConnection,
                 raw: http.client.HTTPResponse, reusable: bool) -> None:
        self._http, self._conn, self.raw, self._reusable = owner, conn, raw, reusable
        self.status = raw.status
        self.headers = raw.headers

    def iter_bytes(self) -> Iterator[bytes]:
        try:
            while chunk := self.raw.read1(READ_CHUNK):
                yield chunk
        except NETWORK_ERRORS as exc:
            raise unreachable(self._http.base_url, exc) from exc

    def iter_lines(self) -> Iterator[str]:
        return split_lines(self.iter_bytes())

    def read(self) -> bytes:
        try:
            return self.raw.read()
        except NETWORK_ERRORS as exc:
            raise unreachable(self._http.base_url, exc) from exc

    def json(self) -> Any:
        body = self.read()
        return json.loads(body) if body else None

    def close(self) -> None:
        """Give the connection back if the answer was read to its end, else drop it."""
        if self._reusable and self.raw.isclosed() and not self.raw.will_close:
            self._http.give_back(self._conn)
        else:
            self._conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Http:
    def __init__(self, base_url: str, headers: dict[str, str], timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self.headers = {"User-Agent": "sophon-sdk", "Accept-Encoding": "identity", **headers}
        self.timeout = timeout
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _new(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout)
        conn.connect()
        return conn

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection the server has not closed meanwhile, or a new one."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._new(), False
            if conn.sock is not None and not _readable(conn.sock):
                return conn, True
            conn.close()  # readable while idle: closed by the server (or garbage)

    def give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < _KEEP_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def open(self, method: str, path: str, *, params: dict[str, Any] | None = None,
             json_body: Any = None, content: bytes | BinaryIO | None = None,
             headers: dict[str, str] | None = None, read_timeout: float | None = -1.0,
             check: bool = True) -> Response:
        """Send a request and return its answer unread (raise its error if ``check``).
        ``content`` may be a file, sent as it is read (give its Content-Length).
        ``read_timeout``: seconds a read may wait (None: forever; -1: the client's)."""
        target = self._prefix + path
        if params:
            target += "?" + urlencode({k: v for k, v in params.items() if v is not None})
        all_headers = {**self.headers, **(headers or {})}
        body = content
        if json_body is not None:
            body = json.dumps(json_body).encode()
            all_headers["Content-Type"] = "application/json"
        start = body.tell() if body is not None and not isinstance(body, bytes) else None
        for attempt in (0, 1):
            if attempt and start is not None:
                body.seek(start)  # type: ignore[union-attr]  (sent again from its start)
            try:
                conn, reused = self._take()
            except NETWORK_ERRORS as exc:
                raise unreachable(self.base_url, exc) from exc
            try:
                assert conn.sock is not None
                conn.sock.settimeout(self.timeout if read_timeout == -1.0 else read_timeout)
                conn.request(method, target, body=body, headers=all_headers)
                raw = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError,
                    BrokenPipeError) as exc:
                conn.close()
                if reused and attempt == 0:
                    continue  # a kept-alive connection the server had just closed
                raise unreachable(self.base_url, exc) from exc
            except NETWORK_ERRORS as exc:
                conn.close()
                raise unreachable(self.base_url, exc) from exc
            response = Response(self, conn, raw, reusable=True)
            if check and response.status >= 400:
                with response:
                    raise error_for(response.status, response.read(),
                                    response.headers.get("retry-after"))
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """A request whose answer is JSON (or empty), read whole."""
        with self.open(method, path, **kwargs) as response:
            return response.json()
