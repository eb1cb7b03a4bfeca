"""Budgets: a workspace's monthly compute budget and per-job limit (read by members, set by
its owners and admins or a site admin), and the budget's events."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gureum.schemas.budgets import BudgetEventOut, BudgetOut, BudgetSet
from gureum.schemas.common import ErrorBody
from gureum.server.deps import DbDep, SettingsDep, Viewer
from gureum.server.services import budgets as svc
from gureum.server.services.costs import prices_from

router = APIRouter(
    prefix="/workspaces",
    tags=["budgets"],
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)


@router.get("/{name}/budget")
def get_budget(name: str, db: DbDep, settings: SettingsDep, principal: Viewer) -> BudgetOut:
    """Limits, this month's spend, reservations, percent and state; paused jobs and the
    endpoints held at their minimum replicas while it is exceeded."""
    return svc.get(db, principal, name, prices_from(settings))


@router.put("/{name}/budget", responses={403: {"model": ErrorBody}})
def set_budget(
    name: str,
    body: BudgetSet,
    request: Request,
    db: DbDep,
    settings: SettingsDep,
    principal: Viewer,
) -> BudgetOut:
    """Set (or lift, with null) the monthly budget and per-job limit; takes effect at once."""
    out = svc.put(db, principal, name, body, prices_from(settings))
    state = request.app.state
    for controller in (state.jobs, state.serving.controller):
        if controller is not None:
            controller.wake()  # stop or resume work now, not at the next tick
    return out


@router.get("/{name}/budget/events")
def budget_events(name: str, db: DbDep, principal: Viewer) -> list[BudgetEventOut]:
    """The budget's changes and warnings, newest first."""
    return svc.events(db, principal, name)
