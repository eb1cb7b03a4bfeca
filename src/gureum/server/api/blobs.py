"""Blobs: ask which are missing, upload (one streamed PUT, or a tar batch), download."""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Path, Request, Response, status
from fastapi.responses import FileResponse, StreamingResponse

from gureum.datasets.streams import body_reader
from gureum.schemas.common import ErrorBody
from gureum.schemas.datasets import SHA256_PATTERN, BatchOut, BlobOut, MissingOut, MissingRequest
from gureum.server.deps import DbDep, Developer, SettingsDep, StoreDep, Viewer
from gureum.server.services import blobs as svc
from gureum.storage.store import ArtifactStore

router = APIRouter(
    prefix="/blobs",
    tags=["blobs"],
    responses={
        400: {"model": ErrorBody},
        404: {"model": ErrorBody},
        413: {"model": ErrorBody},
    },
)

Sha256 = Annotated[str, Path(pattern=SHA256_PATTERN, description="lowercase hex SHA-256")]


def binary_body(media_type: str) -> dict[str, Any]:
    """OpenAPI for a raw streamed request body (FastAPI cannot infer it from a signature)."""
    return {
        "requestBody": {
            "required": True,
            "content": {media_type: {"schema": {"type": "string", "format": "binary"}}},
        }
    }


def check_length(request: Request, limit: int, what: str = "file") -> None:
    """Refuse a declared body over the limit before reading a byte of it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise svc.too_large(limit, what)


@router.post("/missing")
def missing(body: MissingRequest, store: StoreDep, principal: Developer) -> MissingOut:
    return svc.missing(store, principal, body.sha256)


@router.put(
    "/{sha256}",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=binary_body("application/octet-stream"),
)
async def put_blob(
    sha256: Sha256,
    request: Request,
    db: DbDep,
    store: StoreDep,
    settings: SettingsDep,
    principal: Developer,
) -> BlobOut:
    check_length(request, settings.max_file_bytes)
    body = body_reader(request.stream())
    return await to_thread.run_sync(svc.put_blob, db, store, settings, principal, sha256, body)


@router.post(
    "/batch", status_code=status.HTTP_201_CREATED, openapi_extra=binary_body("application/x-tar")
)
async def put_batch(
    request: Request, db: DbDep, store: StoreDep, settings: SettingsDep, principal: Developer
) -> BatchOut:
    check_length(request, svc.batch_limit(settings), "batch")
    body = body_reader(request.stream())
    return await to_thread.run_sync(svc.put_batch, db, store, settings, principal, body)


@router.get(
    "/{sha256}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def get_blob(sha256: str, store: StoreDep, principal: Viewer) -> Response:
    size = svc.blob_size_or_404(store, principal, sha256)
    return blob_response(store, principal.workspace_id, sha256, size)


# Types a browser may show in place: pictures and plain data, never markup or script.
INLINE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "text/plain", "text/csv"}
    | {"application/json"}
)
# Blobs are user content (uploads, job outputs) on the dashboard's origin: whatever they hold,
# a browser runs none of it (no script, no plugin, no frame) and guesses no other type.
UNTRUSTED_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; sandbox",
    "X-Content-Type-Options": "nosniff",
}


def blob_response(
    store: ArtifactStore, workspace_id: int, sha256: str, size: int, media_type: str | None = None
) -> Response:
    """A blob's bytes: the file itself from a local store, else streamed from the object store.
    Anything but a picture or plain data (HTML, SVG, ...) is a download, never a page."""
    headers = dict(UNTRUSTED_HEADERS)
    if media_type not in INLINE_TYPES:
        media_type = "application/octet-stream"
        headers["Content-Disposition"] = "attachment"
    path = store.local_path(workspace_id, sha256)
    if path is not None:
        return FileResponse(path, media_type=media_type, headers=headers)
    return StreamingResponse(
        store.iter_blob(workspace_id, sha256),
        media_type=media_type,
        headers={**headers, "Content-Length": str(size)},
    )
