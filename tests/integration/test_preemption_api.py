"""One pool, serving first, against the fake compute engine (no Ray), on SQLite and PostgreSQL:
only an admin may submit a job endpoints cannot preempt; a replica that waits for room past
``preempt_after_s`` preempts the lowest-priority running job (an event on both, a metric), the
job goes back to the queue and stays there for the hold, then resumes as its next attempt; the
attempt is first given ``preempt_grace_s`` to checkpoint. Guaranteed shares: set by site admins
only, checked, and what a workspace borrows beyond its share is preempted first."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from gureum import samples
from gureum.client import Client
from gureum.compute.resources import NodeInfo
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

    env.jobs.tick()  # the controller stops the attempt, asking for a checkpoint first...
    assert (low["id"], 1) in env.fake.stopped
    assert env.fake.graces[env.fake.stopped.index((low["id"], 1))] == settings.preempt_grace_s
    env.fake.emit(low["id"], 1, {"type": "end", "outcome": "cancelled", "error": None})
    env.fake.free = {}
    env.jobs.tick()  # ...and it is queued again, held back for the replica
    queued = env.job(low["id"])
    assert queued["state"] == "queued" and queued["error"] is None
    assert queued["wait_reason"].startswith("preempted: serving needed the capacity")
    # Ray placed the replica in that room; the endpoint controller's view still says it waits
    # (a tick behind): the room was made for it, so nobody else is preempted.
    env.fake.free = {"CPU": 0.0}
    pool.tick()
    assert pool.preempted == 1
    with env.db.read() as s:
        spared = s.get(Job, high["id"])
        assert spared is not None and spared.stop_state is None
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


def test_the_room_a_preempted_job_frees_is_not_given_to_the_queue(
    env: Env, settings: Settings
) -> None:
    settings.preempt_after_s, settings.preempt_min_run_s = 5.0, 0.0
    low = env.submit(priority=-1, resources={"cpus": 2})
    env.jobs.tick()
    env.fake.emit(low["id"], 1, {"type": "started", "node_id": "node-1"})
    env.jobs.tick()
    ep_id = _endpoint(env, cpus=2)
    env.fake.free = {"CPU": 0.0}
    since = utcnow().timestamp() - 6
    states = {
        app_name(ep_id): AppState("DEPLOYING", "", 0, ep_id, starting=1, starting_since=since)
    }
    pool = PoolController(env.app.state.db, lambda: states, env.fake.available, settings, list)
    pool.tick()
    assert pool.preempted == 1
    # The preempted attempt has ended on Ray (its CPUs show free) before its end reaches the
    # controller: a job queued meanwhile does not take the replica's room.
    late = env.submit(priority=3, resources={"cpus": 2})
    env.fake.free = {"CPU": 2.0}
    env.jobs.tick()
    assert [(r.job_id, r.attempt) for r in env.fake.launched] == [(low["id"], 1)]
    assert env.job(late["id"])["state"] == "queued"
    assert env.job(late["id"])["wait_reason"].startswith("waiting for 2 CPUs")


def test_a_cancel_stops_at_once_without_a_checkpoint_grace(env: Env) -> None:
    job = env.submit()
    env.jobs.tick()
    env.fake.emit(job["id"], 1, {"type": "started", "node_id": "node-1"})
    env.jobs.tick()
    env.client.jobs.cancel(job["id"])
    env.jobs.tick()
    assert env.fake.stopped == [(job["id"], 1)] and env.fake.graces == [0.0]


# -- guaranteed shares ---------------------------------------------------------------------------


def test_guaranteed_shares_are_set_by_site_admins_and_bad_input_is_refused(env: Env) -> None:
    empty = env.client.workspaces.get_share("default")
    assert (empty.cpus, empty.gpus, empty.used_cpus, empty.borrowed_cpus) == (None, None, 0, 0)
    env.fake.nodes = lambda: [NodeInfo("node-1", {"CPU": 64.0, "GPU": 2.0})]  # type: ignore[method-assign]
    out = env.client.workspaces.set_share("default", cpus=4, gpus=1)
    assert (out.workspace, out.cpus, out.gpus) == ("default", 4, 1)

    for bad in ({"cpus": -1}, {"gpus": -0.5}, {"cpus": "lots"}, {"cpus": 1e9}, {"memory": 1}):
        r = env.http.put("/v1/workspaces/default/share", json=bad)
        assert r.status_code == 422 and error(r)["code"] == "invalid_request", (bad, r.text)
    r = env.http.put("/v1/workspaces/nowhere/share", json={"cpus": 1})
    assert r.status_code == 404 and error(r)["code"] == "not_found"
    assert env.http.get("/v1/workspaces/nowhere/share").status_code == 404
    viewer = env.member("vera", "viewer")
    assert viewer.get("/v1/workspaces/default/share").json()["cpus"] == 4  # members see it
    for role in ("developer", "admin", "owner"):  # a workspace's own admins cannot raise it
        who = env.member(f"u-{role}", role)
        r = who.put("/v1/workspaces/default/share", json={"cpus": 64})
        assert r.status_code == 403 and error(r)["code"] == "forbidden", (role, r.text)
    assert "site admins" in error(r)["message"]
    after = env.client.workspaces.get_share("default")
    assert (after.cpus, after.gpus) == (4, 1)  # nothing half-written
    cleared = env.client.workspaces.set_share("default")
    assert (cleared.cpus, cleared.gpus) == (None, None)


def _start(env: Env, *jobs: dict[str, object]) -> None:
    env.jobs.tick()
    for j in jobs:
        env.fake.emit(str(j["id"]), 1, {"type": "started", "node_id": "node-1"})
    env.jobs.tick()


def test_borrowed_capacity_is_preempted_before_a_share_whatever_the_priority(
    env: Env, settings: Settings, tmp_path: Path
) -> None:
    settings.preempt_after_s, settings.preempt_min_run_s = 5.0, 0.0
    env.client.workspaces.create("research")
    key = env.client.keys.create("research-key", workspace="research").token
    research = Client("http://testserver", key, http=env.as_key(key))
    samples.write("tabular", tmp_path / "rows", count=50)
    research.datasets.push("orders", tmp_path / "rows")
    env.client.workspaces.set_share("default", cpus=2)  # research has no share: all borrowed

    # default's share covers its highest-priority job; its other job borrows beyond it.
    guaranteed = env.submit(priority=-5, resources={"cpus": 2})
    extra = env.submit(priority=-9, resources={"cpus": 2})
    r = env.as_key(key).post(
        "/v1/jobs",
        json={
            "recipe": "tabular",
            "dataset": "orders",
            "params": {"target": "returned"},
            "priority": 9,
            "resources": {"cpus": 2},
        },
    )
    assert r.status_code == 201, r.text
    borrower = r.json()
    _start(env, guaranteed, extra, borrower)
    share = env.client.workspaces.get_share("default")
    assert (share.used_cpus, share.borrowed_cpus) == (4, 2)
    assert research.workspaces.get_share("research").borrowed_cpus == 2

    ep_id = _endpoint(env, cpus=4)
    env.fake.free = {"CPU": 0.0}
    since = utcnow().timestamp() - 6
    states = {
        app_name(ep_id): AppState("DEPLOYING", "", 0, ep_id, starting=1, starting_since=since)
    }
    pool = PoolController(env.app.state.db, lambda: states, env.fake.available, settings, list)
    pool.tick()
    with env.db.read() as s:
        rows = {j["id"]: s.get(Job, j["id"]) for j in (guaranteed, extra, borrower)}
        marked = {k: row.stop_state if row else "?" for k, row in rows.items()}
    # The two borrowers make the room (4 CPUs): the job within its share is spared, though
    # research's borrower has a far higher priority.
    assert marked == {guaranteed["id"]: None, extra["id"]: "preempt", borrower["id"]: "preempt"}
    message = next(e.message for e in research.jobs.events(borrower["id"]) if e.kind == "preempted")
    assert "borrowed capacity" in message, message
    pool.tick()  # the room the stopping jobs hold counts as free: nothing more
    assert pool.preempted == 2
