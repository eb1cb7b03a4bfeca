"""Model registry: register versions with lineage, read them, set gates, promote."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, status

from gureum.schemas.common import NAME_PATTERN, ErrorBody, Page
from gureum.schemas.models import (
    ModelFileOut,
    ModelOut,
    ModelUpdate,
    ModelVersionOut,
    PromoteOut,
    PromoteRequest,
    VersionCreate,
)
from gureum.server.deps import DbDep, Developer, StoreDep, Viewer
from gureum.server.pagination import PageParams, page_params
from gureum.server.services import models as svc
from gureum.server.services import models_gates as gates

router = APIRouter(
    prefix="/models",
    tags=["models"],
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)

Name = Annotated[str, Path(pattern=NAME_PATTERN, description="model name (lowercase)")]
Ref = Annotated[str, Path(description='a version number, "latest" or "production"')]
Params = Annotated[PageParams, Depends(page_params)]


@router.get("")
def list_models(db: DbDep, principal: Viewer, params: Params) -> Page[ModelOut]:
    return svc.list_models(db, principal, params)


@router.get("/{name}")
def get_model(name: Name, db: DbDep, principal: Viewer) -> ModelOut:
    return svc.get_model(db, principal, name)


@router.patch("/{name}", responses={403: {"model": ErrorBody}})
def update_model(name: Name, body: ModelUpdate, db: DbDep, principal: Developer) -> ModelOut:
    return svc.update_model(db, principal, name, body)


@router.post(
    "/{name}/versions",
    status_code=status.HTTP_201_CREATED,
    responses={400: {"model": ErrorBody}},
)
def register_version(
    name: Name, body: VersionCreate, db: DbDep, store: StoreDep, principal: Developer
) -> ModelVersionOut:
    return svc.register_version(db, store, principal, name, body)


@router.get("/{name}/versions")
def list_versions(
    name: Name, db: DbDep, principal: Viewer, params: Params
) -> Page[ModelVersionOut]:
    return svc.list_versions(db, principal, name, params)


@router.get("/{name}/versions/{version}")
def get_version(name: Name, version: Ref, db: DbDep, principal: Viewer) -> ModelVersionOut:
    return svc.get_version(db, principal, name, version)


@router.get("/{name}/versions/{version}/files")
def list_files(
    name: Name, version: Ref, db: DbDep, principal: Viewer, params: Params
) -> Page[ModelFileOut]:
    return svc.list_files(db, principal, name, version, params)


@router.post(
    "/{name}/versions/{version}/promote",
    responses={403: {"model": ErrorBody}, 409: {"model": ErrorBody}},
)
def promote(
    name: Name, version: Ref, body: PromoteRequest, db: DbDep, principal: Developer
) -> PromoteOut:
    return gates.promote(db, principal, name, version, body)
