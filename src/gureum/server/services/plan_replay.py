"""The planner's inputs: a workspace's recorded resource-seconds as an hourly demand series
(each row split across the hours it spans, pro rata by time, as cost reports split months),
or a trace the caller gives.

Job rows are the preemptible part (jobs checkpoint, so they may run on spot); endpoint rows
need on-demand. The replay starts at the workspace's first recorded usage when that is later
than the window's start (months before it existed would only dilute the utilisation), and
stops at the current hour in the current month.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gureum.config import Settings
from gureum.schemas.planner import DemandSeries, PlanQuery, PlanReport, TraceIn
from gureum.server.auth import Principal
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables_serving import ResourceUsage
from gureum.server.errors import NotFound, Unprocessable
from gureum.server.services import planner
from gureum.server.services.costs import _overlap
from gureum.server.services.usage import current_period, period_bounds

HOUR = timedelta(hours=1)


class _Row(NamedTuple):
    kind: str
    start: datetime
    end: datetime
    cpu_seconds: float
    gpu_seconds: float


def floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def ceil_hour(t: datetime) -> datetime:
    floor = floor_hour(t)
    return floor if floor == t else floor + HOUR


def months_back(period: str, months: int) -> tuple[datetime, datetime]:
    """The first instant of the month ``months - 1`` before ``period``, and the end of it."""
    start, end = period_bounds(period)
    index = start.year * 12 + start.month - 1 - (months - 1)
    return start.replace(year=index // 12, month=index % 12 + 1), end


def split_hourly(rows: list[_Row], start: datetime, end: datetime) -> DemandSeries:
    """Mean CPUs and GPUs of each hour in [start, end) (both on the hour)."""
    n = int((end - start) / HOUR)
    cpus, gpus = [0.0] * n, [0.0] * n
    pre_cpus, pre_gpus = [0.0] * n, [0.0] * n
    for row in rows:
        hour, stop = max(floor_hour(row.start), start), min(row.end, end)
        while True:
            share = _overlap(row, hour, hour + HOUR)
            i = int((hour - start) / HOUR)
            if share > 0 and 0 <= i < n:
                cpu, gpu = row.cpu_seconds * share / 3600, row.gpu_seconds * share / 3600
                cpus[i] += cpu
                gpus[i] += gpu
                if row.kind == "job":
                    pre_cpus[i] += cpu
                    pre_gpus[i] += gpu
            hour += HOUR
            if hour >= stop:
                break
    return DemandSeries(
        start=start,
        cpus=[round(v, 6) for v in cpus],
        gpus=[round(v, 6) for v in gpus],
        preemptible_cpus=[round(v, 6) for v in pre_cpus],
        preemptible_gpus=[round(v, 6) for v in pre_gpus],
    )


def recorded_series(
    s: Session, workspace_id: int, start: datetime, end: datetime
) -> DemandSeries | None:
    """The workspace's demand from its first usage in [start, end) on; None without any."""
    overlapping = (
        ResourceUsage.workspace_id == workspace_id,
        ResourceUsage.start < end,
        ResourceUsage.end > start,
        (ResourceUsage.cpu_seconds > 0) | (ResourceUsage.gpu_seconds > 0),
    )
    first = s.scalar(select(func.min(ResourceUsage.start)).where(*overlapping))
    if first is None:
        return None
    start = max(start, floor_hour(first))
    rows = [
        _Row(*r)
        for r in s.execute(
            select(
                ResourceUsage.kind,
                ResourceUsage.start,
                ResourceUsage.end,
                ResourceUsage.cpu_seconds,
                ResourceUsage.gpu_seconds,
            ).where(*overlapping)
        )
    ]
    return split_hourly(rows, start, end)


def _compare(
    principal: Principal,
    series: DemandSeries,
    settings: Settings,
    query: PlanQuery | TraceIn,
    window: tuple[str | None, int | None],
) -> PlanReport:
    overrides = query.prices if isinstance(query, TraceIn) else query
    prices = planner.resolve_prices(settings, overrides)
    comparison = planner.compare(series, prices)
    return PlanReport(
        workspace=principal.workspace_name,
        source="trace" if isinstance(query, TraceIn) else "recorded",
        period=window[0],
        months=window[1],
        start=series.start,
        end=series.start + series.hours * HOUR,
        prices=prices,
        comparison=comparison,
        series=series,
    )


def replay(db: Database, principal: Principal, settings: Settings, query: PlanQuery) -> PlanReport:
    """Elastic cloud against a fleet for the peak, over the workspace's recorded usage."""
    principal.require("viewer")
    period = query.period or current_period()
    start, end = months_back(period, query.months)
    end = min(end, ceil_hour(utcnow()))
    span = f"{start:%Y-%m} .. {period}" if query.months > 1 else period
    where = f"workspace {principal.workspace_name!r} in {span}"
    series = None
    if end > start:
        with db.read() as s:
            series = recorded_series(s, principal.workspace_id, start, end)
    if series is None:
        raise NotFound(
            f"no recorded usage in {where}: nothing to plan for (jobs and endpoints record "
            "their CPU and GPU time as they run; or give a trace)",
            details={"start": start.isoformat(), "end": end.isoformat()},
        )
    try:
        return _compare(principal, series, settings, query, (period, query.months))
    except planner.NoDemand as e:  # rows exist, but none used a CPU or GPU
        raise NotFound(f"no recorded usage in {where}: {e}") from e


def replay_trace(principal: Principal, settings: Settings, body: TraceIn) -> PlanReport:
    """The same comparison over a trace the caller gives (a CSV, through the SDK)."""
    principal.require("viewer")
    try:
        return _compare(principal, body.trace, settings, body, (None, None))
    except planner.NoDemand as e:
        raise Unprocessable(f"the trace has no demand: {e}") from e
