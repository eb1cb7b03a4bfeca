"""The metering ledger (ingestion), usage reports, invoices and compute cost, through the
service functions replicas use and the REST API / SDK people use. SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from gureum import samples
from gureum.client import Client
from gureum.client.errors import NotFoundError
from gureum.config import Settings
from gureum.schemas.endpoints import ReplicaResources
from gureum.schemas.metering import MAX_BATCH, ShadowIn, UsageBatch
from gureum.server.app import create_app
from gureum.server.db.base import utcnow
from gureum.server.db.tables import Job
from gureum.server.db.tables_serving import ResourceUsage, ShadowRecord, UsageRecord
from gureum.server.services import costs, usage
from gureum.server.services.bootstrap import bootstrap
from gureum.server.services.consumers import month_start
from tests.conftest import Cloud
from tests.integration.test_consumers_api import (
    consumer_id,
    db_of,
    ingest,
    make_endpoint,
    record,
    workspace_id,
)
from tests.integration.test_job_controller import FakeBackend

# -- ingestion -----------------------------------------------------------------------------------


def _count(cloud: Cloud, table: type[UsageRecord] | type[ShadowRecord]) -> int:
    with db_of(cloud).read() as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


def test_ingest_is_idempotent_and_counts_duplicates(cloud: Cloud) -> None:
    gen = make_endpoint(cloud, "gen")
    acme = cloud.client().consumers.create("acme", price_per_request=0.5)
    cid = consumer_id(cloud, acme.token)
    records = [record(gen, cid, "acme") for _ in range(3)]
    shadow = ShadowIn(
        id="shadow-0001",
        time=utcnow(),
        model_label="gen-model:2",
        status=200,
        latency_ms=12.0,
        primary_status=200,
        primary_latency_ms=10.0,
        output='{"a": 1}',
        primary_output='{"a": 2}',
    )
    batch = UsageBatch(records=records, shadow=[shadow])
    with db_of(cloud).write() as s:
        first = usage.ingest(s, gen, batch)
    with db_of(cloud).write() as s:
        second = usage.ingest(s, gen, batch)
    assert (first.accepted, first.duplicates) == (4, 0)
    assert (second.accepted, second.duplicates) == (0, 4)
    # A batch re-shipped with one new record: only that one is new.
    assert ingest(cloud, gen, *records[:2], record(gen, cid, "acme")) == (1, 2)
    assert _count(cloud, UsageRecord) == 4 and _count(cloud, ShadowRecord) == 1
    with db_of(cloud).read() as s:
        stored = s.get(UsageRecord, records[0].id)
        kept = s.get(ShadowRecord, "shadow-0001")
    assert stored is not None and kept is not None
    assert (stored.endpoint_name, stored.endpoint_id, stored.consumer_id) == ("gen", gen.id, cid)
    assert stored.workspace_id == gen.workspace_id and stored.model_version_id == gen.version_id
    assert (kept.endpoint_name, kept.primary_output) == ("gen", '{"a": 2}')


def test_a_full_batch_fits_the_drivers_parameter_limits(cloud: Cloud) -> None:
    gen = make_endpoint(cloud, "gen")
    records = [record(gen, None, "admin") for _ in range(MAX_BATCH)]
    assert ingest(cloud, gen, *records) == (MAX_BATCH, 0)
    assert ingest(cloud, gen, *records) == (0, MAX_BATCH)
    assert _count(cloud, UsageRecord) == MAX_BATCH


def test_concurrent_shipments_of_the_same_records_count_once(cloud: Cloud) -> None:
    gen = make_endpoint(cloud, "gen")
    records = [record(gen, None, "admin") for _ in range(300)]
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def ship() -> None:
        try:
            results.append(ingest(cloud, gen, *records))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ship) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(a for a, _ in results) == 300 and sum(d for _, d in results) == 900
    assert _count(cloud, UsageRecord) == 300


def test_amounts_follow_the_plan_at_ingestion_and_errors_are_free(cloud: Cloud) -> None:
    admin = cloud.client()
    gen = make_endpoint(cloud, "gen")
    acme = admin.consumers.create("acme", price_per_request=0.01, price_per_unit=0.002)
    euro = admin.consumers.create("euro", price_per_request=1.0, currency="EUR")
    admin.workspaces.create("other")
    other = cloud.client(admin.keys.create("o", workspace="other").token)
    foreign = other.consumers.create("foreign", price_per_request=9.0)
    cid, eid, fid = (consumer_id(cloud, c.token) for c in (acme, euro, foreign))
    served = record(gen, cid, "acme", units=3)
    failed = record(gen, cid, "acme", status=503, units=0)
    rejected = record(gen, cid, "acme", status=429, units=0)
    member = record(gen, None, "admin", units=5)
    in_euro = record(gen, eid, "euro", units=1)
    stray = record(gen, fid, "foreign")  # another workspace's consumer: never charged here
    ingest(cloud, gen, served, failed, rejected, member, in_euro, stray)
    admin.consumers.update("acme", price_per_request=100.0)  # later price changes: no effect
    ingest(cloud, gen, record(gen, cid, "acme", units=0, record_id="after-change-1"))
    with db_of(cloud).read() as s:
        rows = {r.id: r for r in s.scalars(select(UsageRecord))}
    assert rows[served.id].amount == pytest.approx(0.01 + 3 * 0.002)
    assert rows[served.id].currency == "USD"
    assert rows[failed.id].amount == 0 and rows[rejected.id].amount == 0
    assert rows[member.id].amount == 0 and rows[member.id].consumer_id is None
    assert (rows[in_euro.id].amount, rows[in_euro.id].currency) == (1.0, "EUR")
    assert rows[stray.id].consumer_id is None and rows[stray.id].amount == 0
    assert rows["after-change-1"].amount == pytest.approx(100.0)


# -- usage reports -------------------------------------------------------------------------------


@pytest.fixture
def ledger(cloud: Cloud) -> Client:
    """Two consumers on two endpoints over two days, plus a team member's own calls."""
    admin = cloud.client()
    gen, chat = make_endpoint(cloud, "gen"), make_endpoint(cloud, "chat")
    acme = consumer_id(cloud, admin.consumers.create("acme", price_per_request=0.1).token)
    beta = consumer_id(
        cloud, admin.consumers.create("beta", price_per_unit=0.01, endpoints=["chat"]).token
    )
    day = timedelta(days=1)
    ingest(
        cloud,
        gen,
        record(gen, acme, "acme", latency_ms=10, units=2),
        record(gen, acme, "acme", latency_ms=30, units=2),
        record(gen, acme, "acme", latency_ms=20, status=500, units=0),
        record(gen, acme, "acme", latency_ms=40, ago=day, units=1),
        record(gen, None, "admin", latency_ms=5),
    )
    ingest(
        cloud,
        chat,
        record(chat, beta, "beta", unit="token", units=100, latency_ms=50),
        record(chat, beta, "beta", unit="token", units=50, latency_ms=70),
        record(chat, acme, "acme", unit="token", units=10, latency_ms=60, ago=day),
    )
    return admin


def test_usage_is_grouped_by_consumer_endpoint_and_day(ledger: Client) -> None:
    report = ledger.usage.report()
    today = utcnow().date()
    yesterday = (utcnow() - timedelta(days=1)).date()
    rows = {(r.consumer, r.endpoint, r.day): r for r in report.rows}
    assert report.group_by == ["consumer", "endpoint", "day"]
    assert set(rows) == {
        ("acme", "gen", today),
        ("acme", "gen", yesterday),
        ("acme", "chat", yesterday),
        ("admin", "gen", today),
        ("beta", "chat", today),
    }
    today_gen = rows[("acme", "gen", today)]
    assert (today_gen.requests, today_gen.errors, today_gen.units) == (3, 1, 4.0)
    assert today_gen.amount == pytest.approx(0.2) and today_gen.unit == "image"
    assert (today_gen.latency_p50_ms, today_gen.latency_p95_ms) == (20.0, 30.0)
    beta = rows[("beta", "chat", today)]
    assert (beta.units, beta.unit, beta.amount) == (150.0, "token", pytest.approx(1.5))
    assert rows[("admin", "gen", today)].amount == 0


def test_usage_grouping_and_filters(ledger: Client) -> None:
    by_consumer = ledger.usage.report(group_by="consumer")
    # Rows never add units of different kinds: acme's images and tokens stay apart.
    acme = [(r.unit, r.requests) for r in by_consumer.rows if r.consumer == "acme"]
    assert sorted(acme) == [("image", 4), ("token", 1)]
    assert all(r.endpoint is None and r.day is None for r in by_consumer.rows)
    by_endpoint = ledger.usage.report(group_by=["endpoint"])
    assert {(r.endpoint, r.unit): r.requests for r in by_endpoint.rows} == {
        ("chat", "token"): 3,
        ("gen", "image"): 5,
    }
    only = ledger.usage.report(consumer="beta", group_by="endpoint")
    assert [(r.endpoint, r.requests) for r in only.rows] == [("chat", 2)]
    gen = ledger.usage.report(endpoint="gen", group_by="consumer")
    assert {r.consumer: r.requests for r in gen.rows} == {"acme": 4, "admin": 1}
    recent = ledger.usage.report(since=utcnow() - timedelta(hours=1), group_by="consumer")
    assert {r.consumer: r.requests for r in recent.rows} == {"acme": 3, "admin": 1, "beta": 2}
    old = ledger.usage.report(until=utcnow() - timedelta(hours=2), group_by="endpoint")
    assert {r.endpoint: r.requests for r in old.rows} == {"gen": 1, "chat": 1}
    assert ledger.usage.report(consumer="nobody").rows == []


def test_bad_usage_queries_answer_422_in_the_error_shape(cloud: Cloud) -> None:
    http = cloud.http()
    for params in (
        {"group_by": "consumer,planet"},
        {"group_by": ","},
        {"since": "2026-02-01", "until": "2026-01-01"},
        {"since": "yesterday"},
    ):
        r = http.get("/v1/usage", params=params)
        assert r.status_code == 422, params
        assert r.json()["error"]["code"] == "invalid_request"


# -- invoices ------------------------------------------------------------------------------------


def test_invoices_per_consumer_in_json_and_csv(ledger: Client, cloud: Cloud) -> None:
    ledger.consumers.create("idle")  # no usage: a zero invoice
    ledger.consumers.create("gone")
    ledger.consumers.delete("gone")  # disabled without usage: none
    now = utcnow()
    period = now.strftime("%Y-%m")
    if (now - timedelta(days=1)).month != now.month:
        pytest.skip("yesterday's records fall in last month; the totals below assume one month")
    result = ledger.invoices.list(period)
    invoices = {i.consumer: i for i in result.invoices}
    assert set(invoices) == {"acme", "beta", "idle"}  # a member's own calls are never invoiced
    acme = invoices["acme"]
    lines = {line.endpoint: line for line in acme.lines}
    assert (lines["gen"].requests, lines["gen"].errors, lines["gen"].units) == (3, 1, 5.0)
    assert lines["gen"].amount == pytest.approx(0.3) and lines["gen"].price_per_request == 0.1
    assert (lines["chat"].requests, lines["chat"].amount) == (1, pytest.approx(0.1))
    assert acme.total == pytest.approx(0.4) and acme.requests == 4 and acme.plan == "acme"
    assert invoices["beta"].total == pytest.approx(1.5) and invoices["beta"].currency == "USD"
    assert invoices["idle"].lines == [] and invoices["idle"].total == 0
    only = ledger.invoices.list(period, consumer="beta")
    assert [i.consumer for i in only.invoices] == ["beta"]

    text = ledger.invoices.csv(period)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["consumer"] for r in rows} == {"acme", "beta", "idle"}
    acme_rows = [r for r in rows if r["consumer"] == "acme"]
    assert sorted(r["endpoint"] for r in acme_rows) == ["chat", "gen"]
    assert sum(float(r["amount"]) for r in acme_rows) == pytest.approx(0.4)
    assert [float(r["invoice_total"]) for r in acme_rows] == [pytest.approx(0.4)] * 2
    assert all(r["period"] == period for r in rows)
    raw = cloud.http().get("/v1/invoices", params={"period": period, "format": "csv"})
    assert raw.headers["content-type"].startswith("text/csv")
    assert f"invoices-{period}.csv" in raw.headers["content-disposition"]
    # Another month has no usage: only zero invoices of consumers that existed by then.
    assert ledger.invoices.list("2000-01").invoices == []


def test_bad_invoice_requests(cloud: Cloud) -> None:
    http = cloud.http()
    for period in ("2026-13", "2026-1", "26-01", "november", "2026-01-01"):
        r = http.get("/v1/invoices", params={"period": period})
        assert r.status_code == 422, period
        assert r.json()["error"]["code"] == "invalid_request"
        assert "YYYY-MM" in r.json()["error"]["message"]
    assert http.get("/v1/invoices", params={"format": "pdf"}).status_code == 422
    with pytest.raises(NotFoundError, match="consumer 'ghost' not found"):
        cloud.client().invoices.list(consumer="ghost")


# -- compute cost --------------------------------------------------------------------------------


def _job(ws: int, job_id: str, start: datetime, seconds: float, **resources: object) -> Job:
    return Job(
        id=job_id,
        workspace_id=ws,
        kind="train",
        state="succeeded",
        recipe="tabular",
        resources={"cpus": 1.0, "gpus": 0.0, **resources},
        workers=2,
        started_at=start,
        finished_at=start + timedelta(seconds=seconds),
    )


def test_cost_report_prices_jobs_endpoints_storage_and_margin(cloud: Cloud, tmp_path: Path) -> None:
    cloud.settings.price_gpu_hour_by_type = {"A100": 3.0}
    admin = cloud.client()
    ws = workspace_id(cloud)
    gen = make_endpoint(cloud, "gen")
    acme = consumer_id(cloud, admin.consumers.create("acme", price_per_request=2.0).token)
    start = month_start() + timedelta(hours=1)
    with db_of(cloud).write() as s:
        # 2 workers x 1 h x (2 CPUs, 1 A100, 4 GB)
        costs.record_job(
            s, _job(ws, "jtrain", start, 3600, cpus=2, gpus=1, accelerator_type="A100", memory_gb=4)
        )
        costs.record_job(s, _job(ws, "jtrain", start, 3600, cpus=2))  # recorded once only
        never = _job(ws, "jqueued", start, 0)
        never.started_at = None
        costs.record_job(s, never)  # never started: nothing
        # 3 replicas x 2 h x 1 CPU
        costs.record_endpoint(
            s, ws, "gen", start, start + timedelta(hours=2), 3, ReplicaResources(cpus=1)
        )
        costs.record_endpoint(s, ws, "gen", start, start, 3, ReplicaResources())  # empty span
        costs.record_endpoint(
            s, ws, "gen", start, start + timedelta(hours=1), 0, ReplicaResources()
        )  # scaled to zero
    ingest(cloud, gen, *[record(gen, acme, "acme", ago=timedelta(0)) for _ in range(3)])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.csv").write_bytes(b"x,y\n" + b"1,2\n" * 1000)
    admin.datasets.push("tiny", tmp_path / "data")

    report = admin.costs.report()
    assert report.period == utcnow().strftime("%Y-%m") and report.workspace == "default"
    [job] = report.jobs
    assert (job.job, job.accelerator_type) == ("jtrain", "A100")
    assert (job.cpu_hours, job.gpu_hours, job.memory_gb_hours) == (4.0, 2.0, 8.0)
    assert job.cost == pytest.approx(4 * 0.05 + 2 * 3.0)
    [endpoint] = report.endpoints
    assert (endpoint.endpoint, endpoint.replica_hours, endpoint.cpu_hours) == ("gen", 6.0, 6.0)
    assert endpoint.cost == pytest.approx(6 * 0.05)
    assert (endpoint.requests, endpoint.revenue) == (3, pytest.approx(6.0))
    assert endpoint.margin == pytest.approx(6.0 - 0.3)
    size = 4 + 4 * 1000
    assert report.storage.dataset_bytes == size and report.storage.billed_bytes == size
    assert 0 < report.storage.gb_months <= size / 1024**3
    totals = report.totals
    assert totals.cost == pytest.approx(job.cost + endpoint.cost + report.storage.cost)
    assert totals.revenue == pytest.approx(6.0)
    assert totals.margin == pytest.approx(6.0 - totals.cost)
    # A month long past: no compute, storage for the whole month at today's size.
    old = admin.costs.report("2001-02")
    assert old.jobs == [] and old.endpoints == []
    assert old.storage.gb_months == pytest.approx(size / 1024**3)


def test_usage_spanning_months_is_split_pro_rata(cloud: Cloud) -> None:
    ws = workspace_id(cloud)
    start = datetime(2025, 1, 31, 23, 0, tzinfo=UTC)
    with db_of(cloud).write() as s:
        costs.record_endpoint(
            s, ws, "gen", start, start + timedelta(hours=2), 1, ReplicaResources(cpus=1)
        )
    jan, feb = cloud.client().costs.report("2025-01"), cloud.client().costs.report("2025-02")
    assert jan.endpoints[0].cpu_hours == pytest.approx(1.0)
    assert feb.endpoints[0].cpu_hours == pytest.approx(1.0)
    assert cloud.client().costs.report("2025-03").endpoints == []


def test_costs_need_a_valid_period(cloud: Cloud) -> None:
    r = cloud.http().get("/v1/costs", params={"period": "2025-00"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


# -- the job controller records a finished job -----------------------------------------------


@pytest.fixture
def controlled(
    settings: Settings, tmp_path: Path
) -> Iterator[tuple[TestClient, FakeBackend, object]]:
    fake = FakeBackend()
    app = create_app(settings, compute=fake)
    token = bootstrap(app.state.db)
    assert token is not None
    http = TestClient(app, raise_server_exceptions=False)
    http.headers["Authorization"] = f"Bearer {token}"
    samples.write("tabular", tmp_path / "orders", count=50)
    Client("http://testserver", token, http=TestClient(app)).datasets.push(
        "orders", tmp_path / "orders"
    )
    yield http, fake, app
    app.state.db.dispose()


def test_a_job_reaching_a_final_state_records_its_resource_seconds(
    controlled: tuple[TestClient, FakeBackend, object],
) -> None:
    http, fake, app = controlled
    controller = app.state.jobs  # type: ignore[attr-defined]
    body = {
        "recipe": "tabular",
        "dataset": "orders",
        "params": {"target": "returned"},
        "resources": {"cpus": 2},
        "max_retries": 1,
    }
    job = http.post("/v1/jobs", json=body).json()
    controller.tick()
    fake.emit(job["id"], 1, {"type": "started", "node_id": "n1", "pid": 1})
    controller.tick()
    time.sleep(0.05)
    fake.dead.add((job["id"], 1))  # lost: its span is recorded, the retry waits unbilled
    controller.tick()

    def rows() -> list[ResourceUsage]:
        with app.state.db.read() as s:  # type: ignore[attr-defined]
            return list(
                s.scalars(
                    select(ResourceUsage)
                    .where(ResourceUsage.ref == job["id"])
                    .order_by(ResourceUsage.start)
                )
            )

    [lost] = rows()
    assert lost.kind == "job" and lost.cpu_seconds >= 2 * 0.05
    assert http.get(f"/v1/jobs/{job['id']}").json()["started_at"] is None
    time.sleep(0.05)  # waiting in the queue: not billed
    controller.tick()
    fake.emit(job["id"], 2, {"type": "started", "node_id": "n1", "pid": 2})
    controller.tick()
    fake.emit(job["id"], 2, {"type": "end", "outcome": "failed", "error": "boom"})
    controller.tick()
    final = http.get(f"/v1/jobs/{job['id']}").json()
    assert final["state"] == "failed"
    first, row = rows()
    assert first.id == lost.id and row.start > lost.end
    runtime = (
        datetime.fromisoformat(final["finished_at"]) - datetime.fromisoformat(final["started_at"])
    ).total_seconds()
    assert row.kind == "job" and row.cpu_seconds == pytest.approx(2 * runtime, rel=1e-3)
    assert row.cpu_seconds > 0 and row.gpu_seconds == 0
