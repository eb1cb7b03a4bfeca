"""Endpoints: deploy a model version, change traffic, roll back, watch; and their stats."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status
from sqlalchemy import select

from gureum.schemas.common import ErrorBody, Page
from gureum.schemas.endpoints import (
    EndpointCreate,
    EndpointEventOut,
    EndpointOut,
    EndpointStats,
    EndpointUpdate,
    ShadowRecordOut,
)
from gureum.server.db.tables_serving import ShadowRecord
from gureum.server.deps import DbDep, Developer, ServingDep, StoreDep, Viewer
from gureum.server.pagination import PageParams, page_params
from gureum.server.services import endpoints as svc
from gureum.server.services.endpoint_stats import endpoint_stats
from gureum.server.services.endpoints import find_endpoint

router = APIRouter(
    prefix="/endpoints",
    tags=["endpoints"],
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
Name = Annotated[str, Path(max_length=63, description="the endpoint's name")]
Params = Annotated[PageParams, Depends(page_params)]


@router.post("", status_code=status.HTTP_201_CREATED)
def deploy(
    body: EndpointCreate,
    db: DbDep,
    serving: ServingDep,
    store: StoreDep,
    principal: Developer,
    response: Response,
) -> EndpointOut:
    """Create the endpoint (201), or change what an existing one serves (200)."""
    out, created = svc.deploy(
        db, principal, body, serving.secret, serving.data_url, serving.live, store=store
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    if serving.controller is not None:
        serving.controller.wake()
    return out


@router.get("")
def list_endpoints(
    db: DbDep, serving: ServingDep, principal: Viewer, params: Params
) -> Page[EndpointOut]:
    return svc.list_endpoints(db, principal, params, serving.data_url, serving.live)


@router.get("/{name}")
def get_endpoint(name: Name, db: DbDep, serving: ServingDep, principal: Viewer) -> EndpointOut:
    return svc.get_endpoint(db, principal, name, serving.data_url, serving.live)


@router.patch("/{name}")
def update(
    name: Name, body: EndpointUpdate, db: DbDep, serving: ServingDep, principal: Developer
) -> EndpointOut:
    out = svc.update(db, principal, name, body, serving.data_url, serving.live)
    _wake(serving)
    return out


@router.delete("/{name}", status_code=status.HTTP_202_ACCEPTED)
def delete(name: Name, db: DbDep, serving: ServingDep, principal: Developer) -> EndpointOut:
    out = svc.delete(db, principal, name, serving.data_url, serving.live)
    _wake(serving)
    return out


@router.post("/{name}/rollback")
def rollback(name: Name, db: DbDep, serving: ServingDep, principal: Developer) -> EndpointOut:
    out = svc.rollback(db, principal, name, serving.data_url, serving.live)
    _wake(serving)
    return out


@router.post("/{name}/promote")
def promote(name: Name, db: DbDep, serving: ServingDep, principal: Developer) -> EndpointOut:
    out = svc.promote(db, principal, name, serving.data_url, serving.live)
    _wake(serving)
    return out


@router.get("/{name}/events")
def events(
    name: Name, db: DbDep, principal: Viewer, after_seq: Annotated[int, Query(ge=0)] = 0
) -> list[EndpointEventOut]:
    return svc.list_events(db, principal, name, after_seq)


@router.get("/{name}/stats")
def stats(
    name: Name,
    db: DbDep,
    serving: ServingDep,
    principal: Viewer,
    window_s: Annotated[float, Query(gt=0, le=90 * 86400)] = 3600.0,
) -> EndpointStats:
    with db.read() as s:
        ep = find_endpoint(s, principal.workspace_id, name)
        return endpoint_stats(s, ep, window_s, serving.live(name), serving.gauges)


@router.get("/{name}/shadow")
def shadow(
    name: Name,
    db: DbDep,
    principal: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[ShadowRecordOut]:
    with db.read() as s:
        ep = find_endpoint(s, principal.workspace_id, name)
        rows = s.scalars(
            select(ShadowRecord)
            .where(ShadowRecord.endpoint_id == ep.id)
            .order_by(ShadowRecord.time.desc())
            .limit(limit)
        )
        return [ShadowRecordOut.model_validate(r) for r in rows]


def _wake(serving: ServingDep) -> None:
    if serving.controller is not None:
        serving.controller.wake()
