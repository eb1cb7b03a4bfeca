"""The capacity planner: recorded usage (or a given trace) replayed on cloud and on a fleet."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from gureum.schemas.common import ErrorBody
from gureum.schemas.planner import PlanQuery, PlanReport, TraceIn
from gureum.server.deps import DbDep, SettingsDep, Viewer
from gureum.server.services import plan_replay

ERRORS: dict[int | str, dict[str, object]] = {404: {"model": ErrorBody}, 422: {"model": ErrorBody}}
router = APIRouter(prefix="/plan", tags=["plan"], responses=ERRORS)


@router.get("")
def plan_recorded(
    db: DbDep, settings: SettingsDep, principal: Viewer, query: Annotated[PlanQuery, Query()]
) -> PlanReport:
    """Replay the workspace's recorded CPU and GPU hours of ``months`` months ending with
    ``period``: elastic cloud against a fleet bought for the peak, and the break-even
    utilisation. 404 when nothing was recorded."""
    return plan_replay.replay(db, principal, settings, query)


@router.post("")
def plan_trace(settings: SettingsDep, principal: Viewer, body: TraceIn) -> PlanReport:
    """The same comparison over a given hourly trace (nothing is stored)."""
    return plan_replay.replay_trace(principal, settings, body)
