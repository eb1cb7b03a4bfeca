"""Dashboard page for money: the month's cost (per job, endpoint and storage, with revenue and
margin, and revenue per consumer), the workspace's budget with its events, and the capacity
planner's replay of the recorded usage (cloud against a fleet bought for the peak).

Rendered from the services ``GET /v1/costs``, ``GET /v1/workspaces/{ws}/budget`` and
``GET /v1/plan`` call. Setting the budget is a ``PUT`` to the REST API from
``static/ops.js`` (the form is shown to owners and admins; the API refuses anyone else), and
the planner's chart is drawn from ``GET /v1/plan``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from gureum.schemas.budgets import WARN_RATIO
from gureum.schemas.consumers import UsageReport
from gureum.schemas.planner import MAX_MONTHS, PlanQuery, PlanReport
from gureum.server.auth import at_least
from gureum.server.errors import ApiError
from gureum.server.services import budgets, costs, plan_replay, usage
from gureum.web.pages import SignedIn
from gureum.web.render import error_page, page

router = APIRouter(include_in_schema=False)
PLAN_MONTHS = 12  # as `gureum plan` replays by default


@dataclass
class ConsumerSpend:
    """A consumer's calls and what they were charged in a month, in one currency."""

    consumer: str
    currency: str
    requests: int = 0
    errors: int = 0
    amount: float = 0.0


def _consumers(report: UsageReport) -> list[ConsumerSpend]:
    """Revenue per consumer of the month, the biggest first (one row per currency)."""
    rows: dict[tuple[str, str], ConsumerSpend] = {}
    for r in report.rows:
        key = (r.consumer or "—", r.currency)
        row = rows.setdefault(key, ConsumerSpend(*key))
        row.requests += r.requests
        row.errors += r.errors
        row.amount += r.amount
    return sorted(rows.values(), key=lambda x: (-x.amount, x.consumer))


@router.get("/costs")
def costs_page(
    request: Request,
    signed: SignedIn,
    period: Annotated[str, Query(max_length=16)] = "",
    months: Annotated[int, Query()] = PLAN_MONTHS,
) -> Response:
    if not 1 <= months <= MAX_MONTHS:
        message = f"The planner replays 1 to {MAX_MONTHS} months, not {months}."
        return error_page(request, signed, 422, message)
    db = request.app.state.db
    p = signed.principal
    settings = request.app.state.settings
    prices = costs.prices_from(settings)
    month = period or usage.current_period()
    try:
        start, end = usage.period_bounds(month)
        report = costs.report(db, p, month, prices)
        by_consumer = usage.report(
            db, p, since=start, until=end, group_by="consumer", percentiles=False
        )
        budget = budgets.get(db, p, p.workspace_name, prices)
        events = budgets.events(db, p, p.workspace_name)
    except ApiError as exc:
        return error_page(request, signed, exc.status, exc.message)
    plan: PlanReport | None = None
    no_plan = ""
    try:
        plan = plan_replay.replay(db, p, settings, PlanQuery(period=month, months=months))
    except ApiError as exc:  # nothing recorded yet: said on the page, the rest still shows
        no_plan = exc.message
    return page(
        request,
        "costs.html",
        signed,
        title="Costs and budget",
        nav="costs",
        period=month,
        current=month == usage.current_period(),
        cost=report,
        consumers=_consumers(by_consumer),
        budget=budget,
        events=events[:50],
        warn_percent=round(WARN_RATIO * 100),
        can_set=at_least(p.role, "admin"),
        plan=plan,
        no_plan=no_plan,
        months=months,
    )
