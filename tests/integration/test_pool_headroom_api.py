"""The pool's serving headroom, guaranteed shares taken back through the queue, and the sum
of shares checked against the cluster, with the job and pool controllers against the fake
compute engine (no Ray), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gureum import samples
from gureum.client import Client
from gureum.compute.resources import NodeInfo
from gureum.config import Settings
from gureum.server.controllers.pool import HEADROOM_CONFIRM_S, PoolController
from gureum.server.db.base import utcnow
from gureum.server.db.tables import Job, Model, ModelVersion, Workspace
from gureum.server.db.tables_serving import Endpoint
from gureum.serving.backend import AppState, app_name
from tests.integration.test_budgets_api import JOB, Env, error, make_env


@pytest.fixture
def env(settings: Settings, tmp_path: Path) -> Iterator[Env]:
    yield from make_env(settings, tmp_path)


def _endpoint(env: Env, max_replicas: int) -> int:
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
        config = {"resources": {"cpus": 1}, "autoscaling": {"max_replicas": max_replicas}}
        ep = Endpoint(
            name="shop",
            workspace_id=ws,
            model_id=model.id,
            version_id=version.id,
            config=config,
            token_hash="0" * 64,
            state="ready",
        )
        s.add(ep)
        s.flush()
        return ep.id


def _pool(env: Env, settings: Settings, states: dict[str, AppState]) -> PoolController:
    pool = PoolController(env.app.state.db, lambda: states, env.fake.available, settings, list)
    env.jobs.reserved = pool.reserved  # as the app wires them
    return pool


def _running(env: Env, *jobs: dict[str, Any]) -> None:
    env.jobs.tick()
    for j in jobs:
        env.fake.emit(str(j["id"]), 1, {"type": "started", "node_id": "node-1"})
    env.jobs.tick()
    assert {env.job(str(j["id"]))["state"] for j in jobs} == {"running"}


def _stop_state(env: Env, job_id: str) -> str | None:
    with env.db.read() as s:
        row = s.get(Job, job_id)
        assert row is not None
        return row.stop_state


def test_the_queue_leaves_the_next_replicas_room_free(env: Env, settings: Settings) -> None:
    ep_id = _endpoint(env, max_replicas=3)
    states = {app_name(ep_id): AppState("RUNNING", "", 1, ep_id, replicas=1)}
    pool = _pool(env, settings, states)
    env.fake.free = {"CPU": 3.0}  # the cluster's other CPUs are taken
    pool.tick()
    assert pool.reserved() == {"CPU": 1.0}
    jobs = [env.submit(resources={"cpus": 1}) for _ in range(3)]
    env.jobs.tick()
    assert len(env.fake.launched) == 2  # the third CPU is the next replica's
    reason = env.job(jobs[2]["id"])["wait_reason"]
    assert reason == "waiting for 1 CPU (1 CPU kept free for serving's next replicas)", reason
    assert pool.preempted == 0
    # At max_replicas there is nothing to keep: the job starts.
    states[app_name(ep_id)] = AppState("RUNNING", "", 3, ep_id, replicas=3)
    pool.tick()
    assert pool.reserved() == {}
    env.jobs.tick()
    assert len(env.fake.launched) == 3


def test_headroom_taken_is_restored_in_the_background_after_preempt_after_s(
    env: Env, settings: Settings
) -> None:
    settings.preempt_after_s, settings.preempt_min_run_s = 5.0, 0.0
    low = env.submit(priority=-1, resources={"cpus": 1})
    high = env.submit(priority=5, resources={"cpus": 1})
    _running(env, low, high)
    ep_id = _endpoint(env, max_replicas=3)
    # A scale-up took the headroom: 2 replicas, room for the third is no longer free.
    states = {app_name(ep_id): AppState("RUNNING", "", 2, ep_id, replicas=2)}
    env.fake.free = {"CPU": 0.0}
    pool = _pool(env, settings, states)
    pool.tick()
    assert pool.preempted == 0  # short for less than preempt_after_s: a node may come
    pool._short = {k: t - 6 for k, t in pool._short.items()}
    pool.tick()
    assert pool.preempted == 1
    assert (_stop_state(env, low["id"]), _stop_state(env, high["id"])) == ("preempt", None)
    message = next(e.message for e in env.client.jobs.events(low["id"]) if e.kind == "preempted")
    assert "room for its next replica (1 CPU) had been taken" in message, message
    pool.tick()  # the room the stopping job holds counts as free: nothing more
    assert pool.preempted == 1
    env.jobs.tick()
    env.fake.emit(low["id"], 1, {"type": "end", "outcome": "cancelled", "error": None})
    env.fake.free = {"CPU": 1.0}
    env.jobs.tick()
    with env.db.write() as s:  # past its hold: it may start, but the room is serving's
        row = s.get(Job, low["id"])
        assert row is not None and row.state == "queued"
        row.not_before = utcnow() - timedelta(seconds=1)
    pool.tick()
    env.jobs.tick()
    assert env.job(low["id"])["state"] == "queued" and len(env.fake.launched) == 2


def test_a_waiting_replica_goes_before_the_headroom(env: Env, settings: Settings) -> None:
    settings.preempt_after_s, settings.preempt_min_run_s = 0.0, 0.0
    first = env.submit(priority=-2, resources={"cpus": 1})
    second = env.submit(priority=-1, resources={"cpus": 1})
    _running(env, first, second)
    ep_id = _endpoint(env, max_replicas=3)
    since = utcnow().timestamp() - 1
    app = app_name(ep_id)
    states = {app: AppState("RUNNING", "", 1, ep_id, starting=1, starting_since=since, replicas=2)}
    env.fake.free = {"CPU": 0.0}
    pool = _pool(env, settings, states)
    pool.tick()
    # Both are kept from the queue; only the waiting replica preempts now.
    assert pool.reserved() == {"CPU": 2.0}
    assert pool.preempted == 1 and _stop_state(env, first["id"]) == "preempt"
    assert _stop_state(env, second["id"]) is None
    # The replica is placed in that room: the headroom for the third is restored next.
    states[app] = AppState("RUNNING", "", 2, ep_id, replicas=2)
    env.jobs.tick()
    env.fake.emit(first["id"], 1, {"type": "end", "outcome": "cancelled", "error": None})
    env.jobs.tick()
    pool.tick()
    assert pool.preempted == 1  # short for less than HEADROOM_CONFIRM_S: not yet
    _backdate_short(pool)
    pool.tick()
    assert pool.preempted == 2 and _stop_state(env, second["id"]) == "preempt"


def test_headroom_short_for_a_tick_preempts_nothing(env: Env, settings: Settings) -> None:
    """For a tick the headroom can look taken while the views catch up (a job's CPU handed on
    as it ends): with ``preempt_after_s`` 0 that must not cost a job its progress."""
    settings.preempt_after_s, settings.preempt_min_run_s = 0.0, 0.0
    job = env.submit(priority=-1, resources={"cpus": 1})
    _running(env, job)
    ep_id = _endpoint(env, max_replicas=3)
    states = {app_name(ep_id): AppState("RUNNING", "", 1, ep_id, replicas=1)}
    env.fake.free = {"CPU": 0.0}
    pool = _pool(env, settings, states)
    pool.tick()
    assert pool.preempted == 0
    env.fake.free = {"CPU": 1.0}  # it was the views catching up: the room is free again
    pool.tick()
    assert pool.preempted == 0 and pool._short == {}
    env.fake.free = {"CPU": 0.0}  # taken again: the wait starts over
    pool.tick()
    assert pool.preempted == 0
    _backdate_short(pool)
    pool.tick()
    assert pool.preempted == 1 and _stop_state(env, job["id"]) == "preempt"


def _backdate_short(pool: PoolController) -> None:
    pool._short = {k: t - HEADROOM_CONFIRM_S for k, t in pool._short.items()}


def test_a_replica_placed_in_the_headroom_but_not_yet_on_a_node_preempts_nothing(
    env: Env, settings: Settings
) -> None:
    """Ray gives a placed replica its node only once its worker has started: until then the
    cluster's use shows its room taken, and no job is stopped for it."""
    settings.preempt_after_s, settings.preempt_min_run_s = 0.0, 0.0
    jobs = [env.submit(priority=-1, resources={"cpus": 1}) for _ in range(2)]
    _running(env, *jobs)
    ep_id = _endpoint(env, max_replicas=2)
    app = app_name(ep_id)
    since = utcnow().timestamp() - 1
    # 1 running replica and 1 starting without a node; nothing free.
    states = {app: AppState("RUNNING", "", 1, ep_id, starting=1, starting_since=since, replicas=2)}
    env.fake.free = {"CPU": 0.0}
    total = {"CPU": 4.0}  # 2 jobs + 2 replicas: the starting one holds its CPU already
    pool = PoolController(
        env.app.state.db,
        lambda: states,
        env.fake.available,
        settings,
        list,
        nodes=lambda: [NodeInfo(node_id="node-1", total=total)],
    )
    env.jobs.reserved = pool.reserved
    pool.tick()
    assert pool.preempted == 0 and pool.reserved() == {}
    # On 3 CPUs the same view means the replica waits for room: a job goes.
    total["CPU"] = 3.0
    pool.tick()
    assert pool.preempted == 1 and pool.reserved() == {"CPU": 1.0}


# -- guaranteed shares taken back ----------------------------------------------------------------


def _research(env: Env, tmp_path: Path) -> tuple[Client, str]:
    env.client.workspaces.create("research")
    key = env.client.keys.create("research-key", workspace="research").token
    research = Client("http://testserver", key, http=env.as_key(key))
    samples.write("tabular", tmp_path / "rows", count=50)
    research.datasets.push("orders", tmp_path / "rows")
    return research, key


def test_a_job_within_its_share_preempts_borrowed_capacity_and_goes_first(
    env: Env, settings: Settings, tmp_path: Path
) -> None:
    settings.preempt_after_s, settings.preempt_min_run_s = 0.0, 0.0
    research, key = _research(env, tmp_path)
    env.client.workspaces.set_share("research", cpus=2)
    # default (no share: all it runs is borrowed) fills the cluster.
    low = env.submit(priority=-1, resources={"cpus": 2})
    high = env.submit(priority=5, resources={"cpus": 2})
    pinned = env.submit(priority=-9, resources={"cpus": 2}, preemptible=False)
    _running(env, low, high, pinned)
    env.fake.free = {"CPU": 0.0}
    r = env.as_key(key).post("/v1/jobs", json={**JOB, "priority": -5, "resources": {"cpus": 2}})
    assert r.status_code == 201, r.text
    mine = r.json()["id"]
    pool = _pool(env, settings, {})
    pool.tick()
    assert pool.preempted == 1
    stops = {j["id"]: _stop_state(env, j["id"]) for j in (low, high, pinned)}
    assert stops == {low["id"]: "preempt", high["id"]: None, pinned["id"]: None}
    message = next(e.message for e in env.client.jobs.events(low["id"]) if e.kind == "preempted")
    assert message.startswith("preempted for workspace research: its job " + mine), message
    assert "borrowed capacity" in message, message
    pool.tick()  # the stopping job's room counts as the share's: nothing more
    assert pool.preempted == 1

    env.jobs.tick()
    env.fake.emit(low["id"], 1, {"type": "end", "outcome": "cancelled", "error": None})
    env.fake.free = {"CPU": 2.0}
    env.jobs.tick()
    requeued = env.job(low["id"])
    assert requeued["state"] == "queued"
    assert requeued["wait_reason"].startswith("preempted: a workspace took back its guaranteed")
    with env.db.write() as s:  # even past its hold, the higher-priority borrower waits
        row = s.get(Job, low["id"])
        assert row is not None
        row.not_before = utcnow() - timedelta(seconds=1)
    env.jobs.tick()
    assert env.fake.launched[-1].job_id == mine
    assert research.jobs.get(mine).state == "starting"
    assert env.job(low["id"])["state"] == "queued"


def test_nothing_is_taken_back_beyond_a_share_or_from_jobs_within_theirs(
    env: Env, settings: Settings, tmp_path: Path
) -> None:
    settings.preempt_after_s, settings.preempt_min_run_s = 0.0, 0.0
    _, key = _research(env, tmp_path)
    env.client.workspaces.set_share("research", cpus=2)
    env.client.workspaces.set_share("default", cpus=4)
    guarded = [env.submit(resources={"cpus": 2}) for _ in range(2)]  # within default's share
    _running(env, *guarded)
    env.fake.free = {"CPU": 0.0}
    big = env.as_key(key).post("/v1/jobs", json={**JOB, "resources": {"cpus": 4}})
    small = env.as_key(key).post("/v1/jobs", json={**JOB, "resources": {"cpus": 2}})
    assert big.status_code == small.status_code == 201
    pool = _pool(env, settings, {})
    pool.tick()
    # The 4-CPU job is beyond research's share of 2; the 2-CPU one finds no borrower.
    assert pool.preempted == 0
    assert {_stop_state(env, j["id"]) for j in guarded} == {None}


def test_a_job_its_quota_holds_back_takes_nothing_back(
    env: Env, settings: Settings, tmp_path: Path
) -> None:
    settings.preempt_after_s, settings.preempt_min_run_s = 0.0, 0.0
    _, key = _research(env, tmp_path)
    env.client.workspaces.set_share("research", cpus=2)
    lender = env.submit(priority=-9, resources={"cpus": 2})
    _running(env, lender)
    env.fake.free = {"CPU": 0.0}
    r = env.as_key(key).post("/v1/jobs", json={**JOB, "resources": {"cpus": 2}})
    assert r.status_code == 201, r.text
    env.client.workspaces.set_quotas("research", {"max_cpus": 1})  # lowered since
    pool = _pool(env, settings, {})
    pool.tick()
    assert pool.preempted == 0 and _stop_state(env, lender["id"]) is None  # not in vain
    env.client.workspaces.set_quotas("research", {"max_cpus": None})
    pool.tick()
    assert pool.preempted == 1 and _stop_state(env, lender["id"]) == "preempt"


# -- the sum of shares against the cluster -------------------------------------------------------


def test_shares_that_add_up_beyond_the_cluster_are_refused_in_words(
    env: Env, tmp_path: Path
) -> None:
    _research(env, tmp_path)
    env.client.workspaces.set_share("default", cpus=40)  # the fake cluster has 64 CPUs
    r = env.http.put("/v1/workspaces/research/share", json={"cpus": 30})
    assert r.status_code == 409, r.text
    body = error(r)
    assert body["code"] == "conflict", body
    assert "would add up to 70 CPUs but the cluster has 64 CPUs" in body["message"], body
    assert "at most 24 CPUs can be guaranteed to workspace research" in body["message"], body
    assert env.client.workspaces.get_share("research").cpus is None  # nothing written
    assert env.client.workspaces.set_share("research", cpus=24).cpus == 24  # exactly full
    r = env.http.put("/v1/workspaces/research/share", json={"gpus": 1})
    assert r.status_code == 409 and "0 GPUs" in error(r)["message"], r.text
    # The cluster shrank below the shares: lowering one is still allowed, raising is not.
    env.fake.nodes = lambda: [NodeInfo("node-1", {"CPU": 32.0})]  # type: ignore[method-assign]
    env.jobs._nodes = None
    assert env.client.workspaces.set_share("default", cpus=8).cpus == 8
    assert env.http.put("/v1/workspaces/default/share", json={"cpus": 9}).status_code == 409
    # The nodes the autoscaler may add count.
    env.jobs.may_add = [NodeInfo("may-1", {"CPU": 16.0, "GPU": 2.0})]
    assert env.client.workspaces.set_share("default", cpus=24, gpus=2).gpus == 2
