"""Budgets: set and read a workspace's monthly compute budget and per-job limit, its events,
and the budget part of a cost report.

Owners and admins of the workspace (and site admins) set it; any member reads it. Setting it
re-evaluates the budget in the same transaction, so a budget lowered below the month's spend
refuses new work at once and one raised lets paused work resume at the controllers' next tick.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.schemas.budgets import BudgetEventOut, BudgetOut, BudgetSet, HeldEndpoint
from gureum.schemas.consumers import Prices
from gureum.schemas.endpoints import EndpointConfig
from gureum.server.auth import Principal
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import Job, Workspace
from gureum.server.db.tables_budgets import BudgetEvent, JobBudget, WorkspaceBudget
from gureum.server.db.tables_serving import Endpoint
from gureum.server.errors import Forbidden
from gureum.server.services import audit, costs
from gureum.server.services.budget_enforce import reconcile
from gureum.server.services.budget_ledger import measure, period_of, remaining
from gureum.server.services.workspaces import visible

EVENTS_SHOWN = 200
SETTERS = ("owner", "admin")


def get(db: Database, principal: Principal, name: str, prices: Prices) -> BudgetOut:
    with db.read() as s:
        ws, _ = visible(s, principal, name)
        return status(s, ws, s.get(WorkspaceBudget, ws.id), prices)


def put(
    db: Database, principal: Principal, name: str, body: BudgetSet, prices: Prices
) -> BudgetOut:
    principal.require("admin")
    with db.write() as s:
        ws, role = visible(s, principal, name)
        if role not in SETTERS and not principal.is_site_admin:
            raise Forbidden(
                f"only an owner or admin of workspace '{name}' or a site admin can set its budget"
            )
        budget = s.get(WorkspaceBudget, ws.id, with_for_update=True)
        if budget is None:
            budget = WorkspaceBudget(workspace_id=ws.id, state="ok", spend=0.0)
            s.add(budget)
        budget.monthly_limit, budget.per_job_limit = body.monthly, body.per_job
        budget.updated_by, budget.updated_at = principal.user_id, utcnow()
        s.flush()
        s.add(
            BudgetEvent(
                workspace_id=ws.id,
                period=period_of(utcnow()),
                kind="set",
                spend=budget.spend,
                monthly_limit=body.monthly,
                message=f"set by {principal.user_name}: monthly {_amount(body.monthly)}, "
                f"per job {_amount(body.per_job)}",
            )
        )
        audit.record(s, principal, "workspace.budget", "workspace", name, body.model_dump())
        reconcile(s, ws.id, prices)
        return status(s, ws, budget, prices)


def events(db: Database, principal: Principal, name: str) -> list[BudgetEventOut]:
    """The budget's latest events, newest first."""
    with db.read() as s:
        ws, _ = visible(s, principal, name)
        rows = s.scalars(
            select(BudgetEvent)
            .where(BudgetEvent.workspace_id == ws.id)
            .order_by(BudgetEvent.id.desc())
            .limit(EVENTS_SHOWN)
        )
        return [BudgetEventOut.model_validate(r) for r in rows]


def for_report(db: Database, principal: Principal, period: str, prices: Prices) -> BudgetOut | None:
    """The caller's workspace's budget, for a cost report of the current month only (a budget
    is enforced on the month running now; past months have their own reports)."""
    if period != period_of(utcnow()):
        return None
    with db.read() as s:
        budget = s.get(WorkspaceBudget, principal.workspace_id)
        ws = s.get(Workspace, principal.workspace_id)
        if budget is None or ws is None:
            return None
        return status(s, ws, budget, prices)


def status(s: Session, ws: Workspace, budget: WorkspaceBudget | None, prices: Prices) -> BudgetOut:
    """The budget as it stands: live spend, the state the budget loop last found."""
    now = utcnow()
    m = measure(s, ws.id, prices, now)
    monthly = budget.monthly_limit if budget else None
    state = budget.state if budget else "ok"
    changed_at = budget.state_changed_at if budget else ws.created_at
    paused = s.scalars(
        select(JobBudget.job_id)
        .join(Job, Job.id == JobBudget.job_id)
        .where(
            JobBudget.workspace_id == ws.id,
            JobBudget.paused_at.is_not(None),
            Job.state == "queued",
        )
        .order_by(JobBudget.job_id)
    ).all()
    return BudgetOut(
        workspace=ws.name,
        currency=prices.currency,
        monthly=monthly,
        per_job=budget.per_job_limit if budget else None,
        period=m.period,
        spend=round(m.spend, 6),
        reserved=round(m.reserved, 6),
        committed=round(m.committed, 6),
        remaining=_round(remaining(monthly, m.committed)),
        percent=round(100 * m.spend / monthly, 2) if monthly else None,
        state=state,
        state_changed_at=changed_at,
        paused_jobs=list(paused),
        endpoints_at_minimum=_held(s, ws.id, changed_at, now, prices)
        if state == "exceeded"
        else [],
        updated_at=budget.updated_at if budget else None,
    )


def _held(
    s: Session, workspace_id: int, since: datetime, now: datetime, prices: Prices
) -> list[HeldEndpoint]:
    """Endpoints kept running at their minimum while the budget is exceeded, with what they
    cost since: reported apart, as the spend the budget does not stop."""
    cost = costs.priced(s, workspace_id, since, now, prices)["endpoint"] if now > since else {}
    out = []
    for name, config in s.execute(
        select(Endpoint.name, Endpoint.config)
        .where(Endpoint.workspace_id == workspace_id, Endpoint.state != "deleting")
        .order_by(Endpoint.name)
    ):
        scaling = EndpointConfig.model_validate(config).autoscaling
        out.append(
            HeldEndpoint(
                endpoint=name,
                min_replicas=scaling.min_replicas,
                max_replicas=scaling.max_replicas,
                cost_since_held=round(cost.get(name, 0.0), 6),
            )
        )
    return out


def _amount(value: float | None) -> str:
    return "no limit" if value is None else f"{value:g}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
