"""Dashboard pages for the data flywheel: retrain pipelines, their runs (steps, decisions and
the run's log) and the drift of the endpoint a pipeline watches.

Rendered from the services the REST routes call (``services/pipelines.py``,
``services/drift.py``). Starting, cancelling and approving a run are calls to the REST API
from ``static/ops.js`` (developers and up, with the session's CSRF token), as the job page's
cancel is: a viewer's page has no such button and the API answers a viewer's call with 403.
Editing a pipeline is a PATCH from ``static/pipeline_edit.js`` under the same rules; the drift
page's chart over time is drawn by ``static/drift_chart.js`` from the REST history route.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from gureum.schemas.pipelines import ACTIVE_RUN_STATES, RunOut
from gureum.server.errors import ApiError
from gureum.server.pagination import PageParams
from gureum.server.services import drift as drift_svc
from gureum.server.services import pipelines as pipeline_svc
from gureum.web.pages import PAGE_SIZE, Cursor, SignedIn, _next_href
from gureum.web.render import error_page, page

router = APIRouter(include_in_schema=False)
# The drift windows the page offers (seconds -> words); the API takes any 60 s .. 90 days.
MIN_WINDOW_S, MAX_WINDOW_S = 60, 90 * 86_400
WINDOWS = {3600: "1 hour", 86_400: "1 day", 7 * 86_400: "7 days", 30 * 86_400: "30 days"}


def _metric_rows(
    metrics: dict[str, dict[str, Any]],
) -> tuple[list[str], list[tuple[str, list[Any]]]]:
    """The run's evaluation side by side: columns (candidate, production) and a row per metric
    with a value per column; numbers only, as the models page compares them."""
    roles: list[str] = [r for r in ("candidate", "production") if r in metrics]
    roles += sorted(r for r in metrics if r not in roles)
    names = sorted(
        {
            k
            for role in roles
            for k, v in (metrics.get(role) or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
    )
    return roles, [(n, [(metrics.get(r) or {}).get(n) for r in roles]) for n in names]


def _version_href(label: str | None, kind: str) -> str | None:
    """A deep link to a dataset or model version named ``NAME:V``."""
    if not label or ":" not in label:
        return None
    name, version = label.rsplit(":", 1)
    return f"/{kind}/{name}/versions/{version}" if version.isdigit() else None


@router.get("/pipelines")
def pipelines(request: Request, signed: SignedIn, cursor: Cursor = None) -> Response:
    try:
        listed = pipeline_svc.list_pipelines(
            request.app.state.db, signed.principal, PageParams(limit=PAGE_SIZE, cursor=cursor)
        )
    except ApiError as exc:
        return error_page(request, signed, exc.status, exc.message)
    return page(
        request,
        "pipelines.html",
        signed,
        title="Pipelines",
        nav="pipelines",
        pipelines=listed.items,
        first_page=cursor is None,
        first_href="/pipelines",
        next_href=_next_href("/pipelines", listed.next_cursor),
    )


@router.get("/pipelines/{name}")
def pipeline(request: Request, signed: SignedIn, name: str, cursor: Cursor = None) -> Response:
    db = request.app.state.db
    try:
        out = pipeline_svc.get_pipeline(db, signed.principal, name[:64])
        runs = pipeline_svc.list_runs(
            db, signed.principal, out.name, PageParams(limit=PAGE_SIZE, cursor=cursor)
        )
    except ApiError as exc:
        return error_page(request, signed, exc.status, exc.message)
    here = f"/pipelines/{out.name}"
    return page(
        request,
        "pipeline.html",
        signed,
        title=f"Pipeline {out.name}",
        nav="pipelines",
        pl=out,
        config=out.config.model_dump(exclude={"name", "model", "endpoint", "dataset"}),
        runs=runs.items,
        first_page=cursor is None,
        first_href=here,
        next_href=_next_href(here, runs.next_cursor),
    )


def _run_page(request: Request, signed: SignedIn, name: str, run: RunOut) -> Response:
    db = request.app.state.db
    events = pipeline_svc.list_events(db, signed.principal, name, str(run.number))
    roles, metric_rows = _metric_rows(run.metrics)
    return page(
        request,
        "pipeline_run.html",
        signed,
        title=f"Run {run.number} of {name}",
        nav="pipelines",
        run=run,
        active=run.state in ACTIVE_RUN_STATES,
        events=events,
        roles=roles,
        metric_rows=metric_rows,
        dataset_href=_version_href(run.dataset_version, "datasets"),
        candidate_href=_version_href(run.candidate, "models"),
        production_href=_version_href(run.production, "models"),
    )


@router.get("/pipelines/{name}/runs/{number}")
def pipeline_run(request: Request, signed: SignedIn, name: str, number: str) -> Response:
    if not number.isdigit() or len(number) > 9:
        return error_page(request, signed, 404, f"A run is a number, not {number[:20]!r}.")
    try:
        run = pipeline_svc.get_run(request.app.state.db, signed.principal, name[:64], number)
        return _run_page(request, signed, run.pipeline, run)
    except ApiError as exc:
        return error_page(request, signed, exc.status, exc.message)


@router.get("/pipelines/{name}/drift")
def pipeline_drift(
    request: Request,
    signed: SignedIn,
    name: str,
    window: Annotated[int, Query()] = drift_svc.DEFAULT_WINDOW_S,
) -> Response:
    """The drift of the pipeline's endpoint: live inputs against the served model's training
    data (what a pipeline's ``on_drift`` trigger compares)."""
    if not MIN_WINDOW_S <= window <= MAX_WINDOW_S:
        message = f"The window is {MIN_WINDOW_S} seconds to 90 days, not {window} seconds."
        return error_page(request, signed, 422, message)
    db = request.app.state.db
    try:
        out = pipeline_svc.get_pipeline(db, signed.principal, name[:64])
    except ApiError as exc:
        return error_page(request, signed, exc.status, exc.message)
    report, problem = None, ""
    try:
        report = drift_svc.endpoint_drift(
            db, request.app.state.store, signed.principal, out.endpoint, window
        )
    except ApiError as exc:  # said on the page: the pipeline exists, its drift cannot be told
        problem = exc.message
    return page(
        request,
        "pipeline_drift.html",
        signed,
        title=f"Drift of {out.endpoint}",
        nav="pipelines",
        pl=out,
        report=report,
        problem=problem,
        window=window,
        windows=WINDOWS,
        buckets=min(drift_svc.DEFAULT_BUCKETS, window // drift_svc.MIN_BUCKET_S),
        history_calls=drift_svc.HISTORY_CALLS,
    )
