"""Retrain pipelines: create, list, change, start a run, follow it, cancel or approve it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status

from gureum.schemas.common import ErrorBody, Page
from gureum.schemas.pipelines import (
    ApprovalIn,
    PipelineCreate,
    PipelineOut,
    PipelineUpdate,
    RunEventOut,
    RunOut,
)
from gureum.server.deps import DbDep, Developer, Viewer
from gureum.server.pagination import PageParams, page_params
from gureum.server.services import pipelines as svc

router = APIRouter(
    prefix="/pipelines",
    tags=["pipelines"],
    responses={
        403: {"model": ErrorBody},
        404: {"model": ErrorBody},
        409: {"model": ErrorBody},
        422: {"model": ErrorBody},
    },
)
Name = Annotated[str, Path(max_length=64, description="the pipeline's name")]
Run = Annotated[
    str, Path(max_length=20, pattern=r"^([0-9]+|latest)$", description="a run's number or latest")
]
Params = Annotated[PageParams, Depends(page_params)]


def _wake(request: Request) -> None:
    request.app.state.pipelines.wake()


@router.post("", status_code=status.HTTP_201_CREATED)
def create(body: PipelineCreate, db: DbDep, principal: Developer) -> PipelineOut:
    """A retrain loop for a model served on an endpoint; it runs when started or triggered."""
    return svc.create(db, principal, body)


@router.get("")
def list_pipelines(db: DbDep, principal: Viewer, params: Params) -> Page[PipelineOut]:
    return svc.list_pipelines(db, principal, params)


@router.get("/{name}")
def get_pipeline(name: Name, db: DbDep, principal: Viewer) -> PipelineOut:
    return svc.get_pipeline(db, principal, name)


@router.patch("/{name}")
def update(name: Name, body: PipelineUpdate, db: DbDep, principal: Developer) -> PipelineOut:
    """Change the settings given (the others stay), checked as at creation; ``null`` clears
    an optional one and ``enabled: false`` pauses the triggers. While a run is in progress
    only the triggers may change (409 ``run_in_progress``)."""
    return svc.update(db, principal, name, body)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete(name: Name, db: DbDep, principal: Developer) -> Response:
    """The pipeline and its runs' records (what they made stays); 409 while a run is active."""
    svc.delete(db, principal, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/runs", status_code=status.HTTP_202_ACCEPTED)
def start_run(name: Name, db: DbDep, principal: Developer, request: Request) -> RunOut:
    """Start a run now (409 ``run_in_progress`` while one is active)."""
    out = svc.start_run(db, principal, name)
    _wake(request)
    return out


@router.get("/{name}/runs")
def list_runs(name: Name, db: DbDep, principal: Viewer, params: Params) -> Page[RunOut]:
    """Newest first."""
    return svc.list_runs(db, principal, name, params)


@router.get("/{name}/runs/{run}")
def get_run(name: Name, run: Run, db: DbDep, principal: Viewer) -> RunOut:
    return svc.get_run(db, principal, name, run)


@router.get("/{name}/runs/{run}/events")
def events(
    name: Name,
    run: Run,
    db: DbDep,
    principal: Viewer,
    after: Annotated[int, Query(ge=0)] = 0,
) -> list[RunEventOut]:
    """The run's log: each step's start and end, what it recorded, every decision."""
    return svc.list_events(db, principal, name, run, after)


@router.post("/{name}/runs/{run}/cancel")
def cancel(name: Name, run: Run, db: DbDep, principal: Developer, request: Request) -> RunOut:
    """Ask the run to stop: its jobs are cancelled and its canary rolled back."""
    out = svc.cancel(db, principal, name, run)
    _wake(request)
    return out


@router.post("/{name}/runs/{run}/approve")
def approve(
    name: Name, run: Run, body: ApprovalIn, db: DbDep, principal: Developer, request: Request
) -> RunOut:
    """Approve (or reject) a run waiting for a person before its canary."""
    out = svc.approve(db, principal, name, run, body)
    _wake(request)
    return out
