"""One pool, serving first, against the fake compute engine (no Ray), on SQLite and PostgreSQL:
only an admin may submit a job endpoints cannot preempt; a replica that waits for room past
``preempt_after_s`` preempts the lowest-priority running job (an event on both, a metric), the
job goes back to the queue and stays there for the hold, then resumes as its next attempt."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from gureum.config import Settings
from gureum.server.controllers.pool import PoolController
from gureum.server.db.base import utcnow
from gureum.server.db.tables import Job, Model, ModelVersion, Workspace
from gureum.server.db.tables_serving import Endpoint
from gureum.serving.backend import AppState, app_name
from tests.integration.test_budgets_api import Env, error, make_env


@pytest.fixture
def env(settings: Settings, tmp_path: Path) -> Iterator[Env]:
    yield from make_env(settings, tmp_path)


def test_a_non_preemptible_job_needs_an_admin(env: Env) -> None:
    developer = env.member("dev", "developer")
    body = {"recipe": "tabular", "dataset": "orders", "params": {"target": "returned"}}
    r = developer.post("/v1/jobs", json={**body, "preemptible": False})
    assert r.status_code == 403, r.text
    assert "preemptible: false" in error(r)["message"]
    ok = developer.post("/v1/jobs", json=body)
    assert ok.status_code == 201 and ok.json()["preemptible"] is True
    pinned = env.submit(preemptible=False)  # the bootstrap key is the workspace's owner
    assert pinned["preemptible"] is False
    assert env.job(pinned["id"])["preemptible"] is False
    with env.db.read() as s:
        assert s.get(Job, pinned["id"]).preemptible is False  # type: ignore[union-attr]


def _endpoint(env: Env, cpus: float) -> int:
    with env.db.write() as s:
        ws = s.scalar(select(Workspace.id).where(Workspace.name == "default"))
        assert ws is not None
        model = Model(workspace_id=ws, name="m")
        s.add(model)
        s.flush()
        version = ModelVersion(
            model_id=model.id, version=1, format="x", file_count=0, total_bytes=0
        )
        s.add(version)
        s.flush()
        ep = Endpoint(
            name="shop",
            workspace_id=ws,
            model_id=model.id,
            version_id=version.id,
            config={"resources": {"cpus": cpus}},
            token_hash="0" * 64,
            state="deploying",
        )
        s.add(ep)
        s.flush()
        return ep.id


def test_a_starving_replica_preempts_the_lowest_priority_job_which_resumes_later(
    env: Env, settings: Settings
) -> None:
    settings.preempt_after_s, settings.preempt_min_run_s = 5.0, 0.0
    low = env.submit(priority=-1, resources={"cpus": 2})
    high = env.submit(priority=5, resources={"cpus": 2})
    pinned = env.submit(priority=-9, resources={"cpus": 2}, preemptible=False)
    env.jobs.tick()
    for j in (low, high, pinned):
        env.fake.emit(j["id"], 1, {"type": "started", "node_id": "node-1"})
    env.jobs.tick()
    assert {env.job(j["id"])["state"] for j in (low, high, pinned)} == {"running"}
    ep_id = _endpoint(env, cpus=1.5)
    env.fake.free = {"CPU": 0.5}  # all but half a CPU held by the jobs
    since = utcnow().timestamp() - 6
    states = {
        app_name(ep_id): AppState("DEPLOYING", "", 0, ep_id, starting=1, starting_since=since)
    }
    woken: list[int] = []
    pool = PoolController(
        env.app.state.db, lambda: states, env.fake.available, settings, lambda: woken.append(1)
    )
    pool.tick()
    assert pool.preempted == 1 and woken
    pool.tick()  # the room the stopping job holds counts as free: no second victim
    assert pool.preempted == 1
    kinds = [(e.kind, e.message) for e in env.client.jobs.events(low["id"])]
    assert any(k == "preempted" and "endpoint shop" in m for k, m in kinds), kinds
    with env.db.read() as s:
        ep = s.get(Endpoint, ep_id)
        assert ep is not None and ep.event_seq == 1
    metrics = env.http.get("/v1/metrics").text
    assert 'gureum_preemptions_total{workspace="default"} 1.0' in metrics, metrics

    env.jobs.tick()  # the controller stops the attempt...
    assert (low["id"], 1) in env.fake.stopped
    env.fake.emit(low["id"], 1, {"type": "end", "outcome": "cancelled", "error": None})
    env.fake.free = {}
    env.jobs.tick()  # ...and it is queued again, held back for the replica
    queued = env.job(low["id"])
    assert queued["state"] == "queued" and queued["error"] is None
    assert queued["wait_reason"].startswith("preempted: serving needed the capacity")
    env.fake.free = {"CPU": 4.0}
    env.jobs.tick()
    assert len(env.fake.launched) == 3  # held: the replica takes the room first
    with env.db.write() as s:
        job = s.get(Job, low["id"])
        assert job is not None and job.not_before is not None
        job.not_before = utcnow() - timedelta(seconds=1)  # the hold is over
    env.jobs.tick()
    resumed = env.fake.launched[-1]
    assert (resumed.job_id, resumed.attempt) == (low["id"], 2)  # its checkpoints: same job
    assert env.job(high["id"])["state"] == env.job(pinned["id"])["state"] == "running"
