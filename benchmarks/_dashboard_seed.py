"""Seeding for bench_dashboard: a workspace with many jobs, endpoints and usage rows.

The schema is the real one (``upgrade``: the migrations the app runs at start) and the first
admin is made by ``bootstrap`` as on a first start; the rows are then bulk-inserted through
SQLAlchemy Core (``executemany``) on SQLite and ``COPY`` on PostgreSQL, since a million
usage rows through the ingestion API would take an hour on two cores. Random but seeded, so
two runs see the same data.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import JSON, insert, select, update
from sqlalchemy.engine import Connection

from gureum.schemas.endpoints import EndpointConfig
from gureum.server.db.migrate import upgrade
from gureum.server.db.session import Database
from gureum.server.db.tables import (
    Job,
    JobEvent,
    JobLog,
    JobMetric,
    Model,
    ModelVersion,
    User,
    Workspace,
)
from gureum.server.db.tables_serving import (
    Consumer,
    Endpoint,
    EndpointEvent,
    Plan,
    ResourceUsage,
    UsageRecord,
)
from gureum.server.services import usage_sql
from gureum.server.services.bootstrap import bootstrap

CHUNK = 20_000
MODELS = 10
CONSUMERS = 200
WINDOW = timedelta(days=30)  # usage rows spread over the 30 days before now
RESOURCE_STEP = timedelta(hours=1)  # one endpoint cost row an hour (the controller: 15 s)


@dataclass(frozen=True)
class Scale:
    jobs: int = 1000
    endpoints: int = 100
    usage_rows: int = 1_000_000
    metric_points: int = 300  # per job: steps the job page charts
    events: int = 12  # per job


@dataclass(frozen=True)
class Seeded:
    """What the benchmark needs to sign in and which pages to open."""

    admin_key: str
    job_id: str  # a finished training job with ``metric_points`` metric points
    endpoint: str  # an endpoint with its share of the usage rows
    seconds: float


def _chunks(rows: Iterator[dict[str, Any]], size: int = CHUNK) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _bulk(conn: Connection, table: Any, rows: Iterator[dict[str, Any]]) -> int:
    """Insert many rows: COPY on PostgreSQL, executemany elsewhere."""
    count = 0
    if conn.dialect.name == "postgresql":
        first = next(rows, None)
        if first is None:
            return 0
        cols = list(first)  # only the given columns: the others keep their defaults
        raw: Any = conn.connection.driver_connection
        names = ", ".join(f'"{c}"' for c in cols)
        with raw.cursor() as cur, cur.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as cp:
            for row in itertools.chain([first], rows):
                cp.write_row([_pg(row[c], table.c[c]) for c in cols])
                count += 1
        return count
    for batch in _chunks(rows):
        conn.execute(insert(table), batch)
        count += len(batch)
    return count


def _pg(value: Any, column: Any) -> Any:
    """A value as COPY takes it (JSON columns as text)."""
    if value is None:
        return None
    if isinstance(column.type, JSON):
        return json.dumps(value)
    return value


def seed(url: str, scale: Scale, rng_seed: int = 14) -> Seeded:
    """Migrate a fresh database at ``url`` and fill it; the bootstrap admin's key returned."""
    started = datetime.now(UTC)
    rng = random.Random(rng_seed)
    db = Database(url)
    try:
        upgrade(db.engine)
        token = bootstrap(db)
        if token is None:
            raise SystemExit(f"{url} already has users: seed a fresh database")
        with db.engine.begin() as conn:
            ws = conn.scalar(select(Workspace.id).where(Workspace.name == "default"))
            user = conn.scalar(select(User.id).where(User.name == "admin"))
            assert ws is not None and user is not None
            versions = _models(conn, ws, user, started)
            endpoints = _endpoints(conn, ws, user, versions, scale.endpoints, started)
            consumers = _consumers(conn, ws, started)
            job_id = _jobs(conn, rng, ws, user, scale, started)
            _resource_usage(conn, ws, endpoints, started)
            _usage(conn, rng, ws, endpoints, consumers, scale.usage_rows, started)
        with db.write() as s:
            usage_sql.fill_days(s)  # the per-day totals ingestion would have kept
        with db.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")  # plans as a long-running database would have
    finally:
        db.dispose()
    seconds = (datetime.now(UTC) - started).total_seconds()
    return Seeded(token, job_id, endpoints[len(endpoints) // 2][1], seconds)


def _models(conn: Connection, ws: int, user: int, now: datetime) -> list[tuple[int, str]]:
    """Ten models of ten versions each: (version id, "NAME:V")."""
    out: list[tuple[int, str]] = []
    for m in range(MODELS):
        name = f"model-{m:02d}"
        model_id = conn.execute(
            insert(Model)
            .values(workspace_id=ws, name=name, description="", gates=[], version_counter=10)
            .values(created_by=user, created_at=now - WINDOW)
            .returning(Model.id)
        ).scalar_one()
        for v in range(1, 11):
            vid = conn.execute(
                insert(ModelVersion)
                .values(model_id=model_id, version=v, stage="production" if v == 10 else "none")
                .values(format="pickle", recipe="tabular-classifier", params={}, metrics={})
                .values(file_count=1, total_bytes=1000, created_by=user, created_at=now - WINDOW)
                .returning(ModelVersion.id)
            ).scalar_one()
            out.append((vid, f"{name}:{v}"))
    return out


def _endpoints(
    conn: Connection,
    ws: int,
    user: int,
    versions: list[tuple[int, str]],
    count: int,
    now: datetime,
) -> list[tuple[int, str, int, str]]:
    """(endpoint id, name, version id, label) of ``count`` ready endpoints."""
    config = EndpointConfig().model_dump(mode="json")
    out = []
    for i in range(count):
        vid, label = versions[i % len(versions)]
        name = f"endpoint-{i:03d}"
        model_id = conn.scalar(select(ModelVersion.model_id).where(ModelVersion.id == vid))
        eid = conn.execute(
            insert(Endpoint)
            .values(name=name, workspace_id=ws, model_id=model_id, version_id=vid, config=config)
            .values(state="ready", message="", generation=1, applied_generation=1, event_seq=1)
            .values(token_hash=secrets.token_hex(32), created_by=user)
            .values(created_at=now - WINDOW, updated_at=now - WINDOW)
            .returning(Endpoint.id)
        ).scalar_one()
        conn.execute(
            insert(EndpointEvent).values(
                endpoint_id=eid,
                seq=1,
                time=now - WINDOW,
                kind="deploy",
                message=f"deploying {label}",
                data={},
            )
        )
        out.append((eid, name, vid, label))
    return out


def _consumers(conn: Connection, ws: int, now: datetime) -> list[tuple[int, str, float]]:
    """(consumer id, name, price per request) over three plans."""
    prices = [0.0, 0.001, 0.01]
    plans = [
        conn.execute(
            insert(Plan)
            .values(workspace_id=ws, name=f"plan-{i}", price_per_request=p, price_per_unit=0.0)
            .values(currency="USD", endpoints=[], created_at=now - WINDOW)
            .returning(Plan.id)
        ).scalar_one()
        for i, p in enumerate(prices)
    ]
    out = []
    for i in range(CONSUMERS):
        cid = conn.execute(
            insert(Consumer)
            .values(workspace_id=ws, name=f"customer-{i:03d}", plan_id=plans[i % 3])
            .values(disabled=False, no_capture=False, created_at=now - WINDOW)
            .returning(Consumer.id)
        ).scalar_one()
        out.append((cid, f"customer-{i:03d}", prices[i % 3]))
    return out


def _state(i: int) -> str:
    """2% running, 3% queued, 5% failed, the rest succeeded."""
    k = i % 100
    return "running" if k < 2 else "queued" if k < 5 else "failed" if k < 10 else "succeeded"


def _jobs(
    conn: Connection, rng: random.Random, ws: int, user: int, scale: Scale, now: datetime
) -> str:
    """The jobs with their events, metrics and a log each; returns a succeeded job's id."""
    ids = [f"j{int(now.timestamp() * 1000) - i:011x}{i:06x}" for i in range(scale.jobs)]
    resources = {"cpus": 2.0, "gpus": 0.0, "memory_gb": 4.0, "accelerator_type": None}
    jobs = []
    for i, job_id in enumerate(ids):
        state = _state(i)
        created = now - WINDOW * (i + 1) / (scale.jobs + 1)
        started = None if state == "queued" else created + timedelta(seconds=30)
        done = started is not None and state in ("succeeded", "failed")
        finished = started + timedelta(minutes=20) if started is not None and done else None
        total = scale.metric_points * 10
        jobs.append(
            {
                "id": job_id,
                "workspace_id": ws,
                "kind": "train",
                "state": state,
                "recipe": "tabular-classifier",
                "dataset_label": "tabular:1",
                "model_label": f"model-{i % MODELS:02d}",
                "params": {"epochs": 5},
                "resources": resources,
                "workers": 1,
                "priority": 0,
                "max_retries": 0,
                "preemptible": True,
                "attempt": 0 if state == "queued" else 1,
                "progress": {"step": total if finished else total // 2, "total_steps": total},
                "metrics": {"accuracy": 0.9} if state == "succeeded" else {},
                "details": {},
                "error": "worker lost" if state == "failed" else None,
                "event_seq": scale.events,
                "metric_seq": 0 if state == "queued" else scale.metric_points,
                "log_bytes": 0,
                "report_seq": 0,
                "created_by": user,
                "created_at": created,
                "started_at": started,
                "finished_at": finished,
            }
        )
    _bulk(conn, Job.__table__, iter(jobs))
    ran = [j for j in jobs if j["started_at"] is not None]
    _bulk(conn, JobEvent.__table__, _events(jobs, scale.events))
    _bulk(conn, JobMetric.__table__, _metrics(rng, ran, scale.metric_points))
    log = "".join(f"step {k * 10} loss 0.5\n" for k in range(50))
    _bulk(conn, JobLog.__table__, ({"job_id": j["id"], "offset": 0, "text": log} for j in ran))
    size = len(log.encode())
    conn.execute(update(Job).where(Job.started_at.is_not(None)).values(log_bytes=size))
    _job_costs(conn, ws, ran)
    succeeded = [j["id"] for j in jobs if j["state"] == "succeeded"]
    return str(succeeded[len(succeeded) // 2])


def _events(jobs: Sequence[dict[str, Any]], per_job: int) -> Iterator[dict[str, Any]]:
    for j in jobs:
        t = j["created_at"]
        for seq in range(1, per_job + 1):
            kind = "queued" if seq == 1 else "started" if seq == 2 else "checkpoint"
            yield {
                "job_id": j["id"],
                "seq": seq,
                "time": t + timedelta(seconds=seq * 60),
                "kind": kind,
                "message": f"{kind} (event {seq})",
                "data": {},
            }


def _metrics(
    rng: random.Random, jobs: Sequence[dict[str, Any]], points: int
) -> Iterator[dict[str, Any]]:
    for j in jobs:
        t = j["started_at"]
        for seq in range(1, points + 1):
            loss = 2.0 * math.exp(-seq / (points / 4)) + 0.1 + rng.random() * 0.05
            yield {
                "job_id": j["id"],
                "seq": seq,
                "step": seq * 10,
                "epoch": seq * 5 // points,
                "time": t + timedelta(seconds=seq * 4),
                "values": {"loss": round(loss, 5), "lr": 0.001, "accuracy": round(1 - loss / 3, 5)},
            }


def _job_costs(conn: Connection, ws: int, jobs: Sequence[dict[str, Any]]) -> None:
    rows = []
    for j in jobs:
        end = j["finished_at"]
        if end is None:
            continue
        seconds = (end - j["started_at"]).total_seconds()
        rows.append(
            {
                "workspace_id": ws,
                "kind": "job",
                "ref": j["id"],
                "start": j["started_at"],
                "end": end,
                "replica_seconds": seconds,
                "cpu_seconds": 2 * seconds,
                "gpu_seconds": 0.0,
                "accelerator_type": None,
                "memory_gb_seconds": 4 * seconds,
            }
        )
    _bulk(conn, ResourceUsage.__table__, iter(rows))


def _resource_usage(
    conn: Connection, ws: int, endpoints: Sequence[tuple[int, str, int, str]], now: datetime
) -> None:
    """One replica of every endpoint ran the whole window (a row an hour each)."""
    hours = int(WINDOW / RESOURCE_STEP)
    first = (now - WINDOW).replace(minute=0, second=0, microsecond=0)

    def rows() -> Iterator[dict[str, Any]]:
        for _, name, _, _ in endpoints:
            for h in range(hours):
                start = first + h * RESOURCE_STEP
                yield {
                    "workspace_id": ws,
                    "kind": "endpoint",
                    "ref": name,
                    "start": start,
                    "end": start + RESOURCE_STEP,
                    "replica_seconds": 3600.0,
                    "cpu_seconds": 3600.0,
                    "gpu_seconds": 0.0,
                    "accelerator_type": None,
                    "memory_gb_seconds": 3600.0,
                }

    _bulk(conn, ResourceUsage.__table__, rows())


def _usage(
    conn: Connection,
    rng: random.Random,
    ws: int,
    endpoints: Sequence[tuple[int, str, int, str]],
    consumers: Sequence[tuple[int, str, float]],
    count: int,
    now: datetime,
) -> None:
    """``count`` served requests, uniform over the window and the endpoints; 2% errors."""
    span = WINDOW.total_seconds()
    start = now - WINDOW
    prefix = secrets.token_hex(4)

    def rows() -> Iterator[dict[str, Any]]:
        for i in range(count):
            eid, name, vid, label = endpoints[i % len(endpoints)]
            cid, cname, price = consumers[rng.randrange(len(consumers))]
            status = 500 if rng.random() < 0.02 else 200
            yield {
                "id": f"{prefix}{i:012d}",
                "workspace_id": ws,
                "time": start + timedelta(seconds=span * (i + rng.random()) / count),
                "consumer_id": cid,
                "consumer_name": cname,
                "endpoint_id": eid,
                "endpoint_name": name,
                "model_version_id": vid,
                "model_label": label,
                "role": "primary",
                "route": "predict",
                "status": status,
                "units": 1.0,
                "unit": "request",
                "latency_ms": round(rng.lognormvariate(3.5, 0.6), 3),
                "cold_start": rng.random() < 0.0005,
                "amount": price if status < 400 else 0.0,
                "currency": "USD",
            }

    _bulk(conn, UsageRecord.__table__, rows())
