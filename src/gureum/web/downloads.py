"""Downloads from the browser: a job's outputs and artifacts, a model version's files and a
dataset version's files, as attachments named after the file.

The session cookie authorizes them as it does the pages (a GET changes nothing, so no CSRF
token). The path in the URL is only ever a key looked up among the rows of the signed-in
workspace's job or version; the bytes come from the content-addressed store by the row's
SHA-256, so no path can reach a file outside them (``..`` is just a name no row has). Another
workspace's job or version is a 404, as in the REST API.
"""

from __future__ import annotations

import re
from typing import TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.server.api.blobs import UNTRUSTED_HEADERS, blob_response
from gureum.server.db.tables import DatasetFile, ModelFile
from gureum.server.errors import ApiError, NotFound
from gureum.server.services import datasets as dataset_svc
from gureum.server.services import jobs as job_svc
from gureum.server.services import models as model_svc
from gureum.web.pages import SignedIn
from gureum.web.render import error_page
from gureum.web.security import secure

router = APIRouter(include_in_schema=False)
MAX_PATH = 1024
VersionFile = TypeVar("VersionFile", ModelFile, DatasetFile)
_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\;]')


def disposition(path: str) -> str:
    """``attachment`` with the file's own name (its last part): plain ASCII in ``filename``,
    the exact name in ``filename*`` (RFC 6266); never a folder, a quote or a control char."""
    name = path.rsplit("/", 1)[-1] or "download"
    ascii_name = _UNSAFE.sub("_", name.encode("ascii", "replace").decode()).replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def _send(request: Request, workspace_id: int, sha256: str, size: int, path: str) -> Response:
    response = blob_response(
        request.app.state.store, workspace_id, sha256, size, "application/octet-stream"
    )
    response.headers.update(UNTRUSTED_HEADERS)
    response.headers["Content-Disposition"] = disposition(path)
    response.headers["Cache-Control"] = "private, no-store"
    return response


def _version_file(
    s: Session, table: type[VersionFile], version_id: int, path: str, label: str
) -> tuple[str, int, str]:
    """A version's file by its exact path (sha256, size, path); 404 in words when it has none."""
    row = s.scalar(select(table).where(table.version_id == version_id, table.path == path))
    if row is None:
        raise NotFound(f"{label} has no file {path[:200]!r}")
    return row.sha256, row.size, row.path


def _refused(request: Request, signed: SignedIn, exc: ApiError) -> Response:
    return secure(error_page(request, signed, exc.status, exc.message))


@router.get("/download/jobs/{job_id}/{path:path}")
def job_output(request: Request, signed: SignedIn, job_id: str, path: str) -> Response:
    """A file the job produced (``GET /v1/jobs/{id}/outputs/{path}``, as an attachment)."""
    try:
        if len(path) > MAX_PATH:
            raise NotFound(f"job {job_id[:64]} has no output of a {len(path)}-character path")
        out = job_svc.find_output(request.app.state.db, signed.principal, job_id[:64], path)
    except ApiError as exc:
        return _refused(request, signed, exc)
    return _send(request, signed.principal.workspace_id, out.sha256, out.size, out.path)


@router.get("/download/models/{name}/versions/{version}/{path:path}")
def model_file(request: Request, signed: SignedIn, name: str, version: str, path: str) -> Response:
    """A file of a model version (weights, config, ...)."""
    ws = signed.principal.workspace_id
    try:
        with request.app.state.db.read() as s:
            model = model_svc.find_model(s, ws, name[:128])
            v = model_svc.resolve_version_row(s, model, version[:32])
            found = _version_file(s, ModelFile, v.id, path, f"{model.name}:{v.version}")
    except ApiError as exc:
        return _refused(request, signed, exc)
    return _send(request, ws, *found)


@router.get("/download/datasets/{name}/versions/{version}/{path:path}")
def dataset_file(
    request: Request, signed: SignedIn, name: str, version: str, path: str
) -> Response:
    """A file of a dataset version."""
    ws = signed.principal.workspace_id
    try:
        with request.app.state.db.read() as s:
            v = dataset_svc.resolve_version(s, ws, name[:128], version[:32])
            found = _version_file(s, DatasetFile, v.id, path, f"{name[:128]}:{v.version}")
    except ApiError as exc:
        return _refused(request, signed, exc)
    return _send(request, ws, *found)
