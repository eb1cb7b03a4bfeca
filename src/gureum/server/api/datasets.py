"""Datasets: push versions (from uploaded blobs or an archive), curate them from captured
traffic, read, list, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from anyio import to_thread
from fastapi import APIRouter, Depends, Path, Query, Request, status

from gureum.datasets.streams import body_reader
from gureum.schemas.common import NAME_PATTERN, ErrorBody, Page
from gureum.schemas.datasets import CurateRequest, DatasetOut, FileOut, PushRequest, VersionOut
from gureum.server.api.blobs import binary_body, check_length
from gureum.server.deps import DbDep, Developer, SettingsDep, StoreDep, Viewer
from gureum.server.pagination import Cursor, Limit, PageParams, page_params
from gureum.server.services import curate as curation
from gureum.server.services import dataset_push as push
from gureum.server.services import datasets as svc

router = APIRouter(
    prefix="/datasets",
    tags=["datasets"],
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)

Name = Annotated[str, Path(pattern=NAME_PATTERN, description="dataset name (lowercase)")]
Ref = Annotated[str, Path(description='a version number, or "latest"')]
Params = Annotated[PageParams, Depends(page_params)]


@router.get("")
async def list_datasets(
    db: DbDep, principal: Viewer, limit: Limit = 50, cursor: Cursor = None
) -> Page[DatasetOut]:
    # The hottest read of the control plane: async with one explicit thread hop for the query
    # (a sync route pays a second hop to serialize), and no nested page dependency.
    params = PageParams(limit=limit, cursor=cursor)
    return await to_thread.run_sync(svc.list_datasets, db, principal, params)


@router.get("/{name}")
def get_dataset(name: Name, db: DbDep, principal: Viewer) -> DatasetOut:
    return svc.get_dataset(db, principal, name)


@router.delete(
    "/{name}", status_code=status.HTTP_204_NO_CONTENT, responses={409: {"model": ErrorBody}}
)
def delete_dataset(name: Name, db: DbDep, store: StoreDep, principal: Developer) -> None:
    svc.delete_dataset(db, store, principal, name)


@router.post(
    "/{name}/versions",
    status_code=status.HTTP_201_CREATED,
    responses={400: {"model": ErrorBody}, 413: {"model": ErrorBody}},
)
def push_version(
    name: Name,
    body: PushRequest,
    db: DbDep,
    store: StoreDep,
    settings: SettingsDep,
    principal: Developer,
) -> VersionOut:
    opts = push.PushOptions(
        message=body.message,
        validation_ratio=body.validation_ratio,
        seed=body.seed,
        description=body.description,
    )
    return push.push_version(db, store, settings, principal, name, body.files, opts)


@router.post("/{name}/curate", status_code=status.HTTP_201_CREATED)
def curate(
    name: Name,
    body: CurateRequest,
    db: DbDep,
    store: StoreDep,
    settings: SettingsDep,
    principal: Developer,
) -> VersionOut:
    """The next version of ``name`` from an endpoint's captured calls and their feedback,
    merged with a base version (see docs/flywheel.md for each recipe's rules)."""
    return curation.curate(db, store, settings, principal, name, body)


@router.post(
    "/{name}/versions/archive",
    status_code=status.HTTP_201_CREATED,
    responses={400: {"model": ErrorBody}, 413: {"model": ErrorBody}},
    openapi_extra=binary_body("application/octet-stream"),
)
async def push_archive(
    name: Name,
    request: Request,
    db: DbDep,
    store: StoreDep,
    settings: SettingsDep,
    principal: Developer,
    format: Annotated[
        Literal["zip", "tar", "tar.gz"] | None,
        Query(description="archive format; told from the first bytes when left out"),
    ] = None,
    validation_ratio: Annotated[float, Query(ge=0.0, lt=1.0)] = 0.2,
    seed: int = 0,
    # In the query string, so short enough that any URL stays under the HTTP server's 64 KiB
    # request-line limit (which answers in plain text, outside our error shape).
    message: Annotated[str, Query(max_length=2_000)] = "",
    description: Annotated[str | None, Query(max_length=2_000)] = None,
) -> VersionOut:
    check_length(request, push.archive_limits(settings).max_body_bytes, "archive")
    opts = push.PushOptions(message, validation_ratio, seed, description)
    body = body_reader(request.stream())
    return await to_thread.run_sync(
        push.push_archive, db, store, settings, principal, name, body, format, opts
    )


@router.get("/{name}/versions")
def list_versions(name: Name, db: DbDep, principal: Viewer, params: Params) -> Page[VersionOut]:
    return svc.list_versions(db, principal, name, params)


@router.get("/{name}/versions/{version}")
def get_version(name: Name, version: Ref, db: DbDep, principal: Viewer) -> VersionOut:
    return svc.get_version(db, principal, name, version)


@router.delete(
    "/{name}/versions/{version}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={409: {"model": ErrorBody}},
)
def delete_version(
    name: Name, version: Ref, db: DbDep, store: StoreDep, principal: Developer
) -> None:
    svc.delete_version(db, store, principal, name, version)


@router.get("/{name}/versions/{version}/files")
def list_files(
    name: Name, version: Ref, db: DbDep, principal: Viewer, params: Params
) -> Page[FileOut]:
    return svc.list_files(db, principal, name, version, params)
