"""Budgets: a workspace's monthly compute budget and the most one job may cost."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gureum.schemas.common import Out

BudgetState = Literal["ok", "warning", "exceeded"]
WARN_RATIO = 0.8  # the share of the monthly budget whose crossing is warned about, once a month
MAX_AMOUNT = 1e12


class BudgetSet(BaseModel):
    """``null`` is no limit. Amounts are in the cost reports' currency."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    monthly: float | None = Field(
        default=None, ge=0, le=MAX_AMOUNT, description="compute spend allowed per calendar month"
    )
    per_job: float | None = Field(
        default=None,
        gt=0,
        le=MAX_AMOUNT,
        description="the most one job may cost: reserved at admission, enforced as its time limit",
    )


class HeldEndpoint(Out):
    """An endpoint held at its minimum replicas by an exceeded budget: it keeps serving."""

    endpoint: str
    min_replicas: int
    max_replicas: int = Field(description="its configured maximum, restored when raised")
    cost_since_held: float


class BudgetOut(Out):
    workspace: str
    currency: str
    monthly: float | None
    per_job: float | None
    period: str = Field(description="the month spend is counted in, YYYY-MM (UTC)")
    spend: float = Field(description="compute cost this month: finished and running work")
    reserved: float = Field(description="what admitted, unfinished jobs may still cost at most")
    committed: float = Field(description="spend + reserved: what admission counts against")
    remaining: float | None = Field(description="monthly - committed (never below 0)")
    percent: float | None = Field(description="spend as a percent of the monthly budget")
    state: BudgetState
    state_changed_at: datetime
    paused_jobs: list[str] = Field(description="jobs stopped by the budget, queued to resume")
    endpoints_at_minimum: list[HeldEndpoint]
    updated_at: datetime | None


class BudgetEventOut(Out):
    time: datetime
    period: str
    kind: str
    spend: float
    monthly_limit: float | None
    message: str
