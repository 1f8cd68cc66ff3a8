"""The Baponi files API: signed upload and download URLs, and listing, for threads.

``/v1/files/blob/{token}`` takes no API key: the signed token in its path is the whole
authority (as with an S3 presigned URL), and it is exempt from the JSON body limit,
taking exactly the length that was signed instead.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from sophon.api.deps import PrincipalDep
from sophon.api.openapi import errors
from sophon.errors import BadRequest, PayloadTooLarge
from sophon.keys import signing_key
from sophon.sandbox.files import ThreadFiles, check_path
from sophon.sandbox.models import THREAD_ID_PATTERN
from sophon.services import Services

router = APIRouter(prefix="/v1/files", tags=["files"])


class FileRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    source: Literal["thread", "volume"] = "thread"
    id: str = Field(pattern=THREAD_ID_PATTERN, description="The thread_id or volume name")
    path: str = Field("", max_length=4096,
                      description="Relative to the thread's root, /home/baponi, or the "
                                  "volume's, /data/<name>")
    content_length: int | None = Field(None, ge=0, description="Upload size in bytes")
    content_type: str | None = Field(None, max_length=255)


class SignedUrlHeader(BaseModel):
    name: str
    value: str


class SignedUrl(BaseModel):
    url: str = Field(description="Send the request here, with `headers`; no API key")
    method: Literal["PUT", "GET"]
    headers: list[SignedUrlHeader] = []
    expires_at: str


class FileEntry(BaseModel):
    path: str = Field(description="Relative to the thread's root")
    size: int
    modified: str | None = None


class FileList(BaseModel):
    files: list[FileEntry]


class Uploaded(BaseModel):
    path: str
    size: int


def _files(request: Request) -> ThreadFiles:
    state = request.app.state
    tf = getattr(state, "thread_files", None)
    if tf is None:
        services: Services = state.services
        tf = state.thread_files = ThreadFiles(services.boxes, services.db,
                                              signing_key(services.settings.data_dir),
                                              services.settings.base_url,
                                              services.quotas,
                                              services.executions.threads.touch)
        tf.node_id = services.executions.node_id
    return tf  # type: ignore[no-any-return]


async def _box(files: ThreadFiles, principal: PrincipalDep, body: FileRequest,
               create: bool = False) -> str:
    """The box whose files the request names: the thread's, or the volume's files box."""
    if body.source == "volume":
        return await files.volume_box(principal.user_id, body.id)
    return await files.box_of(principal.user_id, body.id, create=create)


@router.post("/upload_url", response_model=SignedUrl, responses=errors(
    400, (404, "No such volume of yours (`not_found`)."),
    (413, "`content_length` is over the thread's disk size (`payload_too_large`)."),
    429, 503))
async def upload_url(body: FileRequest, request: Request,
                     principal: PrincipalDep) -> SignedUrl:
    """A URL to PUT exactly `content_length` bytes to `path`, valid for 15 minutes.
    Makes the thread if it does not exist yet, as an execute would (a volume must)."""
    path = check_path(body.path)
    if body.content_length is None:
        raise BadRequest("content_length is required")
    files = _files(request)
    limit = files.boxes.settings.box_disk_mb * 2**20
    if body.content_length > limit:
        raise PayloadTooLarge(f"content_length is over the thread's disk ({limit} bytes)")
    box_id = await _box(files, principal, body, create=True)
    url, expires = files.grant(principal.user_id, box_id, path, "PUT", body.content_length)
    ctype = body.content_type or "application/octet-stream"
    return SignedUrl(url=url, method="PUT", expires_at=expires,
                     headers=[SignedUrlHeader(name="Content-Type", value=ctype)])


@router.post("/download_url", response_model=SignedUrl, responses=errors(400, 404))
async def download_url(body: FileRequest, request: Request,
                       principal: PrincipalDep) -> SignedUrl:
    """A URL to GET the file at `path`, valid for 15 minutes."""
    path = check_path(body.path)
    files = _files(request)
    box_id = await _box(files, principal, body)
    url, expires = files.grant(principal.user_id, box_id, path, "GET")
    return SignedUrl(url=url, method="GET", expires_at=expires)


@router.post("/list", response_model=FileList, responses=errors(400, 404))
async def list_files(body: FileRequest, request: Request,
                     principal: PrincipalDep) -> FileList:
    """Every regular file under `path` (the thread's root by default), recursively;
    `.git` directories and symbolic links are left out."""
    files = _files(request)
    got = await files.list(principal.user_id, await _box(files, principal, body), body.path)
    return FileList(files=[FileEntry.model_validate(f) for f in got])


_REFUSED = (403, "The URL is expired, altered, or for another method (`invalid_signature`).")


@router.put("/blob/{token}", response_model=Uploaded, responses=errors(
    400, _REFUSED, 404, (413, "The body is longer than the signed length.")))
async def put_blob(token: str, request: Request) -> Uploaded:
    """Upload through a signed URL: the body must be exactly the signed length."""
    files = _files(request)
    # Read here, not declared as a parameter: the HTTP server has checked it already.
    declared = request.headers.get("content-length")
    size_given = int(declared) if declared and declared.isdigit() else None
    path, size = await files.put(token, request.stream(), size_given)
    return Uploaded(path=path, size=size)


@router.get("/blob/{token}", responses={
    200: {"description": "The file's bytes", "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
    **errors(400, _REFUSED, 404)})
async def get_blob(token: str, request: Request) -> StreamingResponse:
    """Download through a signed URL, streamed."""
    size, chunks = await _files(request).get(token)
    return StreamingResponse(chunks, media_type="application/octet-stream",
                             headers={"Content-Length": str(size)})

