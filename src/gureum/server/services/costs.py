"""Compute cost: resource-seconds recorded as jobs finish and endpoints run, priced per month.

Only resource-seconds are stored; prices are applied when a report is made, so a price change
re-prices every month's report. A row spanning a month boundary is split pro rata by time.
Storage is the workspace's distinct blobs (dataset and model files; a blob shared by versions
counts once) as GB-months, GB being 2^30 bytes as object stores bill: today's bytes times the
elapsed share of the period (the whole month for a past one). Bytes are not kept per day, so a
past month is priced at today's size: an approximation that says so.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import CompoundSelect, Select, and_, func, select, union
from sqlalchemy.orm import Session

from gureum.config import Settings
from gureum.schemas.consumers import (
    CostReport,
    CostTotals,
    EndpointCost,
    JobCost,
    Prices,
    StorageCost,
)
from gureum.schemas.endpoints import ReplicaResources
from gureum.schemas.jobs import TERMINAL_STATES, Resources
from gureum.server.auth import Principal
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import (
    Job,
)
from gureum.server.db.tables_serving import ResourceUsage, UsageDay
from gureum.server.services.blobs import dataset_content, model_content
from gureum.server.services.usage import period_bounds

GB = 1024**3
HOUR = 3600.0


def prices_from(settings: Settings) -> Prices:
    return Prices(
        currency=settings.price_currency,
        cpu_hour=settings.price_cpu_hour,
        gpu_hour=settings.price_gpu_hour,
        gpu_hour_by_type=settings.price_gpu_hour_by_type,
        memory_gb_hour=settings.price_memory_gb_hour,
        storage_gb_month=settings.price_storage_gb_month,
    )


def gpu_hour_price(prices: Prices, accelerator_type: str | None) -> float:
    """The accelerator type's price (exact name, then any case), else the default GPU-hour."""
    if accelerator_type:
        by_type = prices.gpu_hour_by_type
        if accelerator_type in by_type:
            return by_type[accelerator_type]
        lowered = {k.lower(): v for k, v in by_type.items()}
        if accelerator_type.lower() in lowered:
            return lowered[accelerator_type.lower()]
    return prices.gpu_hour


def hourly(resources: Resources, workers: int, prices: Prices) -> float:
    """What a job of ``workers`` workers of ``resources`` costs per hour at ``prices``."""
    per_worker = (
        resources.cpus * prices.cpu_hour
        + resources.gpus * gpu_hour_price(prices, resources.accelerator_type)
        + (resources.memory_gb or 0.0) * prices.memory_gb_hour
    )
    return per_worker * workers


# -- recording -----------------------------------------------------------------------------------


def record_job(s: Session, job: Job) -> None:
    """A finished job's resource-seconds (every worker, start to finish); nothing if it never
    started or is not finished. Called in the transaction that makes the job terminal; a second
    call adds nothing. Spans that ended earlier (a lost attempt, a budget pause) were recorded
    by ``end_span``: the waits in between are not billed."""
    if job.started_at is None or job.state not in TERMINAL_STATES:
        return
    _record_span(s, job, job.finished_at or utcnow())


def end_span(s: Session, job: Job, end: datetime) -> None:
    """A job goes back to the queue (its attempt was lost, or its budget stopped it): the span
    it ran is recorded (one row per span, keyed by its start, so its cost is the sum of its
    spans), its time limit keeps only what it has left, and it is not running while it waits
    (neither billed nor timed out as if it were)."""
    if job.started_at is None:
        return
    _record_span(s, job, end)
    if job.timeout_s is not None:
        ran = (end - job.started_at).total_seconds()
        job.timeout_s = max(1.0, job.timeout_s - ran)
    job.started_at = None


def _record_span(s: Session, job: Job, end: datetime) -> None:
    assert job.started_at is not None
    exists = select(ResourceUsage.id).where(
        ResourceUsage.kind == "job",
        ResourceUsage.ref == job.id,
        ResourceUsage.start == job.started_at,
    )
    if s.scalar(exists) is not None:
        return
    seconds = max(0.0, (end - job.started_at).total_seconds())
    r = Resources.model_validate(job.resources)
    worker_seconds = seconds * job.workers
    s.add(
        ResourceUsage(
            workspace_id=job.workspace_id,
            kind="job",
            ref=job.id,
            start=job.started_at,
            end=end,
            replica_seconds=worker_seconds,
            cpu_seconds=r.cpus * worker_seconds,
            gpu_seconds=r.gpus * worker_seconds,
            accelerator_type=r.accelerator_type,
            memory_gb_seconds=(r.memory_gb or 0.0) * worker_seconds,
        )
    )


def record_endpoint(
    s: Session,
    workspace_id: int,
    endpoint_name: str,
    start: datetime,
    end: datetime,
    replicas: float,
    resources: ReplicaResources,
) -> None:
    """``replicas`` replicas of an endpoint ran from ``start`` to ``end``; nothing when none."""
    seconds = (end - start).total_seconds()
    if seconds <= 0 or replicas <= 0:
        return
    replica_seconds = replicas * seconds
    s.add(
        ResourceUsage(
            workspace_id=workspace_id,
            kind="endpoint",
            ref=endpoint_name,
            start=start,
            end=end,
            replica_seconds=replica_seconds,
            cpu_seconds=resources.cpus * replica_seconds,
            gpu_seconds=resources.gpus * replica_seconds,
            accelerator_type=resources.accelerator_type,
            memory_gb_seconds=(resources.memory_gb or 0.0) * replica_seconds,
        )
    )


# -- the report ----------------------------------------------------------------------------------


@dataclass
class _Use:
    replica_s: float = 0.0
    cpu_s: float = 0.0
    gpu_s: float = 0.0
    mem_s: float = 0.0
    cost: float = 0.0
    accelerator_type: str | None = None


class Span(Protocol):
    """A usage row's interval (a ResourceUsage, or the columns of one)."""

    @property
    def start(self) -> datetime: ...
    @property
    def end(self) -> datetime: ...


def _overlap(row: Span, start: datetime, end: datetime) -> float:
    """The share of a row's interval inside [start, end) (months here, hours in the planner)."""
    length = (row.end - row.start).total_seconds()
    if length <= 0:
        return 1.0 if start <= row.start < end else 0.0
    inside = (min(row.end, end) - max(row.start, start)).total_seconds()
    return max(0.0, min(1.0, inside / length))


def _compute(
    s: Session, workspace_id: int, start: datetime, end: datetime, prices: Prices
) -> dict[str, dict[str, _Use]]:
    """Rows wholly inside [start, end) are summed by the database (a month holds one row per
    endpoint per metering window: too many to load on every admission and budget tick); the
    few that straddle a bound are loaded and prorated."""
    u = ResourceUsage
    mine = (u.workspace_id == workspace_id, u.start < end, u.end > start)
    inside = (u.start >= start, u.end <= end)
    sums = s.execute(
        select(
            u.kind,
            u.ref,
            u.accelerator_type,
            func.sum(u.replica_seconds),
            func.sum(u.cpu_seconds),
            func.sum(u.gpu_seconds),
            func.sum(u.memory_gb_seconds),
        )
        .where(*mine, *inside)
        .group_by(u.kind, u.ref, u.accelerator_type)
    ).all()
    out: dict[str, dict[str, _Use]] = {"job": defaultdict(_Use), "endpoint": defaultdict(_Use)}

    def add(kind: str, ref: str, accelerator: str | None, seconds: tuple[float, ...]) -> None:
        if kind not in out:
            return
        replica_s, cpu_s, gpu_s, mem_s = seconds
        use = out[kind][ref]
        use.replica_s += replica_s
        use.cpu_s += cpu_s
        use.gpu_s += gpu_s
        use.mem_s += mem_s
        use.accelerator_type = use.accelerator_type or accelerator
        use.cost += (
            cpu_s / HOUR * prices.cpu_hour
            + gpu_s / HOUR * gpu_hour_price(prices, accelerator)
            + mem_s / HOUR * prices.memory_gb_hour
        )

    for kind, ref, accelerator, *totals in sums:
        add(kind, ref, accelerator, tuple(float(v or 0.0) for v in totals))
    for r in s.scalars(select(u).where(*mine, ~and_(*inside))):
        share = _overlap(r, start, end)
        seconds = (r.replica_seconds, r.cpu_seconds, r.gpu_seconds, r.memory_gb_seconds)
        if share > 0:
            add(r.kind, r.ref, r.accelerator_type, tuple(v * share for v in seconds))
    return out


def priced(
    s: Session, workspace_id: int, start: datetime, end: datetime, prices: Prices
) -> dict[str, dict[str, float]]:
    """Recorded compute cost in [start, end) by kind (job, endpoint) and job id or endpoint."""
    return {
        kind: {ref: use.cost for ref, use in uses.items()}
        for kind, uses in _compute(s, workspace_id, start, end, prices).items()
    }


def _storage(
    s: Session, workspace_id: int, start: datetime, end: datetime, prices: Prices
) -> StorageCost:
    datasets = dataset_content(workspace_id)
    models = model_content(workspace_id)

    def total(stmt: Select[*tuple[Any, ...]] | CompoundSelect[*tuple[Any, ...]]) -> int:
        sub = stmt.subquery()
        return int(s.scalar(select(func.coalesce(func.sum(sub.c.size), 0))) or 0)

    billed = total(union(datasets, models))
    now = utcnow()
    elapsed = (min(max(now, start), end) - start).total_seconds()
    gb_months = billed / GB * elapsed / (end - start).total_seconds()
    return StorageCost(
        dataset_bytes=total(datasets.distinct()),
        model_bytes=total(models.distinct()),
        billed_bytes=billed,
        gb_months=gb_months,
        cost=round(gb_months * prices.storage_gb_month, 6),
    )


def report(db: Database, principal: Principal, period: str, prices: Prices) -> CostReport:
    """What the caller's workspace cost in ``period`` (YYYY-MM), per job, per endpoint (with
    its revenue and margin) and for storage."""
    principal.require("viewer")
    start, end = period_bounds(period)
    ws = principal.workspace_id
    with db.read() as s:
        compute = _compute(s, ws, start, end, prices)
        # A month is whole UTC days: its per-day totals, not its (millions of) records.
        revenue_rows = s.execute(
            select(
                UsageDay.endpoint_name,
                UsageDay.currency,
                func.sum(UsageDay.requests),
                func.sum(UsageDay.amount),
            )
            .where(
                UsageDay.workspace_id == ws,
                UsageDay.day >= start.date(),
                UsageDay.day < end.date(),
            )
            .group_by(UsageDay.endpoint_name, UsageDay.currency)
        ).all()
        storage = _storage(s, ws, start, end, prices)
    revenue: dict[str, float] = defaultdict(float)
    requests: dict[str, int] = defaultdict(int)
    other: dict[str, float] = defaultdict(float)
    for name, currency, count, amount in revenue_rows:
        requests[name] += int(count)
        if currency == prices.currency:
            revenue[name] += float(amount or 0.0)
        else:
            other[currency] += float(amount or 0.0)
    jobs = [
        JobCost(
            job=ref,
            accelerator_type=u.accelerator_type,
            cpu_hours=round(u.cpu_s / HOUR, 6),
            gpu_hours=round(u.gpu_s / HOUR, 6),
            memory_gb_hours=round(u.mem_s / HOUR, 6),
            cost=round(u.cost, 6),
        )
        for ref, u in sorted(compute["job"].items())
    ]
    endpoint_uses = compute["endpoint"]
    endpoints = []
    for name in sorted(set(endpoint_uses) | set(requests)):
        u = endpoint_uses.get(name) or _Use()
        endpoints.append(
            EndpointCost(
                endpoint=name,
                replica_hours=round(u.replica_s / HOUR, 6),
                cpu_hours=round(u.cpu_s / HOUR, 6),
                gpu_hours=round(u.gpu_s / HOUR, 6),
                memory_gb_hours=round(u.mem_s / HOUR, 6),
                cost=round(u.cost, 6),
                requests=requests.get(name, 0),
                revenue=round(revenue.get(name, 0.0), 6),
                margin=round(revenue.get(name, 0.0) - u.cost, 6),
            )
        )
    jobs_cost = sum(u.cost for u in compute["job"].values())
    endpoints_cost = sum(u.cost for u in endpoint_uses.values())
    cost = jobs_cost + endpoints_cost + storage.cost
    income = sum(revenue.values())
    totals = CostTotals(
        jobs=round(jobs_cost, 6),
        endpoints=round(endpoints_cost, 6),
        storage=storage.cost,
        cost=round(cost, 6),
        revenue=round(income, 6),
        margin=round(income - cost, 6),
        other_revenue={k: round(v, 6) for k, v in sorted(other.items())},
    )
    return CostReport(
        workspace=principal.workspace_name,
        period=period,
        prices=prices,
        jobs=jobs,
        endpoints=endpoints,
        storage=storage,
        totals=totals,
    )
