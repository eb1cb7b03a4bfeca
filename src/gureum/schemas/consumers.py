"""Request and response shapes of plans, consumers and their keys, usage, invoices and cost.

Consumer keys are ``gck_<key_id>_<secret>``: a prefix of their own, so that the control plane's
key parser (``gk_``) never takes one for a team member's key.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from gureum.schemas.budgets import BudgetOut
from gureum.schemas.common import NAME_PATTERN, Out
from gureum.schemas.endpoints import ENDPOINT_NAME

CONSUMER_KEY_PREFIX = "gck"
PERIOD_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"

Name = Annotated[str, Field(pattern=NAME_PATTERN, description="lowercase letters, digits, . _ -")]
EndpointName = Annotated[str, Field(pattern=ENDPOINT_NAME)]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. USD")]
Period = Annotated[str, Field(pattern=PERIOD_PATTERN, description="a calendar month, YYYY-MM")]

_PER_SECOND = {
    "": 1.0, "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0,
    "d": 86400.0, "day": 86400.0,
}  # fmt: skip
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([a-z]+))?\s*$")
_QUOTA = re.compile(r"^\s*(\d+)\s*(?:/\s*(month|mo))?\s*$")


def parse_rate(text: str) -> float:
    """``"10/s"``, ``"10"``, ``"100/min"``, ``"3600/h"`` -> requests per second."""
    match = _RATE.match(text.lower())
    unit = (match.group(2) or "") if match else None
    if match is None or unit not in _PER_SECOND:
        raise ValueError(f"rate limit {text!r} must look like 10/s, 100/min, 1000/h or 10")
    rate = float(match.group(1)) / _PER_SECOND[unit or ""]
    if rate <= 0:
        raise ValueError(f"rate limit {text!r} must be above zero")
    return rate


def parse_quota(text: str) -> int:
    """``"1000/month"`` or ``"1000"`` -> requests per calendar month."""
    match = _QUOTA.match(text.lower())
    if match is None:
        raise ValueError(f"quota {text!r} must look like 1000/month or 1000")
    return int(match.group(1))


def split_consumer_key(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a ``gck_`` token; None for anything else."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != CONSUMER_KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- plans ---------------------------------------------------------------------------------------


class PlanFields(In):
    """What a consumer pays and may do. Prices are charged per served request (status < 400)."""

    price_per_request: float = Field(default=0.0, ge=0, le=1e6)
    price_per_unit: float = Field(
        default=0.0, ge=0, le=1e6, description="per image, token or row the endpoint returns"
    )
    currency: Currency = "USD"
    rate_limit: float | None = Field(
        default=None, gt=0, le=1e6, description="requests per second; None: unlimited"
    )
    monthly_quota: int | None = Field(
        default=None, ge=0, description="requests per calendar month (UTC); None: unlimited"
    )
    endpoints: list[EndpointName] = Field(
        default_factory=list, max_length=256, description="allowed endpoints; empty: all"
    )


class PlanCreate(PlanFields):
    name: Name


class PlanOut(Out):
    name: str
    price_per_request: float
    price_per_unit: float
    currency: str
    rate_limit: float | None
    monthly_quota: int | None
    endpoints: list[str]
    created_at: datetime


# -- consumers -----------------------------------------------------------------------------------


class InlinePlan(In):
    """Plan fields given with a consumer instead of a plan name; unset fields are not sent."""

    price_per_request: float | None = Field(default=None, ge=0, le=1e6)
    price_per_unit: float | None = Field(default=None, ge=0, le=1e6)
    currency: Currency | None = None
    rate_limit: float | None = Field(default=None, gt=0, le=1e6)
    monthly_quota: int | None = Field(default=None, ge=0)
    endpoints: list[EndpointName] | None = Field(default=None, max_length=256)


class ConsumerCreate(InlinePlan):
    """``plan`` names an existing plan; otherwise a plan named after the consumer is made from
    the inline fields (defaults: free, unlimited, every endpoint)."""

    name: Name
    plan: Name | None = None
    email: str | None = Field(default=None, max_length=256)


class ConsumerUpdate(InlinePlan):
    """Switch to another plan, or change limits/prices (the consumer gets a plan of its own)."""

    plan: Name | None = None
    email: str | None = Field(default=None, max_length=256)
    disabled: bool | None = None
    capture: bool | None = Field(
        default=None, description="false: none of its calls is ever captured (opt-out)"
    )


class ConsumerOut(Out):
    name: str
    email: str | None
    disabled: bool
    # False: the consumer opted out of capture; none of its calls is kept.
    capture: bool
    plan: PlanOut
    active_keys: int
    created_at: datetime


class ConsumerKeyOut(Out):
    """A consumer key as lists show it: never the secret or its hash."""

    key_id: str
    consumer: str
    created_at: datetime
    revoked_at: datetime | None


class ConsumerKeyCreated(ConsumerKeyOut):
    token: str = Field(description="the whole key; shown once, store it now")


class ConsumerCreated(ConsumerOut):
    key_id: str
    token: str = Field(description="the consumer's first key; shown once, store it now")


# -- usage ---------------------------------------------------------------------------------------

GroupKey = Literal["consumer", "endpoint", "day"]
GROUP_KEYS: tuple[GroupKey, ...] = ("consumer", "endpoint", "day")


class UsageRow(Out):
    """One group of usage records. ``unit`` and ``currency`` always split groups, so that
    units and amounts are never summed across kinds."""

    consumer: str | None = None
    endpoint: str | None = None
    day: date | None = None
    requests: int
    errors: int
    units: float
    unit: str
    amount: float
    currency: str
    # None when the report was asked without percentiles (``percentiles=false``).
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    cold_starts: int


class UsageReport(Out):
    since: datetime
    until: datetime
    group_by: list[GroupKey]
    rows: list[UsageRow]


# -- invoices ------------------------------------------------------------------------------------


class InvoiceLine(Out):
    """A consumer's use of one endpoint in the period. ``amount`` is the sum charged at
    ingestion; the unit prices shown are the plan's now."""

    endpoint: str
    requests: int
    errors: int
    units: float
    unit: str
    price_per_request: float
    price_per_unit: float
    amount: float


class Invoice(Out):
    consumer: str
    period: str
    plan: str | None
    currency: str
    lines: list[InvoiceLine]
    requests: int
    total: float


class InvoiceList(Out):
    period: str
    invoices: list[Invoice]


# -- compute cost --------------------------------------------------------------------------------


class Prices(Out):
    currency: str
    cpu_hour: float
    gpu_hour: float
    gpu_hour_by_type: dict[str, float]
    memory_gb_hour: float
    storage_gb_month: float


class ComputeUse(Out):
    cpu_hours: float
    gpu_hours: float
    memory_gb_hours: float
    cost: float


class JobCost(ComputeUse):
    job: str
    accelerator_type: str | None


class EndpointCost(ComputeUse):
    endpoint: str
    replica_hours: float
    requests: int
    revenue: float
    margin: float


class StorageCost(Out):
    dataset_bytes: int
    model_bytes: int
    billed_bytes: int
    gb_months: float
    cost: float


class CostTotals(Out):
    jobs: float
    endpoints: float
    storage: float
    cost: float
    revenue: float
    margin: float
    # Usage charged in currencies other than the prices': reported, not converted.
    other_revenue: dict[str, float]


class CostReport(Out):
    workspace: str
    period: str
    prices: Prices
    jobs: list[JobCost]
    endpoints: list[EndpointCost]
    storage: StorageCost
    totals: CostTotals
    # The workspace's budget this month (spend, percent, state, endpoints held at minimum).
    budget: BudgetOut | None = None
