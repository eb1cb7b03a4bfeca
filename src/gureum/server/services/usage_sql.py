"""Usage reports aggregated by the database: a month of a busy workspace is a million records
and more, too many to stream into Python on every dashboard view (1,000,000 took 50 s).

Counts and sums are one ``GROUP BY``; the latency percentiles stay exact (nearest rank, as
``usage.percentile``) through window functions: each group's records numbered by latency, and
only the records at the wanted ranks come back. A report without percentiles, grouped by day
and/or endpoint, reads the per-day totals (``usage_days``, added to as batches are stored) for
the whole UTC days of its window and the records only for the partial days at its ends. All of
it runs on SQLite (3.25+) and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, delete, func, insert, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gureum.schemas.consumers import GroupKey, UsageRow
from gureum.server.db.tables_serving import UsageDay, UsageRecord

QUANTILES = (50, 95)
U = UsageRecord


def _day(dialect: str) -> ColumnElement[Any]:
    """The UTC day of a record: PostgreSQL converts; SQLite keeps UTC as text
    ("YYYY-MM-DD HH:MM:SS[.ffffff]", see db.base.UTCDateTime), whose first ten characters
    are the day."""
    if dialect == "postgresql":
        return func.date(func.timezone("UTC", U.time))
    return func.substr(U.time, 1, 10)


def _as_day(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def rows(
    s: Session,
    workspace_id: int,
    keys: list[GroupKey],
    since: datetime,
    until: datetime,
    consumer: str | None = None,
    endpoint: str | None = None,
    *,
    percentiles: bool = True,
) -> list[UsageRow]:
    """The report's rows, grouped by ``keys`` (then unit and currency), in key order; without
    ``percentiles`` their latency is None."""
    dialect = s.get_bind().dialect.name
    named: dict[str, ColumnElement[Any]] = {
        "consumer": U.consumer_name.expression,
        "endpoint": U.endpoint_name.expression,
        "day": _day(dialect),
    }
    group = [named[k] for k in keys] + [U.unit.expression, U.currency.expression]
    where = [U.workspace_id == workspace_id, U.time >= since, U.time < until]
    if consumer is not None:
        where.append(U.consumer_name == consumer)
    if endpoint is not None:
        where.append(U.endpoint_name == endpoint)

    def key_of(values: Any) -> tuple[Any, ...]:
        out = list(values)
        if "day" in keys:
            i = keys.index("day")
            out[i] = _as_day(out[i])
        return tuple(out)

    totals = _totals(s, group, where, key_of)
    percentiles_of: dict[tuple[Any, ...], dict[int, float]] = {}
    if percentiles:
        counts = {key: int(t[0]) for key, t in totals.items()}
        percentiles_of = _percentiles(s, group, where, counts, key_of)
    return _rows(keys, totals, percentiles_of if percentiles else None)


Totals = dict[tuple[Any, ...], list[float]]  # key -> requests, errors, units, amount, cold


def _totals(
    s: Session, group: list[ColumnElement[Any]], where: list[ColumnElement[bool]], key_of: Any
) -> Totals:
    width = len(group)
    found = s.execute(
        select(
            *group,
            func.count(),
            func.sum(case((U.status >= 400, 1), else_=0)),
            func.sum(U.units),
            func.sum(U.amount),
            func.sum(case((U.cold_start, 1), else_=0)),
        )
        .where(*where)
        .group_by(*group)
    ).all()
    return {key_of(r[:width]): [float(v or 0) for v in r[width:]] for r in found}


def _rows(
    keys: list[GroupKey],
    totals: Totals,
    percentiles: dict[tuple[Any, ...], dict[int, float]] | None,
) -> list[UsageRow]:
    out = []
    for key, (requests, errors, units, amount, cold) in totals.items():
        named = dict(zip(keys, key, strict=False))
        p = percentiles.get(key, {}) if percentiles is not None else {}
        out.append(
            UsageRow(
                consumer=named.get("consumer"),
                endpoint=named.get("endpoint"),
                day=named.get("day"),
                requests=int(requests),
                errors=int(errors),
                units=units,
                unit=key[-2],
                amount=round(amount, 6),
                currency=key[-1],
                latency_p50_ms=p.get(50, 0.0) if percentiles is not None else None,
                latency_p95_ms=p.get(95, 0.0) if percentiles is not None else None,
                cold_starts=int(cold),
            )
        )
    out.sort(key=lambda row: _order(row, keys))
    return out


def _percentiles(
    s: Session,
    group: list[ColumnElement[Any]],
    where: list[ColumnElement[bool]],
    counts: dict[tuple[Any, ...], int],
    key_of: Any,
) -> dict[tuple[Any, ...], dict[int, float]]:
    """Each group's exact nearest-rank latency percentiles (``QUANTILES``)."""
    width = len(group)
    ranked = (
        select(
            *[g.label(f"k{i}") for i, g in enumerate(group)],
            U.latency_ms.label("latency"),
            func.row_number().over(partition_by=group, order_by=U.latency_ms).label("pos"),
            func.count().over(partition_by=group).label("n"),
        )
        .where(*where)
        .subquery()
    )
    # Only the records at a wanted rank come back: ceil(n * q / 100), in integers.
    wanted = [ranked.c.pos == (ranked.c.n * q + 99) // 100 for q in QUANTILES]
    picked = s.execute(
        select(*[ranked.c[f"k{i}"] for i in range(width)], ranked.c.pos, ranked.c.latency).where(
            or_(*wanted)
        )
    ).all()
    out: dict[tuple[Any, ...], dict[int, float]] = {}
    for r in picked:
        key = key_of(r[:width])
        rank, latency = int(r[width]), float(r[width + 1])
        n = counts.get(key, 0)
        for q in QUANTILES:
            if rank == max(1, -(-n * q // 100)):
                out.setdefault(key, {})[q] = latency
    return out


def _order(row: UsageRow, keys: list[GroupKey]) -> tuple[str, ...]:
    values = [getattr(row, k) for k in keys] + [row.unit, row.currency]
    return tuple(v.isoformat() if isinstance(v, date) else str(v) for v in values)


# -- per-day totals ------------------------------------------------------------------------------


def add_days(s: Session, stored: list[dict[str, Any]]) -> None:
    """Add records just stored to their days' totals (in the caller's transaction). Keys are
    upserted in order, so concurrent batches on PostgreSQL lock rows in the same order."""
    totals: dict[tuple[Any, ...], list[float]] = {}
    for r in stored:
        key = (
            r["workspace_id"],
            r["time"].astimezone(UTC).date(),
            r["endpoint_name"],
            r["unit"],
            r["currency"],
        )
        t = totals.setdefault(key, [0, 0, 0.0, 0.0, 0])
        t[0] += 1
        t[1] += r["status"] >= 400
        t[2] += r["units"]
        t[3] += r["amount"]
        t[4] += bool(r["cold_start"])
    if not totals:
        return
    names = ("workspace_id", "day", "endpoint_name", "unit", "currency")
    sums = ("requests", "errors", "units", "amount", "cold_starts")
    values = [
        {**dict(zip(names, key, strict=True)), **dict(zip(sums, t, strict=True))}
        for key, t in sorted(totals.items(), key=lambda kv: _order_key(kv[0]))
    ]
    dialect = s.get_bind().dialect.name
    upsert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = upsert(UsageDay).values(values)
    table = UsageDay.__table__.c
    stmt = stmt.on_conflict_do_update(
        index_elements=list(names),
        set_={k: table[k] + getattr(stmt.excluded, k) for k in sums},
    )
    s.execute(stmt)


def fill_days(s: Session) -> None:
    """Rebuild every day's totals from the records (for records stored around ``ingest``:
    a bulk load; migration 0020 did the same for the records before it)."""
    dialect = s.get_bind().dialect.name
    day = _day(dialect)
    s.execute(delete(UsageDay))
    totals = select(
        U.workspace_id,
        day,
        U.endpoint_name,
        U.unit,
        U.currency,
        func.count(),
        func.sum(case((U.status >= 400, 1), else_=0)),
        func.sum(U.units),
        func.sum(U.amount),
        func.sum(case((U.cold_start, 1), else_=0)),
    ).group_by(U.workspace_id, day, U.endpoint_name, U.unit, U.currency)
    names = ["workspace_id", "day", "endpoint_name", "unit", "currency"]
    names += ["requests", "errors", "units", "amount", "cold_starts"]
    s.execute(insert(UsageDay).from_select(names, totals))


def day_rows(
    s: Session,
    workspace_id: int,
    keys: list[GroupKey],
    since: datetime,
    until: datetime,
    endpoint: str | None = None,
) -> list[UsageRow]:
    """``rows`` without percentiles for ``keys`` among day and endpoint: the whole days of the
    window from ``usage_days``, its partial first and last days from the records."""
    assert "consumer" not in keys
    first = _midnight(since) + (timedelta(days=1) if since != _midnight(since) else timedelta())
    last = _midnight(until)
    if first >= last:
        return rows(s, workspace_id, keys, since, until, endpoint=endpoint, percentiles=False)
    d = UsageDay
    named: dict[str, ColumnElement[Any]] = {
        "endpoint": d.endpoint_name.expression,
        "day": d.day.expression,
    }
    group = [named[k] for k in keys] + [d.unit.expression, d.currency.expression]
    where = [d.workspace_id == workspace_id, d.day >= first.date(), d.day < last.date()]
    if endpoint is not None:
        where.append(d.endpoint_name == endpoint)
    width = len(group)
    found = s.execute(
        select(
            *group,
            func.sum(d.requests),
            func.sum(d.errors),
            func.sum(d.units),
            func.sum(d.amount),
            func.sum(d.cold_starts),
        )
        .where(*where)
        .group_by(*group)
    ).all()

    def key_of(values: Any) -> tuple[Any, ...]:
        out = list(values)
        if "day" in keys:
            i = keys.index("day")
            out[i] = _as_day(out[i])
        return tuple(out)

    totals: Totals = {key_of(r[:width]): [float(v or 0) for v in r[width:]] for r in found}
    record_group = [_record_column(k, s.get_bind().dialect.name) for k in keys]
    record_group += [U.unit.expression, U.currency.expression]
    for start, end in ((since, first), (last, until)):
        if start >= end:
            continue
        where_records = [U.workspace_id == workspace_id, U.time >= start, U.time < end]
        if endpoint is not None:
            where_records.append(U.endpoint_name == endpoint)
        for key, t in _totals(s, record_group, where_records, key_of).items():
            mine = totals.setdefault(key, [0.0] * 5)
            for i, v in enumerate(t):
                mine[i] += v
    return _rows(keys, totals, None)


def _record_column(key: GroupKey, dialect: str) -> ColumnElement[Any]:
    if key == "day":
        return _day(dialect)
    return U.endpoint_name.expression if key == "endpoint" else U.consumer_name.expression


def _midnight(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _order_key(key: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(v.isoformat() if isinstance(v, date) else str(v) for v in key)
