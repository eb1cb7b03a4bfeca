"""Usage reports, invoices (JSON or CSV) and compute cost of the caller's workspace."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from gureum.schemas.common import ErrorBody
from gureum.schemas.consumers import CostReport, InvoiceList, UsageReport
from gureum.server.deps import DbDep, SettingsDep, Viewer
from gureum.server.services import budgets, costs, invoices, usage

ERRORS: dict[int | str, dict[str, object]] = {404: {"model": ErrorBody}, 422: {"model": ErrorBody}}
usage_router = APIRouter(prefix="/usage", tags=["usage"], responses=ERRORS)
invoices_router = APIRouter(prefix="/invoices", tags=["invoices"], responses=ERRORS)
costs_router = APIRouter(prefix="/costs", tags=["costs"], responses=ERRORS)

Name = Annotated[str | None, Query(max_length=128)]
# Checked by the service, so that a bad one answers in our error shape with a clear message.
PeriodQuery = Annotated[str | None, Query(max_length=16, description="YYYY-MM (default: now)")]


@usage_router.get("")
def usage_report(
    db: DbDep,
    principal: Viewer,
    consumer: Name = None,
    endpoint: Name = None,
    since: Annotated[datetime | None, Query(description="default: 30 days before until")] = None,
    until: Annotated[datetime | None, Query(description="default: now")] = None,
    group_by: Annotated[
        str | None, Query(max_length=64, description="consumer,endpoint,day (any of them)")
    ] = None,
    percentiles: Annotated[
        bool,
        Query(
            description="false: no latency percentiles (null); by day and/or endpoint the "
            "report then reads per-day totals, fast over months of records"
        ),
    ] = True,
) -> UsageReport:
    """Requests, errors, units, amounts and latency grouped by consumer, endpoint and/or
    day (UTC); rows are also split by unit and currency."""
    return usage.report(
        db,
        principal,
        consumer=consumer,
        endpoint=endpoint,
        since=since,
        until=until,
        group_by=group_by,
        percentiles=percentiles,
    )


@invoices_router.get(
    "",
    response_class=Response,
    responses={200: {"model": InvoiceList, "content": {"text/csv": {}}}},
)
def list_invoices(
    db: DbDep,
    principal: Viewer,
    period: PeriodQuery = None,
    consumer: Name = None,
    format: Literal["json", "csv"] = "json",
) -> Response:
    """One invoice per consumer for a month; ``format=csv``: one row per invoice line."""
    month = period or usage.current_period()
    result = invoices.invoices(db, principal, month, consumer)
    if format == "csv":
        return Response(
            invoices.to_csv(result),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="invoices-{month}.csv"'},
        )
    return Response(result.model_dump_json(), media_type="application/json")


@costs_router.get("")
def cost_report(
    db: DbDep, settings: SettingsDep, principal: Viewer, period: PeriodQuery = None
) -> CostReport:
    """Compute and storage cost of a month, per job and endpoint, with endpoint revenue."""
    month = period or usage.current_period()
    prices = costs.prices_from(settings)
    report = costs.report(db, principal, month, prices)
    report.budget = budgets.for_report(db, principal, month, prices)
    return report
