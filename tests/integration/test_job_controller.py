"""The job controller against a fake compute engine: queue order, quotas, wait reasons,
retries, cancel, timeout, restart. Real databases (SQLite and PostgreSQL), no Ray."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from gureum import samples
from gureum.client import Client
from gureum.compute.resources import NodeInfo
from gureum.compute.spec import Item, JobSpec, Report
from gureum.config import Settings
from gureum.server.app import create_app
from gureum.server.controllers.jobs import JobController
from gureum.server.db.base import utcnow
from gureum.server.db.tables import Job
from gureum.server.db.tables_serving import ResourceUsage
from gureum.server.services.bootstrap import bootstrap


@dataclass
class FakeBackend:
    """Stands in for Ray: attempts are scripted by the test through ``emit``."""

    cpus: float = 4.0
    view_lag_s: float = 0.0  # ``free`` is exact unless a test says otherwise
    free: dict[str, float] = field(default_factory=dict)
    launched: list[JobSpec] = field(default_factory=list)
    queues: dict[tuple[str, int], list[Item]] = field(default_factory=dict)
    seq: dict[tuple[str, int], int] = field(default_factory=dict)
    dead: set[tuple[str, int]] = field(default_factory=set)
    stopped: list[tuple[str, int]] = field(default_factory=list)
    graces: list[float] = field(default_factory=list)  # the grace_s of each stop
    released: list[tuple[str, int]] = field(default_factory=list)
    swept: list[set[str]] = field(default_factory=list)

    def nodes(self) -> list[NodeInfo]:
        total = {"CPU": self.cpus, "memory": 8 * 1024**3, "accelerator_type:A100": 1.0}
        return [NodeInfo("node-1", total)]

    def available(self) -> Mapping[str, float]:
        return self.free or {"CPU": self.cpus, "accelerator_type:A100": 1.0}

    def launch(self, spec: JobSpec) -> None:
        self.launched.append(spec)
        self.queues[(spec.job_id, spec.attempt)] = []

    def emit(self, job_id: str, attempt: int, *items: Item) -> None:
        key = (job_id, attempt)
        for item in items:
            self.seq[key] = self.seq.get(key, 0) + 1
            self.queues[key].append({**item, "seq": self.seq[key]})

    def poll(self, attempts: Sequence[tuple[str, int, int]]) -> dict[tuple[str, int], Report]:
        out = {}
        for job_id, attempt, ack in attempts:
            key = (job_id, attempt)
            if key in self.dead or key not in self.queues:
                out[key] = Report(items=[], alive=False)
                continue
            self.queues[key] = [i for i in self.queues[key] if i["seq"] > ack]
            out[key] = Report(items=list(self.queues[key]), alive=True)
        return out

    def stop(self, job_id: str, attempt: int, grace_s: float = 0.0) -> None:
        self.stopped.append((job_id, attempt))
        self.graces.append(grace_s)

    def release(self, job_id: str, attempt: int) -> None:
        self.released.append((job_id, attempt))
        self.queues.pop((job_id, attempt), None)

    def sweep(self, active: set[str]) -> None:
        self.swept.append(active)

    def attempts(self) -> list[tuple[str, int]]:
        return list(self.queues)


@dataclass
class Env:
    client: Client
    http: TestClient
    fake: FakeBackend
    controller: JobController

    def submit(self, **body: Any) -> dict[str, Any]:
        body.setdefault("recipe", "tabular")
        body.setdefault("dataset", "orders")
        body.setdefault("params", {"target": "returned"})
        r = self.http.post("/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.http.get(f"/v1/jobs/{job_id}").json())

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.http.get(f"/v1/jobs/{job_id}/events").json()["items"])


@pytest.fixture
def env(settings: Settings, tmp_path: Path) -> Iterator[Env]:
    fake = FakeBackend()
    app = create_app(settings, compute=fake)
    token = bootstrap(app.state.db)
    assert token is not None
    http = TestClient(app, raise_server_exceptions=False)
    http.headers["Authorization"] = f"Bearer {token}"
    client = Client("http://testserver", token, http=TestClient(app))
    samples.write("tabular", tmp_path / "orders", count=200)
    client.datasets.push("orders", tmp_path / "orders")
    samples.write("text", tmp_path / "text", count=20)
    client.datasets.push("notes", tmp_path / "text")
    yield Env(client, http, fake, app.state.jobs)
    app.state.db.dispose()


def _blob(env: Env, data: bytes) -> dict[str, Any]:
    store = env.controller.store
    info = store.write_blob(1, iter([data]), max_bytes=1 << 20)
    return {"sha256": info.sha256, "size": info.size}


def test_a_job_runs_reports_and_registers_its_model_with_lineage(env: Env) -> None:
    job = env.submit(model="returns")
    assert job["state"] == "queued" and job["attempt"] == 0
    env.controller.tick()
    spec = env.fake.launched[0]
    assert spec.job_id == job["id"] and spec.attempt == 1 and spec.recipe == "tabular"
    assert spec.dataset is not None and len(spec.dataset["files"]) == 1
    assert len(spec.dataset["files"][0]["sha256"]) == 64  # the work fetches blobs itself
    assert env.job(job["id"])["state"] == "starting"

    env.fake.emit(
        job["id"],
        1,
        {"type": "started", "node_id": "node-1"},
        {"type": "log", "text": "hello\n"},
        {"type": "metrics", "step": 10, "epoch": 1, "values": {"loss": 0.5}},
        {"type": "progress", "epoch": 1, "step": 10, "total_steps": 20},
    )
    env.controller.tick()
    running = env.job(job["id"])
    assert running["state"] == "running" and running["started_at"] is not None
    assert running["progress"]["step"] == 10 and running["progress"]["loss"] == 0.5
    logs = env.http.get(f"/v1/jobs/{job['id']}/logs")
    assert logs.text == "hello\n" and logs.headers["X-Next-Offset"] == "6"
    assert env.http.get(f"/v1/jobs/{job['id']}/logs", params={"offset": 6}).text == ""
    metrics = env.http.get(f"/v1/jobs/{job['id']}/metrics").json()["items"]
    assert [m["values"] for m in metrics] == [{"loss": 0.5}]

    model = {"path": "model.joblib", **_blob(env, b"weights")}
    grid = {"path": "samples.png", **_blob(env, b"\x89PNG fake")}
    page = {"path": "report.html", **_blob(env, b"<script>alert(document.cookie)</script>")}
    result = {
        "metrics": {"accuracy": 0.75},
        "details": {},
        "params": {"target": "returned"},
        "register": True,
        "model_files": [model],
        "outputs": [grid, page],
    }
    env.fake.emit(job["id"], 1, {"type": "end", "outcome": "succeeded", "result": result})
    env.controller.tick()
    done = env.job(job["id"])
    assert done["state"] == "succeeded", done
    assert done["metrics"] == {"accuracy": 0.75}
    assert done["model_version"] == "returns:1"
    version = env.client.models.version("returns", 1)
    assert version.job_id == job["id"] and version.dataset == "orders:1"
    assert version.metrics == {"accuracy": 0.75} and version.recipe == "tabular"
    assert version.code_hash and version.code_hash.startswith("sha256:")
    outputs = env.http.get(f"/v1/jobs/{job['id']}/outputs").json()["items"]
    assert sorted(o["path"] for o in outputs) == ["report.html", "samples.png"]
    body = env.http.get(f"/v1/jobs/{job['id']}/outputs/samples.png")
    assert body.content == b"\x89PNG fake" and body.headers["content-type"] == "image/png"
    assert "sandbox" in body.headers["content-security-policy"]
    # A page a job wrote is user content on the dashboard's origin: a download, never a page.
    html = env.http.get(f"/v1/jobs/{job['id']}/outputs/report.html")
    assert html.headers["content-type"] == "application/octet-stream"
    assert html.headers["content-disposition"] == "attachment"
    assert html.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in html.headers["content-security-policy"]
    assert (job["id"], 1) in env.fake.released
    kinds = [e["message"].split(" ")[0] for e in env.events(job["id"]) if e["kind"] == "state"]
    assert kinds == ["queued", "starting", "running", "succeeded"]


def test_reports_delivered_twice_are_stored_once(env: Env) -> None:
    job = env.submit()
    env.controller.tick()
    env.fake.emit(job["id"], 1, {"type": "log", "text": "once\n"})
    items = list(env.fake.queues[(job["id"], 1)])
    env.controller.tick()
    env.fake.queues[(job["id"], 1)] = items  # a restarted poll sees them again
    env.controller.tick()
    assert env.http.get(f"/v1/jobs/{job['id']}/logs").text == "once\n"


def test_queue_orders_by_priority_then_age_and_says_why_jobs_wait(env: Env) -> None:
    env.fake.cpus = 2.0
    low = env.submit(priority=0, resources={"cpus": 2})
    high = env.submit(priority=5, resources={"cpus": 2})
    env.controller.tick()
    assert [s.job_id for s in env.fake.launched] == [high["id"]]
    env.fake.free = {"CPU": 0.0}
    env.controller.tick()
    waiting = env.job(low["id"])
    assert waiting["state"] == "queued" and waiting["wait_reason"] == "waiting for 2 CPUs"
    assert any(e["kind"] == "wait" for e in env.events(low["id"]))


def test_a_job_just_started_keeps_its_room_while_rays_view_lags(env: Env) -> None:
    """Ray's view of free resources can show a CPU free for a moment after the job given it
    has started: the queue must not launch a second job into it (on a shared pool, that
    job took serving's headroom and the pool preempted one for it)."""
    env.fake.cpus, env.fake.view_lag_s = 1.0, 2.0
    first = env.submit(resources={"cpus": 1})
    env.controller.tick()
    env.fake.emit(first["id"], 1, {"type": "started", "node_id": "node-1"})
    env.controller.tick()
    assert env.job(first["id"])["state"] == "running"
    second = env.submit(resources={"cpus": 1})
    env.controller.tick()  # Ray's view (the fake's 1 CPU free) does not show the first yet
    assert [s.job_id for s in env.fake.launched] == [first["id"]]
    assert env.job(second["id"])["wait_reason"] == "waiting for 1 CPU"
    with env.controller.db.write() as s:  # past view_lag_s: Ray's view is taken as it is
        row = s.get(Job, first["id"])
        assert row is not None and row.started_at is not None
        row.started_at -= timedelta(seconds=env.fake.view_lag_s)
    env.controller.tick()
    assert [s.job_id for s in env.fake.launched] == [first["id"], second["id"]]


def test_workspace_quotas_hold_jobs_in_the_queue_with_the_reason(env: Env) -> None:
    env.fake.cpus = 8.0
    r = env.http.put("/v1/workspaces/default/quotas", json={"max_cpus": 4})
    assert r.status_code == 200, r.text
    r = env.http.post(
        "/v1/jobs",
        json={
            "recipe": "tabular",
            "dataset": "orders",
            "params": {"target": "returned"},
            "resources": {"cpus": 5},
        },
    )
    assert r.status_code == 422 and "workspace quota allows 4" in r.text
    first = env.submit(resources={"cpus": 4})
    second = env.submit(resources={"cpus": 1})
    env.controller.tick()
    assert [s.job_id for s in env.fake.launched] == [first["id"]]
    assert env.job(second["id"])["wait_reason"] == "workspace quota: 4 CPUs in use of 4"
    env.http.put("/v1/workspaces/default/quotas", json={"max_concurrent_jobs": 1})
    env.controller.tick()
    assert env.job(second["id"])["wait_reason"] == (
        "workspace quota: 1 of 1 concurrent jobs running"
    )
    env.fake.emit(first["id"], 1, {"type": "end", "outcome": "failed", "error": "boom"})
    env.controller.tick()
    env.controller.tick()
    assert env.job(first["id"])["state"] == "failed"
    assert env.job(second["id"])["state"] == "starting"


def test_a_lost_attempt_is_retried_then_given_up(env: Env) -> None:
    job = env.submit(max_retries=1)
    env.controller.tick()
    env.fake.dead.add((job["id"], 1))
    env.controller.tick()
    retried = env.job(job["id"])
    assert retried["state"] in ("queued", "starting")
    retry = [e for e in env.events(job["id"]) if e["kind"] == "retry"]
    assert retry and "resume from the last checkpoint" in retry[0]["message"]
    env.controller.tick()
    assert env.fake.launched[-1].attempt == 2 and env.job(job["id"])["attempt"] == 2
    env.fake.emit(job["id"], 2, {"type": "end", "outcome": "lost", "error": "WorkerCrashedError"})
    env.controller.tick()
    failed = env.job(job["id"])
    assert failed["state"] == "failed" and "gave up after 1 retries" in failed["error"]


def test_a_retried_job_is_not_running_while_it_waits(env: Env) -> None:
    """The lost attempt's span is billed and taken off its time limit; the job then waits
    with no start time, so it is neither billed nor timed out for the wait."""
    job = env.submit(max_retries=1, timeout_s=100)
    env.controller.tick()
    env.fake.emit(job["id"], 1, {"type": "started", "node_id": "n"})
    env.controller.tick()
    db = env.controller.db
    with db.write() as s:
        row = s.get(Job, job["id"])
        assert row is not None and row.started_at is not None
        row.started_at = utcnow() - timedelta(seconds=30)
    env.fake.dead.add((job["id"], 1))
    env.fake.free = {"CPU": 0.0}  # no room: the retry waits in the queue
    env.controller.tick()
    with db.read() as s:
        row = s.get(Job, job["id"])
        assert row is not None and row.state == "queued" and row.started_at is None
        assert row.timeout_s is not None and 69 <= row.timeout_s <= 71
        spans = s.scalars(select(ResourceUsage).where(ResourceUsage.ref == job["id"])).all()
        assert len(spans) == 1 and 29 <= spans[0].replica_seconds <= 31
    env.fake.free = {}
    env.controller.tick()
    env.fake.emit(job["id"], 2, {"type": "started", "node_id": "n"})
    env.fake.emit(job["id"], 2, {"type": "end", "outcome": "succeeded", "result": {}})
    env.controller.tick()
    with db.read() as s:
        spans = s.scalars(select(ResourceUsage).where(ResourceUsage.ref == job["id"])).all()
        assert len(spans) == 2 and sum(x.replica_seconds for x in spans) < 40


def test_a_user_error_fails_at_once_without_retry(env: Env) -> None:
    job = env.submit(max_retries=3)
    env.controller.tick()
    env.fake.emit(job["id"], 1, {"type": "end", "outcome": "failed", "error": "script exited 2"})
    env.controller.tick()
    out = env.job(job["id"])
    assert out["state"] == "failed" and out["error"] == "script exited 2" and out["attempt"] == 1


def test_cancel_queued_is_immediate_and_running_stops_the_work(env: Env) -> None:
    env.fake.cpus = 1.0
    running = env.submit()
    queued = env.submit()
    env.controller.tick()
    r = env.http.post(f"/v1/jobs/{queued['id']}/cancel")
    assert r.json()["state"] == "cancelled"
    r = env.http.post(f"/v1/jobs/{running['id']}/cancel")
    assert r.json()["state"] == "starting"  # the controller stops it
    env.controller.tick()
    assert env.fake.stopped == [(running["id"], 1)]
    env.fake.emit(running["id"], 1, {"type": "end", "outcome": "cancelled"})
    env.controller.tick()
    out = env.job(running["id"])
    assert out["state"] == "cancelled" and out["error"] == "cancelled by admin"


def test_a_timeout_stops_the_job_and_fails_it(env: Env) -> None:
    job = env.submit(timeout_s=0.01)
    env.controller.tick()
    env.fake.emit(job["id"], 1, {"type": "started", "node_id": "n"})
    env.controller.tick()
    time.sleep(0.05)
    env.controller.tick()  # past its timeout: asked to stop
    env.controller.tick()
    assert (job["id"], 1) in env.fake.stopped
    env.fake.emit(job["id"], 1, {"type": "end", "outcome": "cancelled"})
    env.controller.tick()
    out = env.job(job["id"])
    assert out["state"] == "failed" and out["error"].startswith("timed out after")


def test_a_restarted_controller_reattaches_and_settles(env: Env, settings: Settings) -> None:
    alive = env.submit()
    gone = env.submit()
    finished = env.submit()
    env.controller.tick()
    env.fake.emit(alive["id"], 1, {"type": "started", "node_id": "n"})
    env.fake.emit(finished["id"], 1, {"type": "end", "outcome": "failed", "error": "x"})
    env.controller.tick()
    env.fake.queues[("stale", 1)] = []  # an attempt no active job owns
    # "restart": a new controller over the same database and cluster
    env.fake.dead.add((gone["id"], 1))
    env.fake.emit(alive["id"], 1, {"type": "log", "text": "while the control plane was down\n"})
    fresh = JobController(env.controller.db, env.fake, env.controller.store)
    fresh.reconcile()
    assert ("stale", 1) in env.fake.released
    fresh.tick()
    assert env.job(alive["id"])["state"] == "running"
    assert "while the control plane was down" in env.http.get(f"/v1/jobs/{alive['id']}/logs").text
    assert env.job(gone["id"])["attempt"] >= 1
    assert any(e["kind"] == "retry" for e in env.events(gone["id"]))


def test_submission_refuses_what_can_never_run(env: Env) -> None:
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"recipe": "nope"}, 422, "unknown recipe"),
        ({"params": {"target": "returned", "epochz": 3}}, 422, "unknown parameter 'epochz'"),
        ({"recipe": "image-classifier", "dataset": "notes", "params": {}}, 422, "image"),
        ({"resources": {"cpus": 64}}, 422, "no node of the cluster can ever provide"),
        ({"resources": {"gpus": 1}}, 422, "GPU"),
        ({"resources": {"accelerator_type": "H100"}}, 422, "H100"),
        ({"dataset": "missing"}, 404, "missing"),
        ({"workers": 9, "resources": {"cpus": 1}}, 422, "9 workers"),
        ({"resources": {"cpus": -1}}, 422, "cpus"),
    ]
    for change, status, text in cases:
        body = {"recipe": "tabular", "dataset": "orders", "params": {"target": "returned"}}
        body.update(change)
        r = env.http.post("/v1/jobs", json=body)
        assert r.status_code == status, (change, r.text)
        assert text in r.text, (change, r.text)
        assert "error" in r.json()
    assert env.http.get("/v1/jobs").json()["items"] == []  # nothing was queued


def test_logs_are_capped_with_a_marker(env: Env) -> None:
    env.controller.max_log_bytes = 1000
    job = env.submit()
    env.controller.tick()
    env.fake.emit(job["id"], 1, *[{"type": "log", "text": "x" * 99 + "\n"} for _ in range(30)])
    env.controller.tick()
    text = env.http.get(f"/v1/jobs/{job['id']}/logs").text
    assert text.startswith("x" * 99) and "log truncated" in text
    assert len(text.encode()) < 1200


def test_another_workspace_cannot_see_or_cancel_a_job(env: Env) -> None:
    job = env.submit()
    env.http.post("/v1/workspaces", json={"name": "other"})
    key = env.client.keys.create("k", workspace="other").token
    other = {"Authorization": f"Bearer {key}"}
    assert env.http.get(f"/v1/jobs/{job['id']}", headers=other).status_code == 404
    assert env.http.post(f"/v1/jobs/{job['id']}/cancel", headers=other).status_code == 404
    assert env.http.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_progress_reports_an_eta(env: Env) -> None:
    job = env.submit()
    env.controller.tick()
    env.fake.emit(job["id"], 1, {"type": "progress", "epoch": 1, "step": 1, "total_steps": 10})
    env.controller.tick()
    env.fake.emit(job["id"], 1, {"type": "progress", "epoch": 1, "step": 5, "total_steps": 10})
    env.controller.tick()
    p = env.job(job["id"])["progress"]
    assert p["step"] == 5 and p["total_steps"] == 10 and p["eta_s"] is not None


def test_a_launched_job_ray_has_not_placed_says_what_it_waits_for(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gureum.server.controllers.jobs.PLACE_WAIT_S", 0.0)
    job = env.submit(resources={"cpus": 1, "accelerator_type": "A100"})
    env.controller.tick()
    env.controller.tick()
    waiting = env.job(job["id"])
    assert waiting["state"] == "starting"
    assert waiting["wait_reason"] == (
        "waiting for Ray to place it: "
        "a node with 1 CPU, an accelerator of type A100 free per worker"
    )
    env.fake.emit(job["id"], 1, {"type": "started", "node_id": "n"})
    env.controller.tick()
    assert env.job(job["id"])["wait_reason"] is None
