"""Dashboard pages: lists are rendered here from the same services the REST routes call (so
they work without script and deep-link by URL); live parts are filled by small scripts that
poll the REST API with the session cookie."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, get_args
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from sqlalchemy import select

from gureum.compute.resources import NodeInfo, demand
from gureum.schemas.jobs import ACTIVE_STATES, TERMINAL_STATES, JobOut, JobState
from gureum.server.auth import Principal
from gureum.server.controllers.jobs import JobController
from gureum.server.db.session import Database
from gureum.server.db.tables import Dataset, DatasetVersion, Model, ModelVersion
from gureum.server.deps import Serving
from gureum.server.errors import ApiError
from gureum.server.pagination import PageParams
from gureum.server.services import capture as capture_svc
from gureum.server.services import costs, usage
from gureum.server.services import endpoints as endpoint_svc
from gureum.server.services import jobs as job_svc
from gureum.web.render import Signed, error_page, page, signed_in

router = APIRouter(include_in_schema=False)
SignedIn = Annotated[Signed, Depends(signed_in)]
PAGE_SIZE = 25
OVERVIEW_ROWS = 10
STATES: tuple[str, ...] = get_args(JobState)
Cursor = Annotated[str | None, Query(max_length=512, pattern=r"^[A-Za-z0-9_-]+={0,2}$")]


@dataclass(frozen=True)
class Capacity:
    """One resource of the cluster: what it has and what this workspace's running jobs hold."""

    name: str
    total: float
    used: float

    @property
    def percent(self) -> int:
        return round(100 * self.used / self.total) if self.total else 0


def _capacity(nodes: list[NodeInfo] | None, running: list[JobOut]) -> list[Capacity]:
    if not nodes:
        return []
    totals: dict[str, float] = {}
    for node in nodes:
        for name, amount in node.total.items():
            totals[name] = totals.get(name, 0.0) + amount
    used: dict[str, float] = {}
    for job in running:
        for name, amount in demand(job.resources).items():
            used[name] = used.get(name, 0.0) + amount * job.workers
    shown = [("CPU", "CPUs", 1.0), ("GPU", "GPUs", 1.0), ("memory", "Memory (GiB)", 2.0**30)]
    return [
        Capacity(label, totals[key] / scale, used.get(key, 0.0) / scale)
        for key, label, scale in shown
        if totals.get(key)
    ]


def _next_href(path: str, cursor: str | None, **query: str) -> str | None:
    if cursor is None:
        return None
    return f"{path}?{urlencode({**{k: v for k, v in query.items() if v}, 'cursor': cursor})}"


@router.get("/")
def overview(request: Request, signed: SignedIn) -> Response:
    p = signed.principal
    db = request.app.state.db
    serving: Serving = request.app.state.serving
    active = job_svc.list_jobs(db, p, PageParams(limit=100, cursor=None), state="running").items
    queued = job_svc.list_jobs(db, p, PageParams(limit=OVERVIEW_ROWS, cursor=None), "queued")
    endpoints = endpoint_svc.list_endpoints(
        db, p, PageParams(limit=OVERVIEW_ROWS, cursor=None), serving.data_url, serving.live
    )
    period = usage.current_period()
    report = costs.report(db, p, period, costs.prices_from(request.app.state.settings))
    controller: JobController | None = request.app.state.jobs
    nodes = controller.nodes() if controller is not None else None
    return page(
        request,
        "overview.html",
        signed,
        title="Overview",
        nav="overview",
        running=active[:OVERVIEW_ROWS],
        running_count=len(active),
        queued=queued.items,
        endpoints=endpoints.items,
        more_endpoints=endpoints.next_cursor is not None,
        cost=report,
        period=period,
        capacity=_capacity(nodes, active),
        cluster=controller is not None,
    )


@router.get("/jobs")
def jobs(
    request: Request,
    signed: SignedIn,
    state: Annotated[str, Query(max_length=16)] = "",
    cursor: Cursor = None,
) -> Response:
    if state and state not in STATES:
        return error_page(request, signed, 404, f"There is no job state called {state!r}.")
    try:
        listed = job_svc.list_jobs(
            request.app.state.db,
            signed.principal,
            PageParams(limit=PAGE_SIZE, cursor=cursor),
            state or None,
        )
    except ApiError as exc:
        return error_page(request, signed, exc.status, exc.message)
    return page(
        request,
        "jobs.html",
        signed,
        title="Jobs",
        nav="jobs",
        jobs=listed.items,
        first_page=cursor is None,
        first_href="/jobs" + (f"?{urlencode({'state': state})}" if state else ""),
        next_href=_next_href("/jobs", listed.next_cursor, state=state),
        state=state,
        states=STATES,
    )


@router.get("/jobs/{job_id}")
def job(request: Request, signed: SignedIn, job_id: str) -> Response:
    try:
        out = job_svc.get_job(request.app.state.db, signed.principal, job_id[:64])
    except ApiError as exc:
        return error_page(request, signed, exc.status, exc.message)
    return page(
        request,
        "job.html",
        signed,
        title=f"Job {out.id}",
        nav="jobs",
        job=out,
        terminal=out.state in TERMINAL_STATES,
        active=out.state in ACTIVE_STATES,
    )


@router.get("/endpoints")
def endpoints(request: Request, signed: SignedIn, cursor: Cursor = None) -> Response:
    serving: Serving = request.app.state.serving
    try:
        listed = endpoint_svc.list_endpoints(
            request.app.state.db,
            signed.principal,
            PageParams(limit=PAGE_SIZE, cursor=cursor),
            serving.data_url,
            serving.live,
        )
    except ApiError as exc:
        return error_page(request, signed, exc.status, exc.message)
    return page(
        request,
        "endpoints.html",
        signed,
        title="Endpoints",
        nav="endpoints",
        endpoints=listed.items,
        first_page=cursor is None,
        next_href=_next_href("/endpoints", listed.next_cursor),
    )


@router.get("/endpoints/{name}")
def endpoint(request: Request, signed: SignedIn, name: str) -> Response:
    serving: Serving = request.app.state.serving
    try:
        out = endpoint_svc.get_endpoint(
            request.app.state.db, signed.principal, name[:63], serving.data_url, serving.live
        )
        capture = capture_svc.get_capture(
            request.app.state.db, signed.principal, out.name, serving.gauges
        )
    except ApiError as exc:
        return error_page(request, signed, exc.status, exc.message)
    return page(
        request,
        "endpoint.html",
        signed,
        title=f"Endpoint {out.name}",
        nav="endpoints",
        ep=out,
        capture=capture,
        trained_on=_trained_on(request.app.state.db, signed.principal, out.model, out.version),
    )


def _trained_on(db: Database, principal: Principal, model: str, version: int) -> str:
    """The dataset the served version was trained on: where its next version is curated to
    by default (empty when the version names none, e.g. an imported model)."""
    with db.read() as s:
        name = s.scalar(
            select(Dataset.name)
            .join(DatasetVersion, DatasetVersion.dataset_id == Dataset.id)
            .join(ModelVersion, ModelVersion.dataset_version_id == DatasetVersion.id)
            .join(Model, Model.id == ModelVersion.model_id)
            .where(
                Model.workspace_id == principal.workspace_id,
                Model.name == model,
                ModelVersion.version == version,
            )
        )
    return name or ""
