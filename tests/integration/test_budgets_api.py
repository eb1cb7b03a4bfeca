"""Budgets through the REST API and the SDK, with the job controller against the fake compute
engine (no Ray): set and show by role, admission refused at the limit with its reason, the
reservation enforced as a time limit, a budget lowered below spend (new work refused at once,
the running job paused and resumed, not lost), the 80% warning once, and submissions racing for
the last of a budget. SQLite and PostgreSQL.

Prices are set to 3600 a CPU-hour, so one CPU-second costs exactly 1 (USD).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from gureum import samples
from gureum.client import Client
from gureum.config import Settings
from gureum.schemas.endpoints import ReplicaResources
from gureum.server.app import create_app
from gureum.server.controllers.budgets import BudgetController
from gureum.server.controllers.jobs import JobController
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import Workspace
from gureum.server.db.tables_serving import ResourceUsage
from gureum.server.services import costs
from gureum.server.services.bootstrap import bootstrap
from tests.integration.test_endpoints_api import Env as EndpointEnv
from tests.integration.test_endpoints_api import make_env as make_endpoint_env
from tests.integration.test_job_controller import FakeBackend

JOB = {"recipe": "tabular", "dataset": "orders", "params": {"target": "returned"}}


@dataclass
class Env:
    app: Any
    http: TestClient
    client: Client
    fake: FakeBackend
    jobs: JobController
    budgets: BudgetController
    token: str

    @property
    def db(self) -> Database:
        db: Database = self.app.state.db
        return db

    def as_key(self, token: str) -> TestClient:
        c = TestClient(self.app, raise_server_exceptions=False)
        c.headers["Authorization"] = f"Bearer {token}"
        return c

    def member(self, name: str, role: str) -> TestClient:
        self.client.users.add(name, role=role)  # type: ignore[arg-type]
        return self.as_key(self.client.keys.create(f"{name}-key", user=name).token)

    def submit(self, status: int = 201, **body: Any) -> dict[str, Any]:
        r = self.http.post("/v1/jobs", json={**JOB, **body})
        assert r.status_code == status, r.text
        return dict(r.json())

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.http.get(f"/v1/jobs/{job_id}").json())

    def put(self, status: int = 200, ws: str = "default", **body: Any) -> dict[str, Any]:
        r = self.http.put(f"/v1/workspaces/{ws}/budget", json=body)
        assert r.status_code == status, r.text
        return dict(r.json())

    def budget(self, ws: str = "default") -> dict[str, Any]:
        r = self.http.get(f"/v1/workspaces/{ws}/budget")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def events(self, ws: str = "default") -> list[tuple[str, str]]:
        r = self.http.get(f"/v1/workspaces/{ws}/budget/events")
        assert r.status_code == 200, r.text
        return [(e["kind"], e["message"]) for e in r.json()]

    def spent(self, amount: float) -> None:
        """``amount`` of endpoint compute recorded in the ledger earlier this month."""
        with self.db.write() as s:
            ws = s.scalar(select(Workspace.id).where(Workspace.name == "default"))
            assert ws is not None
            end = utcnow() - timedelta(seconds=1)
            start = end - timedelta(seconds=amount)  # 1 CPU at 1 a second
            if start.month != end.month:  # the first second of a month: keep it in the month
                start, end = end, end + timedelta(seconds=amount)
            costs.record_endpoint(s, ws, "gen", start, end, 1, ReplicaResources(cpus=1))

    def start(self, job_id: str, attempt: int = 1) -> None:
        """The controller launches the job and its worker reports it started."""
        self.jobs.tick()
        self.fake.emit(job_id, attempt, {"type": "started", "node_id": "node-1"})
        self.jobs.tick()
        assert self.job(job_id)["state"] == "running"


def make_env(settings: Settings, tmp_path: Path) -> Iterator[Env]:
    settings.price_cpu_hour = 3600.0
    fake = FakeBackend(cpus=64)
    app = create_app(settings, compute=fake)
    token = bootstrap(app.state.db)
    assert token is not None
    http = TestClient(app, raise_server_exceptions=False)
    http.headers["Authorization"] = f"Bearer {token}"
    client = Client("http://testserver", token, http=TestClient(app))
    samples.write("tabular", tmp_path / "orders", count=50)
    client.datasets.push("orders", tmp_path / "orders")
    yield Env(app, http, client, fake, app.state.jobs, app.state.budgets, token)
    app.state.db.dispose()


@pytest.fixture
def env(settings: Settings, tmp_path: Path) -> Iterator[Env]:
    yield from make_env(settings, tmp_path)


def error(r: Any) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


# -- set and show --------------------------------------------------------------------------------


def test_set_and_show_a_budget_by_role(env: Env) -> None:
    assert env.budget()["monthly"] is None and env.budget()["state"] == "ok"
    out = env.client.budgets.set("default", monthly=50, per_job=5)
    assert (out.monthly, out.per_job, out.currency, out.state) == (50, 5, "USD", "ok")
    assert (out.spend, out.reserved, out.remaining, out.percent) == (0, 0, 50, 0)
    assert out.period == utcnow().strftime("%Y-%m")

    viewer = env.member("vera", "viewer")
    developer = env.member("dev", "developer")
    assert viewer.get("/v1/workspaces/default/budget").json()["monthly"] == 50
    for who in (viewer, developer):
        r = who.put("/v1/workspaces/default/budget", json={"monthly": 1000})
        assert r.status_code == 403 and error(r)["code"] == "forbidden"
    admin = env.member("ada", "admin")
    r = admin.put("/v1/workspaces/default/budget", json={"monthly": 40, "per_job": 4})
    assert r.status_code == 200 and r.json()["monthly"] == 40

    r = env.http.put("/v1/workspaces/nowhere/budget", json={"monthly": 1})
    assert r.status_code == 404 and error(r)["code"] == "not_found"
    assert env.http.get("/v1/workspaces/nowhere/budget").status_code == 404
    for bad in ({"monthly": -1}, {"per_job": 0}, {"per_job": -5}, {"monthly": "lots"}, {"x": 1}):
        r = env.http.put("/v1/workspaces/default/budget", json=bad)
        assert r.status_code == 422 and error(r)["code"] == "invalid_request", bad
    assert env.budget()["monthly"] == 40  # nothing half-written
    kinds = [k for k, _ in env.events()]
    assert kinds == ["set", "set"]


def test_a_workspace_the_caller_is_not_in_is_not_found(env: Env) -> None:
    env.client.workspaces.create("other")
    outsider = env.member("olga", "owner")  # owner of default, not a member of "other"
    r = outsider.get("/v1/workspaces/other/budget")
    assert r.status_code == 404 and error(r)["code"] == "not_found"
    assert env.put(ws="other", monthly=5)["workspace"] == "other"  # the site admin may
    # The budget is the workspace's own: it goes with it.
    env.client.keys.create("elsewhere", workspace="other")
    assert env.http.delete("/v1/workspaces/other").status_code == 204


# -- admission -------------------------------------------------------------------------------------


def test_a_job_reserves_its_maximum_cost_as_its_time_limit(env: Env) -> None:
    env.put(monthly=50, per_job=5)
    job = env.submit()  # 1 CPU: 1 a second, so 5 buys 5 s
    assert job["timeout_s"] == pytest.approx(5.0)
    shorter = env.submit(timeout_s=2)  # its own limit is shorter: it reserves less
    assert shorter["timeout_s"] == pytest.approx(2.0)
    two = env.submit(workers=2)  # 2 workers cost 2 a second
    assert two["timeout_s"] == pytest.approx(2.5)
    b = env.budget()
    assert b["reserved"] == pytest.approx(12.0) and b["committed"] == pytest.approx(12.0)
    assert b["remaining"] == pytest.approx(38.0)
    events = env.http.get(f"/v1/jobs/{job['id']}/events").json()["items"]
    assert any("budget: 5 USD reserved" in e["message"] for e in events)


def test_submissions_past_the_monthly_budget_are_refused_with_the_reason(env: Env) -> None:
    env.spent(3.0)
    env.put(monthly=10, per_job=6)
    first = env.submit()
    assert first["timeout_s"] == pytest.approx(6.0)
    last = env.submit()  # what is left: 10 - 3 spent - 6 reserved
    assert last["timeout_s"] == pytest.approx(1.0, abs=0.01)
    r = env.http.post("/v1/jobs", json=JOB)
    assert r.status_code == 409, r.text
    err = error(r)
    assert err["code"] == "budget_exceeded"
    assert "3 USD spent" in err["message"] and "limit of 10 USD" in err["message"]
    assert err["details"]["monthly"] == 10 and err["details"]["spend"] == pytest.approx(3, 0.01)
    assert len(env.http.get("/v1/jobs").json()["items"]) == 2  # the refused one left nothing
    # A cancelled job's reservation is released: room again.
    env.http.post(f"/v1/jobs/{first['id']}/cancel")
    assert env.submit()["timeout_s"] == pytest.approx(6.0, abs=0.01)


def test_the_reservation_is_enforced_as_the_time_limit(env: Env) -> None:
    env.put(per_job=1.0)
    job = env.submit()
    env.start(job["id"])
    env.jobs.tick()
    assert env.fake.stopped == []  # within its limit
    time.sleep(1.1)
    env.jobs.tick()  # past it: a stop is asked for, then carried out
    env.jobs.tick()
    assert (job["id"], 1) in env.fake.stopped
    env.fake.emit(job["id"], 1, {"type": "end", "outcome": "cancelled", "error": None})
    env.jobs.tick()
    done = env.job(job["id"])
    assert done["state"] == "failed" and "timed out after 1s" in done["error"]


# -- lowered below spend: refuse new work at once, lose nothing that runs --------------------------


def test_a_budget_lowered_below_spend_pauses_running_work_and_a_raise_resumes_it(
    env: Env,
) -> None:
    env.put(monthly=100, per_job=50)
    job = env.submit()
    env.start(job["id"])
    env.spent(30.0)
    lowered = env.put(monthly=20, per_job=50)
    assert lowered["state"] == "exceeded"
    r = env.http.post("/v1/jobs", json=JOB)  # refused at once, no tick needed
    assert r.status_code == 409 and error(r)["code"] == "budget_exceeded"
    assert env.job(job["id"])["state"] == "running"  # nothing lost

    env.jobs.tick()  # the controller stops the attempt...
    assert (job["id"], 1) in env.fake.stopped
    env.fake.emit(job["id"], 1, {"type": "end", "outcome": "cancelled", "error": None})
    env.jobs.tick()  # ...and it goes back to the queue, waiting for the budget
    paused = env.job(job["id"])
    assert paused["state"] == "queued" and paused["error"] is None
    assert "budget is exceeded" in paused["wait_reason"]
    assert paused["timeout_s"] < 50  # what it ran is taken off its time limit
    assert env.budget()["paused_jobs"] == [job["id"]]
    with env.db.read() as s:
        [span] = s.scalars(select(ResourceUsage).where(ResourceUsage.ref == job["id"])).all()
    assert span.cpu_seconds > 0  # the span it ran is counted
    env.spent(1.0)
    env.budgets.tick()
    seen = len(env.http.get(f"/v1/jobs/{job['id']}/events").json()["items"])
    env.jobs.tick()
    assert len(env.fake.launched) == 1  # it waits while the budget is exceeded
    assert "budget is exceeded" in env.job(job["id"])["wait_reason"]
    # The reason names no spend, which grows: waiting adds no event per tick.
    assert len(env.http.get(f"/v1/jobs/{job['id']}/events").json()["items"]) == seen

    raised = env.put(monthly=200, per_job=50)
    assert raised["state"] == "ok" and raised["paused_jobs"] == []
    assert [k for k, _ in env.events()][:3] == ["resumed", "set", "exceeded"]
    env.jobs.tick()
    resumed = env.fake.launched[-1]
    assert (resumed.job_id, resumed.attempt) == (job["id"], 2)  # same job: its checkpoints
    env.fake.emit(job["id"], 2, {"type": "started", "node_id": "node-1"})
    env.fake.emit(job["id"], 2, {"type": "end", "outcome": "failed", "error": "boom"})
    env.jobs.tick()
    assert env.job(job["id"])["state"] == "failed"
    with env.db.read() as s:
        spans = s.scalars(select(ResourceUsage).where(ResourceUsage.ref == job["id"])).all()
    assert len(spans) == 2  # both spans it ran, the pause between them not billed


def test_a_job_cancelled_while_its_budget_stops_it_ends_cancelled(env: Env) -> None:
    env.put(monthly=100, per_job=50)
    job = env.submit()
    env.start(job["id"])
    env.spent(30.0)
    env.put(monthly=20, per_job=50)
    env.jobs.tick()  # the budget asks the attempt to stop...
    assert (job["id"], 1) in env.fake.stopped
    cancelled = env.http.post(f"/v1/jobs/{job['id']}/cancel")  # ...and its owner cancels it
    assert cancelled.status_code == 200, cancelled.text
    env.fake.emit(job["id"], 1, {"type": "end", "outcome": "cancelled", "error": None})
    env.jobs.tick()
    assert env.job(job["id"])["state"] == "cancelled"  # not queued to resume on a raise
    env.put(monthly=200, per_job=50)
    env.jobs.tick()
    assert len(env.fake.launched) == 1


def test_the_budget_loop_pauses_jobs_once_spend_reaches_the_limit(env: Env) -> None:
    env.put(monthly=10)
    job = env.submit()
    env.start(job["id"])
    env.spent(4.0)
    env.budgets.tick()
    assert env.budget()["state"] == "ok"
    env.spent(7.0)
    env.budgets.tick()
    assert env.budget()["state"] == "exceeded"
    env.jobs.tick()
    assert (job["id"], 1) in env.fake.stopped


# -- the 80% warning -------------------------------------------------------------------------------


def test_the_80_percent_warning_is_emitted_once_and_shown_in_costs_and_metrics(env: Env) -> None:
    env.put(monthly=100)
    env.spent(70.0)
    env.budgets.tick()
    assert env.budget()["state"] == "ok" and "warning" not in dict(env.events())
    env.spent(15.0)
    for _ in range(3):
        env.budgets.tick()
    warnings = [m for k, m in env.events() if k == "warning"]
    assert len(warnings) == 1 and "85 of the monthly budget of 100 (85%)" in warnings[0]
    budget = env.budget()
    assert budget["state"] == "warning" and budget["percent"] == pytest.approx(85.0, abs=0.1)

    report = env.client.costs.report()
    assert report.budget is not None
    assert (report.budget.state, report.budget.monthly) == ("warning", 100)
    assert report.budget.percent == pytest.approx(85.0, abs=0.1)
    assert env.client.costs.report("2001-01").budget is None

    text = env.http.get("/v1/metrics").text
    assert 'gureum_budget_state{state="warning",workspace="default"} 1.0' in text
    assert 'gureum_budget_monthly_limit{currency="USD",workspace="default"} 100.0' in text
    ratio = next(line for line in text.splitlines() if line.startswith("gureum_budget_used_ratio"))
    assert float(ratio.split()[-1]) == pytest.approx(0.85, abs=0.01)


# -- racing for the last of a budget ---------------------------------------------------------------


def test_concurrent_submissions_overspend_by_at_most_one_jobs_maximum(env: Env) -> None:
    """Eight submissions at once for a budget that holds three and a bit jobs: admitted one
    at a time under the budget row's lock, so exactly four get in and the reservations add up to
    the budget (PostgreSQL: real concurrent transactions; SQLite serialises writers)."""
    env.put(monthly=10, per_job=3)
    n = 8
    barrier = threading.Barrier(n)
    statuses: list[int] = []
    lock = threading.Lock()

    def submit() -> None:
        http = env.as_key(env.token)
        barrier.wait()
        r = http.post("/v1/jobs", json=JOB)
        with lock:
            statuses.append(r.status_code)
        assert r.status_code in (201, 409), r.text

    threads = [threading.Thread(target=submit) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [201] * 4 + [409] * 4
    b = env.budget()
    assert b["committed"] <= 10 + 3 + 1e-6
    assert b["reserved"] == pytest.approx(10.0, abs=0.01)
    limits = sorted(j["timeout_s"] for j in env.http.get("/v1/jobs").json()["items"])
    assert limits == pytest.approx([1.0, 3.0, 3.0, 3.0], abs=0.01)


# -- endpoints at their minimum ----------------------------------------------------------------


@pytest.fixture
def serving(settings: Settings) -> Iterator[EndpointEnv]:
    settings.price_cpu_hour = 3600.0
    yield from make_endpoint_env(settings)


def test_an_exceeded_budget_holds_endpoints_at_their_minimum_until_raised(
    serving: EndpointEnv,
) -> None:
    app = serving.cloud.app
    scaling = {"min_replicas": 1, "max_replicas": 4}
    serving.ready("m:1", config={"autoscaling": scaling})
    serving.ready("m:1", name="idle", config={"autoscaling": {"min_replicas": 0}})
    assert serving.fake.last("shop").autoscaling.max_replicas == 4
    with app.state.db.write() as s:
        ws = s.scalar(select(Workspace.id).where(Workspace.name == "default"))
        end = utcnow() - timedelta(seconds=1)
        costs.record_endpoint(
            s, ws, "shop", end - timedelta(seconds=12), end, 1, ReplicaResources(cpus=1)
        )
    http = serving.http
    put = http.put("/v1/workspaces/default/budget", json={"monthly": 10})
    assert put.json()["state"] == "exceeded"
    held = {e["endpoint"]: e for e in put.json()["endpoints_at_minimum"]}
    assert held["shop"]["min_replicas"] == 1 and held["shop"]["max_replicas"] == 4
    serving.tick()
    assert serving.fake.last("shop").autoscaling.max_replicas == 1  # at its minimum
    assert serving.fake.last("shop").autoscaling.min_replicas == 1  # and still running
    assert ("budget", "held at 1 replica(s) minimum: the budget is exceeded") in serving.events()
    # An endpoint already at most one replica is not touched.
    assert serving.fake.last("idle").autoscaling.max_replicas == 1
    assert [k for k, _ in serving.events("idle")].count("budget") == 0
    # Its cost while held is reported apart.
    with app.state.db.write() as s:
        now = utcnow()
        costs.record_endpoint(
            s, ws, "shop", now - timedelta(seconds=0.5), now, 1, ReplicaResources(cpus=1)
        )
    report = http.get("/v1/costs").json()["budget"]
    shop = next(e for e in report["endpoints_at_minimum"] if e["endpoint"] == "shop")
    assert 0 < shop["cost_since_held"] <= 0.51

    # Nothing may add replicas while held: a new endpoint, a higher minimum, a canary.
    refused = [
        http.post("/v1/endpoints", json={"name": "more", "model": "m:1"}),
        http.patch(
            "/v1/endpoints/shop",
            json={"config": {"autoscaling": {"min_replicas": 2, "max_replicas": 4}}},
        ),
        http.post("/v1/endpoints", json={"name": "shop", "model": "m:1", "shadow": True}),
    ]
    for r in refused:
        assert r.status_code == 409 and r.json()["error"]["code"] == "budget_exceeded", r.text
        assert "budget is exceeded" in r.json()["error"]["message"]
    assert http.get("/v1/endpoints/more").status_code == 404
    # What costs no more stays allowed: a lower minimum.
    lower = {"autoscaling": {"min_replicas": 0, "max_replicas": 4}}
    assert http.patch("/v1/endpoints/shop", json={"config": lower}).status_code == 200

    raised = http.put("/v1/workspaces/default/budget", json={"monthly": 100}).json()
    assert raised["state"] == "ok" and raised["endpoints_at_minimum"] == []
    serving.tick()
    assert serving.fake.last("shop").autoscaling.max_replicas == 4
    assert serving.events()[-1] == ("budget", "released: up to 4 replicas again")
