"""The metering ledger: usage batches in from replicas, usage reports out.

Replicas ship at least once, so ingestion is idempotent: a record whose id is already in the
ledger is skipped (``INSERT ... ON CONFLICT DO NOTHING``, safe under concurrent shipments) and
counted as a duplicate. A record is one computation: a client's retry that a replica computes
again is a record of its own (its id shares the first 20 characters with the first try's, see
``serving.replica.usage_id``), never folded into the first. Each record is charged once, at
ingestion, from its consumer's plan then; errors (status >= 400) and a team member's own calls
(no consumer) are free.

Reports aggregate in the database (``usage_sql``): counts and sums exact, latency percentiles
exact (nearest rank). A report without percentiles grouped by day and/or endpoint reads the
per-day totals each stored batch adds to (``usage_days``): months of records in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gureum.schemas.consumers import GROUP_KEYS, GroupKey, UsageReport
from gureum.schemas.metering import UsageAccepted, UsageBatch
from gureum.server.auth import Principal
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import ModelVersion
from gureum.server.db.tables_serving import Consumer, Endpoint, Plan, ShadowRecord, UsageRecord
from gureum.server.errors import Unprocessable
from gureum.server.services import usage_sql

DEFAULT_WINDOW = timedelta(days=30)
READ_BATCH = 5000
# Column order of the rows ``_scan`` reads.
_COLUMNS = (
    UsageRecord.consumer_name,
    UsageRecord.endpoint_name,
    UsageRecord.time,
    UsageRecord.status,
    UsageRecord.units,
    UsageRecord.unit,
    UsageRecord.amount,
    UsageRecord.currency,
    UsageRecord.latency_ms,
    UsageRecord.cold_start,
)


# -- ingestion -----------------------------------------------------------------------------------


def _insert(s: Session, table: Any, rows: list[dict[str, Any]]) -> set[str]:
    """Insert ``rows``, skipping ids already stored; the ids that were new."""
    if not rows:
        return set()
    dialect = s.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table).on_conflict_do_nothing(index_elements=["id"]).returning(table.c.id)
    # One statement per row set, batched by SQLAlchemy ("insertmanyvalues") within the
    # driver's parameter limits; RETURNING yields the ids actually inserted.
    return set(s.scalars(stmt, rows))


def _plans(s: Session, workspace_id: int, consumer_ids: set[int]) -> dict[int, Plan]:
    if not consumer_ids:
        return {}
    rows = s.execute(
        select(Consumer.id, Plan)
        .join(Plan, Plan.id == Consumer.plan_id)
        .where(Consumer.id.in_(consumer_ids), Consumer.workspace_id == workspace_id)
    )
    return {consumer_id: plan for consumer_id, plan in rows}


def ingest(s: Session, endpoint: Endpoint, batch: UsageBatch) -> UsageAccepted:
    """Store a replica's batch of usage and shadow records (in the caller's transaction).

    A consumer id not of the endpoint's workspace is stored as no consumer (never charged to
    another workspace's customer); a model version deleted meanwhile as none.
    """
    plans = _plans(
        s, endpoint.workspace_id, {r.consumer_id for r in batch.records if r.consumer_id}
    )
    wanted = {r.model_version_id for r in batch.records}
    versions = (
        set(s.scalars(select(ModelVersion.id).where(ModelVersion.id.in_(wanted))))
        if wanted
        else set()
    )
    rows: list[dict[str, Any]] = []
    for r in batch.records:
        plan = plans.get(r.consumer_id) if r.consumer_id is not None else None
        charged = plan is not None and r.status < 400
        amount = plan.price_per_request + r.units * plan.price_per_unit if plan and charged else 0
        rows.append(
            {
                **r.model_dump(exclude={"consumer_id", "model_version_id"}),
                "time": _utc(r.time),
                "workspace_id": endpoint.workspace_id,
                "endpoint_id": endpoint.id,
                "endpoint_name": endpoint.name,
                "consumer_id": r.consumer_id if plan is not None else None,
                "model_version_id": r.model_version_id if r.model_version_id in versions else None,
                "amount": float(amount),
                "currency": plan.currency if plan is not None else "USD",
            }
        )
    shadow = [
        {
            **r.model_dump(),
            "time": _utc(r.time),
            "endpoint_id": endpoint.id,
            "endpoint_name": endpoint.name,
        }
        for r in batch.shadow
    ]
    stored = _insert(s, UsageRecord.__table__, rows)
    first = {r["id"]: r for r in reversed(rows)}  # an id twice in a batch: stored once
    usage_sql.add_days(s, [r for i, r in first.items() if i in stored])
    accepted = len(stored)
    shadow_new = len(_insert(s, ShadowRecord.__table__, shadow))
    total = len(rows) + len(shadow)
    return UsageAccepted(accepted=accepted + shadow_new, duplicates=total - accepted - shadow_new)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


# -- reports -------------------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); 0 for no values."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without floats drifting
    return float(ordered[min(len(ordered), int(rank)) - 1])


def parse_group_by(text: str | None) -> list[GroupKey]:
    if not text:
        return list(GROUP_KEYS)
    keys = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in keys if k not in GROUP_KEYS]
    if bad or not keys:
        raise Unprocessable(
            f"group_by takes a comma-separated list of {', '.join(GROUP_KEYS)}; got {text!r}"
        )
    return [k for k in GROUP_KEYS if k in keys]


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """``YYYY-MM`` -> its first instant and the next month's (UTC)."""
    try:
        start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        start = None
    if start is None or len(period) != 7:
        raise Unprocessable(f"period must be a month as YYYY-MM, not {period!r}")
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def current_period() -> str:
    return utcnow().strftime("%Y-%m")


def _window(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    until = _utc(until) if until else utcnow()
    since = _utc(since) if since else until - DEFAULT_WINDOW
    if since >= until:
        raise Unprocessable("since must be before until")
    return since, until


def scan(
    s: Session,
    workspace_id: int,
    since: datetime,
    until: datetime,
    consumer: str | None = None,
    endpoint: str | None = None,
    *,
    consumers_only: bool = False,
) -> Iterable[Any]:
    """The usage records of a window (``since`` included, ``until`` not), streamed."""
    stmt = select(*_COLUMNS).where(
        UsageRecord.workspace_id == workspace_id,
        UsageRecord.time >= since,
        UsageRecord.time < until,
    )
    if consumer is not None:
        stmt = stmt.where(UsageRecord.consumer_name == consumer)
    if endpoint is not None:
        stmt = stmt.where(UsageRecord.endpoint_name == endpoint)
    if consumers_only:
        stmt = stmt.where(UsageRecord.consumer_id.is_not(None))
    return s.execute(stmt.execution_options(yield_per=READ_BATCH))


def report(
    db: Database,
    principal: Principal,
    *,
    consumer: str | None = None,
    endpoint: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    group_by: str | None = None,
    percentiles: bool = True,
) -> UsageReport:
    """Usage of the caller's workspace grouped by consumer, endpoint and/or day (UTC).

    Without ``since`` the window is the 30 days before ``until`` (default: now). Without
    ``percentiles`` the rows' latency is None, and a report by day and/or endpoint comes from
    the per-day totals (fast over months).
    """
    principal.require("viewer")
    keys = parse_group_by(group_by)
    start, end = _window(since, until)
    ws = principal.workspace_id
    with db.read() as s:
        if not percentiles and consumer is None and "consumer" not in keys:
            rows = usage_sql.day_rows(s, ws, keys, start, end, endpoint)
        else:
            rows = usage_sql.rows(
                s, ws, keys, start, end, consumer, endpoint, percentiles=percentiles
            )
    return UsageReport(since=start, until=end, group_by=keys, rows=rows)
