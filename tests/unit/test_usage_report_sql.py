"""GET /v1/usage aggregates in the database (services.usage_sql): its counts, sums and exact
nearest-rank latency percentiles must equal a row-by-row count of the same records, for every
grouping; without percentiles, by day and/or endpoint, it reads the per-day totals that
ingestion keeps, and must still equal that count, whatever the window's edges. SQLite and
(when GUREUM_TEST_DATABASE_URL is set) PostgreSQL."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from gureum.schemas.metering import UsageIn
from gureum.server.db.tables_serving import UsageDay
from gureum.server.services import usage_sql
from gureum.server.services.usage import percentile
from tests.conftest import Cloud
from tests.integration.test_consumers_api import consumer_id, ingest, make_endpoint

NOW = datetime.now(UTC)
GROUPINGS = ["day", "consumer", "endpoint", "endpoint,day", "consumer,endpoint,day"]


def _records(endpoints: dict[str, Any], acme: int) -> list[UsageIn]:
    """700 calls over four days; some at both sides of a UTC midnight; latency ties."""
    rng = random.Random(14)
    midnight = NOW.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    out = []
    for i in range(700):
        t = NOW - timedelta(seconds=rng.uniform(60, 4 * 86400))
        if i < 6:
            t = midnight + timedelta(microseconds=(-1) ** i * (1 + i))
        ep = endpoints[rng.choice(["gen", "chat"])]
        who = rng.choice([(acme, "acme"), (None, "team"), (None, "ops")])
        out.append(
            UsageIn(
                id=f"rec{i:05d}",
                time=t,
                consumer_id=who[0],
                consumer_name=who[1],
                model_version_id=ep.version_id,
                model_label=f"{ep.name}-model:1",
                route="predict",
                status=rng.choice([200] * 8 + [404, 500]),
                units=float(rng.randint(0, 9)),
                unit=rng.choice(["request", "token"]),
                latency_ms=float(rng.randint(1, 400)),
                cold_start=rng.random() < 0.1,
            )
        )
    return out


@pytest.fixture
def stored(cloud: Cloud) -> list[dict[str, Any]]:
    """The records ingested the way replicas ship them (twice: duplicates count once), as
    the ledger keeps them (with the endpoint, and the amount acme's plan charged)."""
    endpoints = {name: make_endpoint(cloud, name) for name in ("gen", "chat")}
    acme = consumer_id(cloud, cloud.client().consumers.create("acme", price_per_request=0.1).token)
    records = _records(endpoints, acme)
    by_endpoint: dict[str, list[UsageIn]] = defaultdict(list)
    for r in records:
        by_endpoint[r.model_label.split("-")[0]].append(r)
    for _ in range(2):
        for name, batch in by_endpoint.items():
            ingest(cloud, endpoints[name], *batch)
    return [
        {
            **r.model_dump(),
            "endpoint_name": r.model_label.split("-")[0],
            "amount": 0.1 if r.consumer_id is not None and r.status < 400 else 0.0,
            "currency": "USD",
        }
        for r in records
    ]


def _expected(records: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        named = {
            "consumer": r["consumer_name"],
            "endpoint": r["endpoint_name"],
            "day": r["time"].astimezone(UTC).date().isoformat(),
        }
        groups[(*[named[k] for k in keys], r["unit"], r["currency"])].append(r)
    rows = []
    for key in sorted(groups):
        rs = groups[key]
        named = dict(zip(keys, key, strict=False))
        lat = [r["latency_ms"] for r in rs]
        rows.append(
            {
                "consumer": named.get("consumer"),
                "endpoint": named.get("endpoint"),
                "day": named.get("day"),
                "requests": len(rs),
                "errors": sum(r["status"] >= 400 for r in rs),
                "units": pytest.approx(sum(r["units"] for r in rs)),
                "unit": key[-2],
                "amount": pytest.approx(round(sum(r["amount"] for r in rs), 6)),
                "currency": key[-1],
                "latency_p50_ms": percentile(lat, 50),
                "latency_p95_ms": percentile(lat, 95),
                "cold_starts": sum(r["cold_start"] for r in rs),
            }
        )
    return rows


def _report(cloud: Cloud, **params: str) -> list[dict[str, Any]]:
    r = cloud.http().get("/v1/usage", params=params)
    assert r.status_code == 200, r.text
    return list(r.json()["rows"])


def _in(records: list[dict[str, Any]], since: datetime, until: datetime) -> list[dict[str, Any]]:
    return [r for r in records if since <= r["time"] < until]


@pytest.mark.postgres
def test_usage_report_equals_a_row_by_row_count_for_every_grouping(
    cloud: Cloud, stored: list[dict[str, Any]]
) -> None:
    since = (NOW - timedelta(days=5)).isoformat()
    for group_by in GROUPINGS:
        got = _report(cloud, group_by=group_by, since=since)
        assert got == _expected(stored, group_by.split(",")), group_by
    # Filters narrow the same aggregation.
    chat = [x for x in stored if x["endpoint_name"] == "chat"]
    assert _report(cloud, group_by="day", since=since, endpoint="chat") == _expected(chat, ["day"])
    acme = [x for x in stored if x["consumer_name"] == "acme"]
    assert _report(cloud, group_by="day", since=since, consumer="acme") == _expected(acme, ["day"])
    # A window without records: no rows, not an error.
    empty = {"since": "2001-01-01T00:00:00Z", "until": "2001-02-01T00:00:00Z"}
    assert _report(cloud, group_by="day", **empty) == []


@pytest.mark.postgres
def test_without_percentiles_the_per_day_totals_give_the_same_counts(
    cloud: Cloud, stored: list[dict[str, Any]]
) -> None:
    # Windows starting and ending mid-day, at a midnight, and inside one day.
    midnight = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
    windows = [
        (NOW - timedelta(days=5), NOW),
        (NOW - timedelta(days=2, hours=5), NOW - timedelta(hours=30)),
        (midnight - timedelta(days=2), midnight),
        (midnight - timedelta(days=1, hours=20), midnight - timedelta(days=1, hours=2)),
    ]
    for since, until in windows:
        window = _in(stored, since, until)
        for group_by in ["day", "endpoint", "endpoint,day"]:
            got = _report(
                cloud,
                group_by=group_by,
                since=since.isoformat(),
                until=until.isoformat(),
                percentiles="false",
            )
            want = _expected(window, group_by.split(","))
            for row in want:
                row["latency_p50_ms"] = row["latency_p95_ms"] = None
            assert got == want, (group_by, since, until)
    gen = [x for x in _in(stored, *windows[0]) if x["endpoint_name"] == "gen"]
    got = _report(
        cloud,
        group_by="day",
        endpoint="gen",
        since=windows[0][0].isoformat(),
        until=windows[0][1].isoformat(),
        percentiles="false",
    )
    assert [r["requests"] for r in got] == [r["requests"] for r in _expected(gen, ["day"])]


@pytest.mark.postgres
def test_rebuilding_the_per_day_totals_gives_what_ingestion_kept(
    cloud: Cloud, stored: list[dict[str, Any]]
) -> None:
    def days() -> list[tuple[Any, ...]]:
        with cloud.app.state.db.read() as s:
            found = s.execute(select(*UsageDay.__table__.c).order_by(UsageDay.day)).all()
        return sorted((*r[1:10], round(r[10], 6)) for r in found)  # all but id; amount

    kept = days()
    assert sum(r[5] for r in kept) == len(stored)  # requests
    with cloud.app.state.db.write() as s:
        usage_sql.fill_days(s)
    assert days() == kept
