"""TLS to a connector's host: where a placeholder becomes the real credential.

Only for a connector's hosts, the door answers the box's TLS with a certificate from
Sophon's CA (ca.py), reads one request, puts the real value where the box has the
placeholder (an ``Authorization`` header: Bearer, token, or git's Basic), checks a
GitHub push against the connector's rules, and sends it on over TLS it verifies
against the real host. One request per connection (``Connection: close`` both ways),
so every request is seen; the answer goes back with connector values masked.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass

from sophon.egress.policy import Refusal
from sophon.egress.splice import Scrubber, Tally

MAX_HEAD = 64 * 1024
CHUNK = 256 * 1024
HOP_HEADERS = frozenset({"connection", "proxy-connection", "keep-alive", "te", "trailer",
                         "upgrade", "proxy-authorization"})
_PUSH_PATH = re.compile(r"^/([^/]+)/([^/]+?)(?:\.git)?/(?:git-receive-pack|info/refs)")


@dataclass(frozen=True)
class Credential:
    """One connector as the door applies it on one host."""

    name: str
    type: str  # github, http
    value: str
    placeholder: str
    header: str | None = None  # http: the header it is sent in
    push: tuple[str, ...] = ()  # github: owner/repo[:branch-glob], empty: anywhere


def swap_authorization(value: str, creds: list[Credential]) -> str:
    """An Authorization header with a placeholder replaced by its real value: in a
    Bearer or ``token`` header, or inside git's Basic ``user:password``."""
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(rest.strip(), validate=True).decode()
            user, sep, password = decoded.partition(":")
        except (ValueError, UnicodeDecodeError):
            return value
        for c in creds:
            if sep and password == c.placeholder:
                raw = f"{user}:{c.value}".encode()
                return f"{scheme} {base64.b64encode(raw).decode()}"
        return value
    for c in creds:
        if rest.strip() == c.placeholder:
            return f"{scheme} {c.value}"
    return value


def rewrite_headers(headers: list[tuple[str, str]], creds: list[Credential]
                    ) -> list[tuple[str, str]]:
    out = []
    for k, v in headers:
        low = k.lower()
        if low in HOP_HEADERS or low == "accept-encoding":
            continue
        if low == "authorization":
            v = swap_authorization(v, creds)
        out.append((k, v))
    for c in creds:
        if c.type == "http" and c.header:
            out = [(k, v) for k, v in out if k.lower() != c.header.lower()]
            out.append((c.header, c.value))
    # Plain bytes back, so the answer's connector values can be masked.
    out += [("Accept-Encoding", "identity"), ("Connection", "close")]
    return out


def push_refusal(method: str, path: str, query: str, body_start: bytes,
                 creds: list[Credential]) -> Refusal | None:
    """Whether a git push (smart HTTP receive-pack) goes past a GitHub connector's
    rules: the repository from the URL, each branch from the pushed commands."""
    rules = [r for c in creds if c.type == "github" for r in c.push]
    m = _PUSH_PATH.match(path)
    if not rules or m is None:
        return None
    if path.endswith("/info/refs") and "service=git-receive-pack" not in query:
        return None
    repo = f"{m.group(1)}/{m.group(2)}".lower()
    allowed = [r for r in rules if r.partition(":")[0] == repo]
    if not allowed:
        return Refusal("push_not_allowed", f"pushes to {repo} are not allowed by this "
                                           "session's GitHub connector")
    if method != "POST" or any(":" not in r for r in allowed):
        return None
    globs = [r.partition(":")[2] for r in allowed]
    for ref in pushed_refs(body_start):
        branch = ref.removeprefix("refs/heads/")
        if branch == ref or not any(fnmatch.fnmatchcase(branch, g) for g in globs):
            return Refusal("push_not_allowed", f"a push to {ref} of {repo} is not allowed "
                                               f"by this session's GitHub connector "
                                               f"(allowed: {', '.join(globs)})")
    return None


def pushed_refs(body: bytes) -> list[str]:
    """The refs of a receive-pack request's commands: pkt-lines of ``old new ref``."""
    refs, i = [], 0
    while i + 4 <= len(body):
        try:
            size = int(body[i:i + 4], 16)
        except ValueError:
            break
        if size == 0:
            break
        line = body[i + 4:i + size].split(b"\0")[0].strip()
        parts = line.split(b" ")
        if len(parts) == 3:
            refs.append(parts[2].decode(errors="replace"))
        i += size
    return refs


async def read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise ValueError(f"a request head over {MAX_HEAD} bytes") from None


async def peek_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    """The start of a request body as it came (read so a push can be checked; sent on
    unchanged): up to 64 KiB of a Content-Length body, or its first chunk."""
    lower = {k.lower(): v for k, v in headers}
    if "chunked" in lower.get("transfer-encoding", "").lower():
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        data = await reader.readexactly(min(size, 64 * 1024)) if size else b""
        return size_line + data
    length = int(lower.get("content-length", "0") or 0)
    return await reader.readexactly(min(length, 64 * 1024)) if length else b""


def chunk_payload(raw: bytes, chunked: bool) -> bytes:
    """The payload bytes in ``raw`` (peek_body's output) for pkt-line parsing."""
    if not chunked:
        return raw
    return raw.split(b"\r\n", 1)[1] if b"\r\n" in raw else b""


async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                count: Callable[[int], None], idle: float,
                scrub: Scrubber | None = None) -> None:
    while data := await asyncio.wait_for(reader.read(CHUNK), idle):
        count(len(data))
        if scrub is not None:
            data = scrub.feed(data)
        writer.write(data)
        await writer.drain()
    if scrub is not None and (tail := scrub.flush()):
        writer.write(tail)
        await writer.drain()


async def exchange(box_r: asyncio.StreamReader, box_w: asyncio.StreamWriter,
                   up_r: asyncio.StreamReader, up_w: asyncio.StreamWriter,
                   first: bytes, tally: Tally, values: list[bytes], idle: float) -> None:
    """Send the rewritten request (``first``: head and the body's start), then the rest
    of its body, and the answer back, until the host closes."""
    def out(n: int) -> None:
        tally.bytes_out += n

    def back(n: int) -> None:
        tally.bytes_in += n

    up_w.write(first)
    out(len(first))
    await up_w.drain()
    sending = asyncio.create_task(relay(box_r, up_w, out, idle))
    try:
        await relay(up_r, box_w, back, idle, Scrubber(values))
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)

