"""The capacity planner: an hourly demand series, the prices it is replayed at, and the
comparison of elastic cloud with a fixed fleet bought for the peak.

A series is dense and columnar (one start hour, one value per hour) so that a year of it is a
small body: ``POST /v1/plan`` takes a trace that way, and the SDK turns a CSV into it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gureum.schemas.common import Out

# Three years of hours (leap days included): the longest replay, and the longest trace.
MAX_MONTHS = 36
MAX_HOURS = 366 * 24 * 3
HOURS_PER_YEAR = 8760.0
HOURS_PER_MONTH = HOURS_PER_YEAR / 12

# Bounded so that no sum over a trace overflows a float.
Amount = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]
MAX_UNITS = 1e6
Units = Annotated[float, Field(ge=0, le=MAX_UNITS, allow_inf_nan=False)]


class PriceOverrides(BaseModel):
    """Prices to replay at instead of the server's settings (``GUREUM_PRICE_*`` for
    on-demand, ``GUREUM_PLAN_*`` for the rest); every one is optional."""

    model_config = ConfigDict(extra="forbid")

    on_demand_cpu_hour: Amount | None = None
    on_demand_gpu_hour: Amount | None = None
    spot_cpu_hour: Amount | None = None
    spot_gpu_hour: Amount | None = None
    spot_share: Annotated[float, Field(ge=0, le=1)] | None = None
    purchase_per_cpu: Amount | None = None
    purchase_per_gpu: Amount | None = None
    amortisation_years: Annotated[float, Field(ge=0.1, le=50, allow_inf_nan=False)] | None = None
    power_per_cpu_hour: Amount | None = None
    power_per_gpu_hour: Amount | None = None
    lead_time_months: Annotated[float, Field(ge=0, le=120, allow_inf_nan=False)] | None = None


class PlanQuery(PriceOverrides):
    """``GET /v1/plan``: replay the workspace's recorded usage of ``months`` months ending
    with ``period`` (YYYY-MM, default this month)."""

    period: Annotated[str, Field(max_length=16)] | None = None
    months: Annotated[int, Field(ge=1, le=MAX_MONTHS)] = 12


class PlanPrices(Out):
    currency: str
    on_demand_cpu_hour: float
    on_demand_gpu_hour: float
    spot_cpu_hour: float
    spot_gpu_hour: float
    spot_share: float
    purchase_per_cpu: float
    purchase_per_gpu: float
    amortisation_years: float
    power_per_cpu_hour: float
    power_per_gpu_hour: float
    lead_time_months: float


class DemandSeries(BaseModel):
    """CPUs and GPUs in use, as the mean of each hour from ``start`` on. The preemptible part
    (jobs, which checkpoint) may run on spot; the rest (endpoints) needs on-demand. Without the
    preemptible columns nothing is preemptible."""

    model_config = ConfigDict(extra="forbid")

    start: datetime
    cpus: list[Units] = Field(max_length=MAX_HOURS)
    gpus: list[Units] = Field(max_length=MAX_HOURS)
    preemptible_cpus: list[Units] | None = Field(default=None, max_length=MAX_HOURS)
    preemptible_gpus: list[Units] | None = Field(default=None, max_length=MAX_HOURS)

    @field_validator("start")
    @classmethod
    def _on_the_hour(cls, value: datetime) -> datetime:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if (value.minute, value.second, value.microsecond) != (0, 0, 0):
            raise ValueError("start must be on the hour")
        return value

    @model_validator(mode="after")
    def _aligned(self) -> DemandSeries:
        n = len(self.cpus)
        if n == 0:
            raise ValueError("the series has no hours")
        for name in ("gpus", "preemptible_cpus", "preemptible_gpus"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise ValueError(f"{name} has {len(values)} hours, cpus has {n}")
        for part, total in (("preemptible_cpus", self.cpus), ("preemptible_gpus", self.gpus)):
            values = getattr(self, part)
            if values is not None and any(p > t + 1e-9 for p, t in zip(values, total, strict=True)):
                raise ValueError(f"{part} exceeds the total in some hour")
        return self

    @property
    def hours(self) -> int:
        return len(self.cpus)


class TraceIn(BaseModel):
    """``POST /v1/plan``: replay a given trace instead of the recorded usage."""

    model_config = ConfigDict(extra="forbid")

    trace: DemandSeries
    prices: PriceOverrides = Field(default_factory=PriceOverrides)


class CloudCost(Out):
    """Elastic cloud: every hour pays for exactly what it used."""

    on_demand: float
    spot: float
    total: float
    per_year: float


class FleetCost(Out):
    """A fleet bought for the peak; until it arrives (lead time) the cloud is paid."""

    cpus: int
    gpus: int
    purchase: float
    usable_from: datetime | None  # None: it does not arrive within the replayed window
    usable_hours: int
    amortisation: float
    power: float
    cloud_during_lead_time: float
    total: float
    per_year: float  # once it runs: amortisation and power of a year


class PlanComparison(Out):
    hours: int
    peak_cpus: float
    peak_gpus: float
    mean_cpus: float
    mean_gpus: float
    cpu_utilisation: float  # mean over the fleet's size (0 with no CPUs in the fleet)
    gpu_utilisation: float
    # Both weighted by on-demand price: the share of the fleet's worth of cloud hours used.
    utilisation: float
    # Above this utilisation owning is cheaper than cloud at the replay's spot mix (over 1:
    # never); None when on-demand is free.
    break_even_utilisation: float | None
    cloud: CloudCost
    fleet: FleetCost
    cheaper: Literal["cloud", "fleet"]
    savings: float  # what the cheaper option saves over the replayed window
    # Once the fleet is in service, a year at the replay's load (the lead time left out): the
    # utilisation against the break-even.
    cheaper_per_year: Literal["cloud", "fleet"]


class PlanReport(Out):
    workspace: str
    source: Literal["recorded", "trace"]
    period: str | None  # the recorded replay's last month
    months: int | None
    start: datetime
    end: datetime
    prices: PlanPrices
    comparison: PlanComparison
    series: DemandSeries
