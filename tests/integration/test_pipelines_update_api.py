"""Changing a retrain pipeline (PATCH /v1/pipelines/{name}): only the fields given change,
with the same checks as create (422 in the JSON error shape), 404 for an unknown pipeline,
403 for a viewer, 409 for a setting a run in progress reads, and pausing stops the triggers
(the controller starts no run) until it is resumed. No Ray. SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from gureum.server.db.tables_pipelines import Pipeline
from tests.integration.test_consumers_api import member_key
from tests.integration.test_endpoints_api import Env
from tests.integration.test_pipelines_api import capture, controller, create, env, run

__all__ = ["env"]  # the fixture, shared with test_pipelines_api


def patch(env: Env, status: int = 200, pipeline: str = "weekly", **body: Any) -> Any:
    r = env.http.patch(f"/v1/pipelines/{pipeline}", json=body)
    assert r.status_code == status, r.text
    return r.json()


def test_only_the_fields_given_change(env: Env) -> None:
    before = create(env, canary_percent=20, metric="accuracy", higher_is_better=True)
    assert before["next_scheduled_at"] is None and before["config"]["enabled"] is True
    out = patch(env, schedule="0 3 * * 1", approve="manual", canary_minutes=30, params={"C": 2})
    assert out["config"] == {
        **before["config"],
        "schedule": "0 3 * * 1",
        "approve": "manual",
        "canary_minutes": 30,
        "params": {"C": 2},
    }
    assert out["next_scheduled_at"] is not None
    assert env.http.get("/v1/pipelines/weekly").json() == out
    # null clears an optional setting; a metric's direction goes with it
    out = patch(env, schedule=None, metric=None, higher_is_better=None)
    assert out["next_scheduled_at"] is None
    assert (out["config"]["schedule"], out["config"]["metric"]) == (None, None)
    assert out["config"]["canary_percent"] == 20  # untouched
    assert patch(env) == out  # nothing given: nothing changes
    audit = env.http.get("/v1/audit", params={"action": "pipeline.update"})
    assert audit.status_code == 200, audit.text  # the audit log names what changed
    assert "0 3 * * 1" in str(audit.json()) and "canary_minutes" in str(audit.json())


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        ({"canary_percent": 0}, 422, "invalid_request", "canary_percent"),
        ({"canary_percent": 100}, 422, "invalid_request", "canary_percent"),
        ({"canary_percent": None}, 422, "invalid_request", "canary_percent"),
        ({"approve": "maybe"}, 422, "invalid_request", "approve"),
        ({"schedule": "61 * * * *"}, 422, "invalid_request", "minute"),
        ({"higher_is_better": True}, 422, "invalid_request", "higher_is_better goes with"),
        ({"name": "renamed"}, 422, "invalid_request", "name"),
        ({"on_drift": -1}, 422, "invalid_request", "on_drift"),
        ({"model": "other"}, 422, "invalid_request", "serves returns:1, not a version of"),
        ({"endpoint": "nowhere"}, 404, "not_found", "no endpoint 'nowhere'"),
    ],
)
def test_bad_values_are_refused_and_nothing_changes(
    env: Env, body: dict[str, Any], status: int, code: str, words: str
) -> None:
    before = create(env)
    out = patch(env, status, **body)
    assert out["error"]["code"] == code, out
    assert words in str(out["error"]), out
    assert env.http.get("/v1/pipelines/weekly").json() == before


def test_unknown_pipelines_are_404_and_viewers_are_refused(env: Env) -> None:
    create(env)
    out = patch(env, 404, pipeline="nope", canary_percent=5)
    assert out["error"]["code"] == "not_found" and "nope" in out["error"]["message"]
    viewer = env.cloud.http(member_key(env.cloud, "vera", "viewer"))
    r = viewer.patch("/v1/pipelines/weekly", json={"canary_percent": 5})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"
    developer = env.cloud.http(member_key(env.cloud, "dev", "developer"))
    r = developer.patch("/v1/pipelines/weekly", json={"canary_percent": 5})
    assert r.status_code == 200, r.text
    assert env.http.get("/v1/pipelines/weekly").json()["config"]["canary_percent"] == 5


def test_a_run_in_progress_lets_only_the_triggers_change(env: Env) -> None:
    create(env)
    capture(env)
    assert env.http.post("/v1/pipelines/weekly/runs").status_code == 202
    out = patch(env, 409, canary_percent=30, on_drift=0.3)
    assert out["error"]["code"] == "run_in_progress"
    assert out["error"]["details"] == {"run": 1, "fields": ["canary_percent"]}
    assert "cancel" in out["error"]["message"]
    out = patch(env, on_drift=0.3, cooldown_minutes=5, enabled=False)
    assert out["config"]["on_drift"] == 0.3 and out["active_run"] == 1
    assert env.http.post("/v1/pipelines/weekly/runs/latest/cancel").status_code == 200
    controller(env).tick()
    assert run(env)["state"] == "cancelled"
    assert patch(env, canary_percent=30)["config"]["canary_percent"] == 30


def test_a_paused_pipeline_starts_no_run_until_resumed(env: Env) -> None:
    create(env, after_labels=1, cooldown_minutes=0, schedule="* * * * *")
    capture(env)  # one new rating: the labels trigger is due
    paused = patch(env, enabled=False)
    assert paused["config"]["enabled"] is False and paused["next_scheduled_at"] is None
    controller(env).tick()
    assert env.http.get("/v1/pipelines/weekly/runs").json()["items"] == []
    # a run by hand still starts while paused
    by_hand = env.http.post("/v1/pipelines/weekly/runs")
    assert by_hand.status_code == 202, by_hand.text
    assert env.http.post("/v1/pipelines/weekly/runs/latest/cancel").status_code == 200
    controller(env).tick()
    db = env.cloud.app.state.db
    with db.write() as s:  # the run began long ago: the labels since then trigger again
        p = s.query(Pipeline).one()
        p.labels_since = p.last_run_at = p.created_at
    resumed = patch(env, enabled=True)
    assert resumed["config"]["enabled"] is True and resumed["next_scheduled_at"] is not None
    controller(env).tick()
    latest = run(env)
    assert latest["number"] == 2 and not latest["trigger"].startswith("by hand"), latest
