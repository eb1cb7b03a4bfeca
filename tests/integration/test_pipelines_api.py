"""Retrain pipelines through REST on the control plane (issue 12, item 4), without Ray: what is
refused, one run at a time, and a run's first steps surviving a control plane that stops or
crashes between a step's side effect and its record (nothing done twice). No cluster is
joined, so the training job the run submits waits in the queue; the whole loop on Ray is in
test_pipelines_ray.py. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from gureum.config import Settings
from gureum.server.auth import Principal
from gureum.server.controllers.pipelines import PipelineController
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import DatasetVersion, Job
from gureum.server.db.tables_pipelines import Pipeline
from gureum.server.services import curate, jobs
from gureum.server.services.pipeline_decide import judge
from gureum.server.services.pipeline_steps import Ctx
from tests.integration.test_consumers_api import member_key
from tests.integration.test_curate_api import Traffic, _push_table, _register
from tests.integration.test_endpoints_api import Env, make_env, usage_record
from tests.integration.trained_models import mark_trained_by_job

PARAMS = {"target": "returned", "max_iter": 20}


@pytest.fixture
def env(settings: Settings, tmp_path: Path) -> Iterator[Env]:
    for e in make_env(settings):
        rows = [
            [10 + i, "dress" if i % 2 else "shirt", "no" if i % 3 else "yes"] for i in range(40)
        ]
        _push_table(e, tmp_path, rows)
        _register(e, "returns", "tabular", "orders:1", **PARAMS)
        mark_trained_by_job(e.cloud.app.state.db, "returns", 1, PARAMS)
        e.ready("returns:1")
        yield e


def create(env: Env, status: int = 201, **body: Any) -> Any:
    full = {"name": "weekly", "model": "returns", "endpoint": "shop", "dataset": "orders", **body}
    r = env.http.post("/v1/pipelines", json=full)
    assert r.status_code == status, r.text
    return r.json()


def capture(env: Env, n: int = 3) -> list[str]:
    traffic = Traffic(env, "shop")
    items = [
        ({"inputs": [{"price": 200 + i, "garment": "coat"}]}, {"outputs": [{"prediction": "no"}]})
        for i in range(n)
    ]
    ids = traffic.calls(items)
    traffic.feedback(ids[0], rating=1, label="yes")
    return ids


def controller(env: Env) -> PipelineController:
    """A pipeline controller as a freshly started control plane has it (nothing in memory)."""
    return PipelineController(env.cloud.app.state.pipelines.env)


def run(env: Env, number: str = "latest") -> Any:
    r = env.http.get(f"/v1/pipelines/weekly/runs/{number}")
    assert r.status_code == 200, r.text
    return r.json()


def steps(out: Any) -> dict[str, str]:
    return {s["name"]: s["state"] for s in out["steps"]}


def counts(db: Database) -> tuple[int, int]:
    """(dataset versions, jobs) in the database."""
    with db.read() as s:
        versions = s.scalar(select(func.count()).select_from(DatasetVersion))
        made = s.scalar(select(func.count()).select_from(Job))
    return int(versions or 0), int(made or 0)


# -- what is refused --------------------------------------------------------------------------


def test_a_pipeline_is_created_listed_and_shown(env: Env) -> None:
    out = create(env, schedule="0 3 * * 1", canary_percent=20, approve="manual")
    assert (out["name"], out["model"], out["endpoint"], out["dataset"]) == (
        "weekly",
        "returns",
        "shop",
        "orders",
    )
    assert out["config"]["canary_percent"] == 20 and out["config"]["approve"] == "manual"
    assert out["next_scheduled_at"] is not None and out["next_scheduled_at"].startswith("20")
    assert out["active_run"] is None and out["last_run"] is None
    listed = env.http.get("/v1/pipelines").json()
    assert [p["name"] for p in listed["items"]] == ["weekly"]
    assert env.http.get("/v1/pipelines/weekly").json()["created_by"] == "admin"


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        ({"endpoint": "nowhere"}, 404, "not_found", "no endpoint 'nowhere'"),
        ({"model": "other"}, 422, "invalid_request", "serves returns:1, not a version of 'other'"),
        ({"schedule": "61 * * * *"}, 422, "invalid_request", "minute"),
        ({"schedule": "* * *"}, 422, "invalid_request", "five fields"),
        ({"canary_percent": 0}, 422, "invalid_request", "canary_percent"),
        ({"canary_percent": 100}, 422, "invalid_request", "canary_percent"),
        ({"higher_is_better": True}, 422, "invalid_request", "higher_is_better goes with"),
        ({"name": "Bad Name"}, 422, "invalid_request", "name"),
        ({"approve": "maybe"}, 422, "invalid_request", "approve"),
    ],
)
def test_bad_pipelines_are_refused(
    env: Env, body: dict[str, Any], status: int, code: str, words: str
) -> None:
    out = create(env, status=status, **body)
    assert out["error"]["code"] == code, out
    assert words in str(out["error"]), out
    assert env.http.get("/v1/pipelines").json()["items"] == []


def test_a_model_no_job_trained_cannot_be_retrained(env: Env) -> None:
    _register(env, "imported", "tabular", "orders:1", **PARAMS)
    env.deploy("imported:1", name="other")
    out = create(env, status=422, model="imported", endpoint="other")
    assert "was not trained by a job" in out["error"]["message"]


def test_names_are_unique_and_roles_hold(env: Env) -> None:
    create(env)
    assert create(env, status=409)["error"]["code"] == "conflict"
    viewer = env.cloud.http(member_key(env.cloud, "vera", "viewer"))
    r = viewer.post(
        "/v1/pipelines",
        json={"name": "v", "model": "returns", "endpoint": "shop", "dataset": "orders"},
    )
    assert r.status_code == 403, r.text
    assert viewer.post("/v1/pipelines/weekly/runs").status_code == 403
    assert viewer.get("/v1/pipelines/weekly").status_code == 200
    assert env.http.get("/v1/pipelines/nope").status_code == 404
    assert env.http.get("/v1/pipelines/weekly/runs/1").status_code == 404


# -- runs -------------------------------------------------------------------------------------


def test_one_run_at_a_time_and_a_cancel_stops_its_job(env: Env) -> None:
    create(env)
    capture(env)
    started = env.http.post("/v1/pipelines/weekly/runs")
    assert started.status_code == 202, started.text
    assert (started.json()["number"], started.json()["state"]) == (1, "running")
    assert started.json()["trigger"] == "by hand (admin)"
    again = env.http.post("/v1/pipelines/weekly/runs")
    assert again.status_code == 409 and again.json()["error"]["code"] == "run_in_progress"
    assert env.http.delete("/v1/pipelines/weekly").status_code == 409
    approve = env.http.post("/v1/pipelines/weekly/runs/1/approve", json={"approve": True})
    assert approve.status_code == 409, approve.text

    controller(env).tick()
    out = run(env)
    assert steps(out)["curate"] == "succeeded" and out["step"] == "train"
    assert out["dataset_version"] == "orders:2" and out["production"] == "returns:1"
    job_id = out["steps"][1]["data"]["job"]
    job = env.http.get(f"/v1/jobs/{job_id}").json()
    assert (job["kind"], job["state"], job["dataset"]) == ("train", "queued", "orders:2")
    assert job["params"]["max_iter"] == 20  # the last good configuration

    cancelled = env.http.post("/v1/pipelines/weekly/runs/latest/cancel")
    assert cancelled.status_code == 200, cancelled.text
    controller(env).tick()
    out = run(env)
    assert out["state"] == "cancelled" and "cancelled by admin" in out["reason"]
    assert steps(out)["train"] == "failed" and steps(out)["decide"] == "skipped"
    assert env.http.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
    assert env.http.post("/v1/pipelines/weekly/runs/1/cancel").status_code == 409
    assert env.get()["model_label"] == "returns:1"  # production untouched
    events = env.http.get("/v1/pipelines/weekly/runs/1/events").json()
    assert events[0]["kind"] == events[-1]["kind"] == "state"
    assert events[-1]["message"].startswith("cancelled: cancelled by admin")
    assert env.http.delete("/v1/pipelines/weekly").status_code == 204
    assert env.http.get("/v1/pipelines/weekly").status_code == 404


def test_nothing_new_to_learn_from_ends_the_run_without_training(env: Env) -> None:
    create(env)
    env.http.post("/v1/pipelines/weekly/runs")
    controller(env).tick()
    out = run(env)
    assert out["state"] == "not_promoted", out
    assert out["reason"].startswith("nothing new to learn from")
    assert steps(out)["train"] == "skipped"
    assert counts(env.cloud.app.state.db) == (1, 1)  # the base and the stand-in job only


def crash_after(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """``module.name`` does its work, then the control plane "dies" before recording it (once)."""
    real: Callable[..., Any] = getattr(module, name)
    crashed: list[int] = []

    def dying(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        if not crashed:
            crashed.append(1)
            raise RuntimeError("killed after the side effect, before its record")
        return out

    monkeypatch.setattr(module, name, dying)
    return crashed


def test_a_restart_between_a_side_effect_and_its_record_does_nothing_twice(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    db: Database = env.cloud.app.state.db
    create(env)
    capture(env)
    base = counts(db)
    env.http.post("/v1/pipelines/weekly/runs")
    curated = crash_after(monkeypatch, curate, "curate")
    submitted = crash_after(monkeypatch, jobs, "submit")
    for _ in range(6):  # each tick on a new controller: a control plane started afresh
        controller(env).tick()
    assert curated and submitted  # both crashed once after doing their work
    out = run(env)
    assert out["state"] == "running" and out["step"] == "train", out
    assert counts(db) == (base[0] + 1, base[1] + 1)  # one curated version, one job
    events = env.http.get("/v1/pipelines/weekly/runs/1/events").json()
    errors = [e["message"] for e in events if e["kind"] == "error"]
    assert len(errors) == 2 and all("killed after the side effect" in m for m in errors)
    assert out["steps"][0]["data"]["version"] == "orders:2"


# -- the canary's verdict ---------------------------------------------------------------------


def judged(
    env: Env,
    *,
    canary: tuple[int, int],
    ratings: tuple[list[int], list[int]] = ([], []),
    **config: Any,
) -> dict[str, Any]:
    """The decide step's verdict on a canary of returns:2 that answered ``canary`` (requests,
    errors) beside ten good answers of production, its answers rated ``ratings`` (canary's,
    production's)."""
    _register(env, "returns", "tabular", "orders:1", **PARAMS)
    env.deploy("returns:2", status=200, canary_percent=50)
    ep = env.row()
    assert ep.canary_version_id is not None
    prod, cand = ep.version_id, ep.canary_version_id
    start = utcnow() - timedelta(seconds=5)
    records = [usage_record(prod, "returns:1") for _ in range(10)]
    records += [
        usage_record(cand, "returns:2", role="canary", status=500 if i < canary[1] else 200)
        for i in range(canary[0])
    ]
    env.ship(records)
    traffic = Traffic(env, "shop")
    item = ({"inputs": [{"price": 1}]}, {"outputs": [{"prediction": "no"}]})
    for version, given in ((cand, ratings[0]), (prod, ratings[1])):
        if given:
            ids = traffic.calls([item] * len(given), version_id=version)
            for rid, rating in zip(ids, given, strict=True):
                traffic.feedback(rid, rating=rating)
    ctx = Ctx(
        principal=Principal(1, "admin", ep.workspace_id, "default", "developer", "k"),
        pipeline="weekly",
        model="returns",
        endpoint="shop",
        dataset="orders",
        config={"min_requests": 5, **config},
        run={
            "candidate": "returns:2",
            "candidate_id": cand,
            "production_id": prod,
            "canary_window": [start.isoformat(), utcnow().isoformat()],
        },
        step={},
        tag="t",
        request={},
        previous_until=None,
    )
    return judge(env.cloud.app.state.pipelines.env, ctx, ep)


@pytest.mark.parametrize(
    ("canary", "ratings", "config", "promote", "words"),
    [
        ((3, 0), ([], []), {}, False, "too little canary traffic to judge: 3 requests"),
        ((10, 5), ([], []), {}, False, "the canary is worse: error rate 50.0%"),
        ((10, 0), ([5, 4], []), {"min_feedback": 3}, False, "too few ratings of canary"),
        ((10, 0), ([1, 2], [5, 5]), {"min_feedback": 2}, False, "rated worse: 1.50 over 2"),
        ((10, 0), ([4, 4], [5, 4]), {"min_feedback": 2, "max_rating_drop": 0.5}, True, "4.00"),
        ((10, 0), ([5, 4], [4, 4]), {"min_feedback": 2}, True, "rating 4.50 vs 4.00"),
    ],
)
def test_a_canary_is_promoted_only_when_it_is_no_worse_over_enough_traffic(
    env: Env,
    canary: tuple[int, int],
    ratings: tuple[list[int], list[int]],
    config: dict[str, Any],
    promote: bool,
    words: str,
) -> None:
    verdict = judged(env, canary=canary, ratings=ratings, **config)
    assert verdict["promote"] is promote, verdict
    assert words in verdict["reason"], verdict
    if not promote:
        assert verdict["reason"].endswith("no promotion") or "worse" in verdict["reason"]
    assert verdict["numbers"]["canary"]["requests"] == canary[0]
    assert verdict["numbers"]["primary"]["requests"] == 10


# -- triggers ---------------------------------------------------------------------------------


def runs_of(env: Env) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = env.http.get("/v1/pipelines/weekly/runs").json()["items"]
    return out


def test_enough_new_feedback_starts_a_run_once_and_the_cooldown_holds(env: Env) -> None:
    create(env, after_labels=2, cooldown_minutes=60)
    tick = controller(env).tick
    ids = capture(env, 3)  # one rating
    tick()
    assert runs_of(env) == []  # one of two
    Traffic(env, "shop").feedback(ids[1], rating=4)
    tick()
    runs = runs_of(env)
    assert [r["trigger"] for r in runs] == ["after 2 new feedback items (at least 2)"]
    env.http.post("/v1/pipelines/weekly/runs/latest/cancel")
    tick()
    Traffic(env, "shop").feedback(ids[2], rating=5)
    Traffic(env, "shop").feedback(ids[0], rating=5)
    tick()
    assert len(runs_of(env)) == 1  # two new items, but within the hour since the last run


def test_a_schedule_starts_a_run_when_due_and_moves_on(env: Env) -> None:
    create(env, schedule="*/15 * * * *")
    db: Database = env.cloud.app.state.db
    tick = controller(env).tick
    tick()
    assert runs_of(env) == []  # not due yet
    with db.write() as s:
        p = s.scalar(select(Pipeline))
        assert p is not None and p.next_run_at is not None
        p.next_run_at = utcnow() - timedelta(seconds=1)
    tick()
    runs = runs_of(env)
    assert [r["trigger"] for r in runs] == ["on schedule */15 * * * *"]
    following = env.http.get("/v1/pipelines/weekly").json()["next_scheduled_at"]
    due = datetime.fromisoformat(following)
    assert utcnow() < due <= utcnow() + timedelta(minutes=15) and due.minute % 15 == 0
    assert runs[0]["state"] == "not_promoted"  # nothing captured: said so, no training
    assert runs[0]["reason"].startswith("nothing new to learn from")


def test_drift_past_the_threshold_starts_a_run(env: Env) -> None:
    create(env, on_drift=0.5)
    tick = controller(env).tick
    traffic = Traffic(env, "shop")
    usual = [
        ({"inputs": [{"price": 10 + i % 40, "garment": "dress" if i % 2 else "shirt"}]}, None)
        for i in range(80)
    ]
    traffic.calls(usual)
    tick()
    assert runs_of(env) == []  # the prices it was trained on
    far = [({"inputs": [{"price": 5000 + i, "garment": "dress"}]}, None) for i in range(200)]
    traffic.calls(far)
    fresh = controller(env)  # a drift check runs at most once a minute per controller
    fresh.tick()
    runs = runs_of(env)
    assert len(runs) == 1 and runs[0]["trigger"].startswith("on drift: score "), runs
    assert runs[0]["trigger"].endswith("reached 0.5")
