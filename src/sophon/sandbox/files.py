"""The files API for threads: signed, expiring, single-purpose URLs back to this server.

A thread's files are its box's home directory, seen inside the box at /home/baponi
(``THREAD_HOME``). ``upload_url``/``download_url`` check the caller owns the thread and
sign a token naming the user, the thread's box, the path, the method (PUT or GET), the
declared length for a PUT and an expiry; ``/v1/files/blob/<token>`` takes no API key,
only the token. File bytes go through boxd's confined file ops in chunks, so neither
side ever holds a whole file.

A volume's files (``source: "volume"``) go through the volume's own files box,
``v<volume id>``, which mounts only that volume, at /data/<name>; its grants name that box.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sophon.box import ids
from sophon.box.bwrap import THREAD_HOME
from sophon.box.manager import BoxManager
from sophon.box.volumes import VolumeMount
from sophon.errors import BadRequest, BoxRequestError, NotFound, PayloadTooLarge, SophonError
from sophon.quotas import Quotas
from sophon.store.owned import owned
from sophon.store.tables import Thread, Volume

BLOB_PATH = "/v1/files/blob/"
URL_TTL = 15 * 60
CHUNK = 1024 * 1024  # per boxd request: 1.33 MiB of base64, well inside a frame


class UrlRefused(SophonError):
    """A signed URL that is expired, altered, or used for what it was not made for."""

    status = 403
    code = "invalid_signature"


class LengthMismatch(BadRequest):
    code = "content_length_mismatch"


def check_path(path: str, *, allow_root: bool = False) -> str:
    """A path relative to the thread's root, without ``..``; 400 otherwise. (boxd checks
    again, and refuses symlinks, when it opens the path.)"""
    if path.startswith("/") or "\x00" in path or "\\" in path:
        raise BadRequest(f"{path!r}: the path must be relative to the thread's root "
                         f"({THREAD_HOME})", )
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadRequest(f"{path!r} leaves the thread's root")
    if not parts and not allow_root:
        raise BadRequest("the path names the thread's root, not a file")
    return "/".join(parts)


@dataclass(frozen=True)
class Grant:
    user_id: str
    box_id: str
    path: str
    method: str  # PUT or GET
    length: int  # the declared size of a PUT; 0 for a GET
    expires: int  # unix seconds


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(key: bytes, grant: Grant) -> str:
    payload = _b64(json.dumps([grant.user_id, grant.box_id, grant.path, grant.method,
                               grant.length, grant.expires], separators=(",", ":")).encode())
    mac = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def verify(key: bytes, token: str, method: str, now: float | None = None) -> Grant:
    payload, _, mac = token.partition(".")
    if not token.isascii():  # compare_digest takes no other str; ours are base64url
        raise UrlRefused("the URL's token is malformed")
    want = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    if not mac or not hmac.compare_digest(mac, want):
        raise UrlRefused("the URL's signature does not match: it was altered or is not ours")
    try:
        user_id, box_id, path, meth, length, expires = json.loads(_unb64(payload))
        grant = Grant(str(user_id), str(box_id), str(path), str(meth), int(length),
                      int(expires))
    except (ValueError, TypeError) as exc:
        raise UrlRefused("the URL's token is malformed") from exc
    if grant.method != method:
        raise UrlRefused(f"this URL is for {grant.method}, not {method}")
    if (time.time() if now is None else now) >= grant.expires:
        raise UrlRefused("this URL has expired; ask for a new one")
    return grant


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class ThreadFiles:
    def __init__(self, boxes: BoxManager, db: async_sessionmaker[AsyncSession],
                 key: bytes, base_url: str, quotas: Quotas,
                 touch: Callable[[str], None], ttl: int = URL_TTL) -> None:
        self.boxes = boxes
        self.quotas = quotas  # a new thread or a woken box counts like an execute's
        self.touch = touch  # a thread used through its files is in use (no expiry)
        self.db = db
        self.key = key
        self.base_url = base_url.rstrip("/")  # SOPHON_PUBLIC_URL, never a request's Host
        self.ttl = ttl
        # In a cluster (sophon/cluster/): the node a thread made here runs on.
        self.node_id: str | None = None

    async def box_of(self, user_id: str, thread: str, create: bool = False) -> str:
        """The box of the caller's thread; another user's (or no) thread is a 404. An
        upload may make the thread, as an execute would."""
        async with self.db() as db:
            try:
                return (await owned(db, Thread, user_id, name=thread, what="thread")).id
            except NotFound:
                if not create:
                    raise
        # The quota checks read the store: not while this request holds a connection.
        await self.quotas.check_disk(user_id, self.boxes.settings.box_disk_mb,
                                     "a new thread")
        box_id = await self.quotas.admit_box(user_id)
        async with self.db() as db:
            db.add(Thread(id=box_id, user_id=user_id, name=thread, node_id=self.node_id))
            try:
                await db.commit()
            except IntegrityError:  # made concurrently by an execute or another upload
                await db.rollback()
                await self.boxes.destroy(box_id)
                return await self.box_of(user_id, thread)
        self.boxes.top_up()
        return box_id

    async def volume_box(self, user_id: str, name: str) -> str:
        """The files box of the caller's volume; another user's (or no) volume is a 404."""
        async with self.db() as db:
            vol = await owned(db, Volume, user_id, name=name, what="volume")
        return ids.box_id(ids.Kind.VOLUME, vol.id)

    async def where(self, user_id: str, box_id: str) -> tuple[str, tuple[VolumeMount, ...] | None]:
        """The root of the files a box id stands for and the volumes to mount, once the
        thread or volume is checked to exist and to be the user's."""
        async with self.db() as db:
            volume_id = ids.key_of(box_id, ids.Kind.VOLUME)
            if volume_id is not None:
                vol = await owned(db, Volume, user_id, volume_id, what="volume",
                                  missing="the volume of this URL no longer exists")
                self.boxes.know_volume(vol.id, vol.size_mb, vol.gid)
                mount = VolumeMount(vol.id, vol.name, vol.gid)
                found: tuple[str, tuple[VolumeMount, ...] | None] = mount.inside, (mount,)
            else:
                await owned(db, Thread, user_id, box_id, what="thread",
                            missing="the thread of this URL no longer exists")
                found = THREAD_HOME, None
                self.touch(box_id)
        await self.quotas.admit_box(user_id, box_id)  # waking it must fit the user's limit
        return found

    async def _owned(self, grant: Grant) -> tuple[str, tuple[VolumeMount, ...] | None]:
        return await self.where(grant.user_id, grant.box_id)

    def grant(self, user_id: str, box_id: str, path: str, method: str,
              length: int = 0) -> tuple[str, str]:
        """The signed URL, on the server's configured public address, and its expiry."""
        expires = int(time.time()) + self.ttl
        token = sign(self.key, Grant(user_id, box_id, path, method, length, expires))
        return f"{self.base_url}{BLOB_PATH}{token}", iso(expires)

    async def list(self, user_id: str, box_id: str, path: str) -> list[dict[str, object]]:
        rel = check_path(path, allow_root=True)
        root, vols = await self.where(user_id, box_id)
        async with self.boxes.use(box_id, volumes=vols) as box:
            try:
                got = await box.tree(root, rel)
            except BoxRequestError as exc:
                if exc.code in ("not_found", "not_a_directory"):
                    return []
                raise
        prefix = rel + "/" if rel else ""
        return [{"path": prefix + str(e["path"]), "size": int(e["size"]),
                 "modified": iso(float(e["mtime"]))}
                for e in got.get("entries", [])  # type: ignore[union-attr]
                if e["type"] == "file"]

    async def put(self, token: str, chunks: AsyncIterator[bytes],
                  declared: int | None) -> tuple[str, int]:
        """Stream a PUT's body into the file, ``CHUNK`` bytes a request to boxd; exactly
        the signed length or nothing."""
        grant = verify(self.key, token, "PUT")
        if declared is not None and declared != grant.length:
            raise LengthMismatch(f"Content-Length is {declared}; this URL takes exactly "
                             f"{grant.length} bytes", )
        root, vols = await self._owned(grant)
        upload = secrets.token_hex(12)
        async with self.boxes.use(grant.box_id, volumes=vols) as box:
            done, buf = 0, bytearray()
            try:
                async for part in chunks:
                    if done + len(buf) + len(part) > grant.length:
                        raise PayloadTooLarge(f"the body is longer than the {grant.length} "
                                             "bytes this URL takes")
                    buf += part
                    while len(buf) >= CHUNK and done + CHUNK < grant.length:
                        await box.put_chunk(root, grant.path, upload, done,
                                            bytes(buf[:CHUNK]))
                        done += CHUNK
                        del buf[:CHUNK]
                if done + len(buf) != grant.length:
                    raise LengthMismatch(f"the body has {done + len(buf)} bytes; this URL "
                                         f"takes exactly {grant.length}")
                await box.put_chunk(root, grant.path, upload, done, bytes(buf),
                                    final=True)
            except BaseException:
                if done:
                    with contextlib.suppress(Exception):
                        await box.abort_put(root, grant.path, upload)
                raise
        return grant.path, grant.length

    async def get(self, token: str) -> tuple[int, AsyncIterator[bytes]]:
        """The file's size and its bytes, read ``CHUNK`` at a time. The first chunk is read
        here, so a missing file or a refused path is an error before anything is sent."""
        grant = verify(self.key, token, "GET")
        root, vols = await self._owned(grant)
        async with self.boxes.use(grant.box_id, volumes=vols) as box:
            try:
                first = await box.read_path(root, grant.path, CHUNK)
            except BoxRequestError as exc:
                if exc.code == "not_found":
                    raise NotFound(f"{grant.path} does not exist") from exc
                raise
        size = int(first["size"])  # type: ignore[call-overload]

        async def stream() -> AsyncIterator[bytes]:
            # The box is held again only while the body is sent: a response that is never
            # sent (the client went away) holds nothing.
            async with self.boxes.use(grant.box_id, volumes=vols) as box:
                data = first["data"]
                assert isinstance(data, bytes)
                sent = 0
                while True:
                    data = data[:size - sent]
                    if data:
                        sent += len(data)
                        yield data
                    if sent >= size:
                        return
                    got = await box.read_path(root, grant.path, CHUNK, sent)
                    data = got["data"]  # type: ignore[assignment]
                    if not data:  # the file shrank while it was read: cut the response
                        raise SophonError(f"{grant.path} changed while it was downloaded")
        return size, stream()
