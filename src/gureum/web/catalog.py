"""Dashboard pages for models, datasets and consumers (with their usage and invoices).

Lists filter and page by cursor as the jobs list does; each model version and dataset version
has its own URL. Admins manage consumers on their page (plan, limits, capture, keys) through
``static/manage.js``, which calls the REST API. Rendered from the services the REST routes
call; the model page's chart and the promote button's gate verdict come from the REST API
through ``static/models.js``.
"""

from __future__ import annotations

from typing import Annotated, Any, get_args
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from gureum.schemas.common import Page
from gureum.schemas.consumers import ConsumerKeyOut, PlanOut
from gureum.schemas.models import ModelVersionOut, Stage
from gureum.schemas.validations import ValidationOut
from gureum.server.auth import Principal, at_least
from gureum.server.db.session import Database
from gureum.server.errors import ApiError, NotFound
from gureum.server.pagination import PageParams
from gureum.server.services import consumers as consumer_svc
from gureum.server.services import datasets as dataset_svc
from gureum.server.services import invoices, usage, web_views
from gureum.server.services import models as model_svc
from gureum.server.services import validations as validation_svc
from gureum.web.pages import PAGE_SIZE, Cursor, SignedIn, _next_href
from gureum.web.render import error_page, page

router = APIRouter(include_in_schema=False)
STAGES: tuple[str, ...] = get_args(Stage)
Search = Annotated[str, Query(max_length=64)]
PREVIEW_COLUMNS = 12
MANAGE_PLANS = 100  # plan names suggested on the consumers page
MANAGE_KEYS = 50  # keys listed per consumer there; the CLI lists more


def _first(path: str, **query: str) -> str:
    """The first page of a list with its filters kept."""
    kept = {k: v for k, v in query.items() if v}
    return path + (f"?{urlencode(kept)}" if kept else "")


def _metric_table(versions: list[ModelVersionOut]) -> list[tuple[str, list[Any]]]:
    """Rows of metric name -> value per version (in the versions' order), numbers only."""
    names = sorted(
        {
            k
            for v in versions
            for k, x in v.metrics.items()
            if isinstance(x, int | float) and not isinstance(x, bool)
        }
    )
    return [(n, [v.metrics.get(n) for v in versions]) for n in names]


@router.get("/models")
def models(request: Request, signed: SignedIn, q: Search = "", cursor: Cursor = None) -> Response:
    try:
        listed = web_views.list_models(
            request.app.state.db, signed.principal, PageParams(limit=PAGE_SIZE, cursor=cursor), q
        )
    except ApiError as exc:
        return error_page(request, signed, exc.status, exc.message)
    return page(
        request,
        "models.html",
        signed,
        title="Models",
        nav="models",
        models=listed.items,
        q=q,
        first_page=cursor is None,
        first_href=_first("/models", q=q),
        next_href=_next_href("/models", listed.next_cursor, q=q),
    )


@router.get("/models/{name}")
def model(
    request: Request,
    signed: SignedIn,
    name: str,
    stage: Annotated[str, Query(max_length=16)] = "",
    cursor: Cursor = None,
) -> Response:
    if stage and stage not in STAGES:
        return error_page(request, signed, 404, f"There is no model stage called {stage!r}.")
    db = request.app.state.db
    try:
        out = model_svc.get_model(db, signed.principal, name[:128])
        listed = web_views.list_model_versions(
            db, signed.principal, out.name, PageParams(limit=PAGE_SIZE, cursor=cursor), stage
        )
    except ApiError as exc:
        return error_page(request, signed, exc.status, exc.message)
    versions = listed.items
    return page(
        request,
        "model.html",
        signed,
        title=f"Model {out.name}",
        nav="models",
        model=out,
        versions=versions,
        compared=list(reversed(versions)),
        metrics=_metric_table(list(reversed(versions))),
        stage=stage,
        stages=STAGES,
        first_page=cursor is None,
        first_href=_first(f"/models/{out.name}", stage=stage),
        next_href=_next_href(f"/models/{out.name}", listed.next_cursor, stage=stage),
    )


@router.get("/models/{name}/versions/{version}")
def model_version(request: Request, signed: SignedIn, name: str, version: str) -> Response:
    db = request.app.state.db
    try:
        out = model_svc.get_model(db, signed.principal, name[:128])
        v = model_svc.get_version(db, signed.principal, out.name, version[:32])
        files = model_svc.list_files(
            db, signed.principal, out.name, str(v.version), PageParams(limit=PAGE_SIZE, cursor=None)
        )
        validation = _last_validation(db, signed.principal, out.name, v.version)
    except ApiError as exc:
        return error_page(request, signed, exc.status, exc.message)
    dataset = v.dataset.rsplit(":", 1) if v.dataset else None
    return page(
        request,
        "model_version.html",
        signed,
        title=f"Model {out.name}:{v.version}",
        nav="models",
        model=out,
        v=v,
        files=files.items,
        more_files=files.next_cursor is not None,
        dataset=dataset,
        metrics=_metric_table([v]),
        validation=validation,
    )


def _last_validation(
    db: Database, principal: Principal, name: str, version: int
) -> ValidationOut | None:
    """The version's newest validation report (a deploy's first replica, or a manual one)."""
    try:
        return validation_svc.latest(db, principal, name, str(version))
    except NotFound:
        return None


@router.get("/datasets")
def datasets(request: Request, signed: SignedIn, q: Search = "", cursor: Cursor = None) -> Response:
    try:
        listed = web_views.list_datasets(
            request.app.state.db, signed.principal, PageParams(limit=PAGE_SIZE, cursor=cursor), q
        )
    except ApiError as exc:
        return error_page(request, signed, exc.status, exc.message)
    return page(
        request,
        "datasets.html",
        signed,
        title="Datasets",
        nav="datasets",
        datasets=listed.items,
        q=q,
        first_page=cursor is None,
        first_href=_first("/datasets", q=q),
        next_href=_next_href("/datasets", listed.next_cursor, q=q),
    )


@router.get("/datasets/{name}")
def dataset(request: Request, signed: SignedIn, name: str, cursor: Cursor = None) -> Response:
    db = request.app.state.db
    try:
        out = dataset_svc.get_dataset(db, signed.principal, name[:128])
        listed = dataset_svc.list_versions(
            db, signed.principal, out.name, PageParams(limit=PAGE_SIZE, cursor=cursor)
        )
    except ApiError as exc:
        return error_page(request, signed, exc.status, exc.message)
    return page(
        request,
        "dataset.html",
        signed,
        title=f"Dataset {out.name}",
        nav="datasets",
        ds=out,
        versions=listed.items,
        first_page=cursor is None,
        first_href=f"/datasets/{out.name}",
        next_href=_next_href(f"/datasets/{out.name}", listed.next_cursor),
    )


def _preview_rows(preview: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The columns and first rows of a tabular version's preview (whatever file it came from)."""
    rows: list[dict[str, Any]] = []
    for value in preview.values():
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            rows = value
            break
    if not rows and isinstance(preview.get("rows"), list):
        rows = [r for r in preview["rows"] if isinstance(r, dict)]
    columns: list[str] = []
    for r in rows:
        columns.extend(str(k) for k in r if str(k) not in columns)
    return columns[:PREVIEW_COLUMNS], rows


@router.get("/datasets/{name}/versions/{version}")
def dataset_version(
    request: Request, signed: SignedIn, name: str, version: str, cursor: Cursor = None
) -> Response:
    db = request.app.state.db
    try:
        v = dataset_svc.get_version(db, signed.principal, name[:128], version[:32])
        files = dataset_svc.list_files(
            db,
            signed.principal,
            v.dataset,
            str(v.version),
            PageParams(limit=PAGE_SIZE, cursor=cursor),
        )
    except ApiError as exc:
        return error_page(request, signed, exc.status, exc.message)
    columns, rows = _preview_rows(v.preview)
    here = f"/datasets/{v.dataset}/versions/{v.version}"
    return page(
        request,
        "dataset_version.html",
        signed,
        title=f"Dataset {v.dataset}:{v.version}",
        nav="datasets",
        v=v,
        files=files.items,
        columns=columns,
        rows=rows,
        images=[f for f in files.items if f.kind == "image"][:12],
        first_page=cursor is None,
        first_href=here,
        next_href=_next_href(here, files.next_cursor),
    )


def _manage(
    db: Database, principal: Principal, names: list[str]
) -> tuple[list[PlanOut], dict[str, Page[ConsumerKeyOut]]]:
    """What an admin's controls need: the plans to switch to and each shown consumer's keys
    (none for anyone below admin, who gets no controls)."""
    if not at_least(principal.role, "admin"):
        return [], {}
    plans = consumer_svc.list_plans(db, principal, PageParams(limit=MANAGE_PLANS, cursor=None))
    keys = {
        name: consumer_svc.list_keys(
            db, principal, name, PageParams(limit=MANAGE_KEYS, cursor=None)
        )
        for name in names
    }
    return plans.items, keys


@router.get("/consumers")
def consumers(
    request: Request,
    signed: SignedIn,
    period: Annotated[str, Query(max_length=16)] = "",
    cursor: Cursor = None,
) -> Response:
    db = request.app.state.db
    p = signed.principal
    month = period or usage.current_period()
    try:
        start, end = usage.period_bounds(month)
        listed = consumer_svc.list_consumers(db, p, PageParams(limit=PAGE_SIZE, cursor=cursor))
        report = usage.report(db, p, since=start, until=end, group_by="consumer", percentiles=False)
        bills = invoices.invoices(db, p, month)
        plans, keys = _manage(db, p, [c.name for c in listed.items])
    except ApiError as exc:
        return error_page(request, signed, exc.status, exc.message)
    used: dict[str, dict[str, float]] = {}
    for row in report.rows:
        u = used.setdefault(row.consumer or "", {"requests": 0, "errors": 0, "amount": 0.0})
        u["requests"] += row.requests
        u["errors"] += row.errors
        u["amount"] += row.amount
    shown = {c.name for c in listed.items}
    return page(
        request,
        "consumers.html",
        signed,
        title="Consumers",
        nav="consumers",
        consumers=listed.items,
        used=used,
        period=month,
        invoices=[i for i in bills.invoices if i.consumer in shown],
        plans=plans,
        keys=keys,
        first_page=cursor is None,
        first_href=_first("/consumers", period=period),
        next_href=_next_href("/consumers", listed.next_cursor, period=period),
    )
