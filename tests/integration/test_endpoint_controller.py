"""The endpoint controller against a fake Ray Serve: rollouts that promote once the new version
has loaded, failed deploys that leave the old version serving, canaries rolled back on their
numbers, promote and rollback by hand, delete, and the replica-seconds it records. Real
databases (SQLite and PostgreSQL), no Ray; every tick is called by the test."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from gureum.config import Settings
from gureum.server.controllers import endpoints as endpoint_controller
from gureum.server.db.tables_serving import ResourceUsage, UsageRecord
from gureum.serving.backend import AppState
from tests.integration.test_endpoints_api import Env, make_env, register, usage_record


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    # Judge canaries on every tick (not every 5 s); metering is tested on its own.
    monkeypatch.setattr(endpoint_controller, "JUDGE_EVERY_S", 0.0)
    yield from make_env(settings)


def version_ids(env: Env) -> tuple[int, int]:
    """The ids of m:1 and m:2 (the fixture registered both)."""
    env.deploy("m:1", name="probe")
    env.deploy("m:2", name="probe", status=200, canary_percent=1)
    row = env.row("probe")
    assert row.canary_version_id is not None
    return row.version_id, row.canary_version_id


# -- rolling out a new version ---------------------------------------------------------------------


def test_a_new_version_is_promoted_once_it_has_loaded(env: Env) -> None:
    env.ready("m:1")
    env.deploy("m:2", status=200)
    env.tick()
    canary = env.fake.last("shop--canary")
    assert (canary.replica.role, canary.traffic.model.label, canary.route_prefix) == (
        "canary",
        "m:2",
        None,
    )
    primary = env.fake.last("shop")
    assert primary.traffic.model.label == "m:1"
    assert (primary.traffic.canary_app, primary.traffic.canary_percent) == (
        env.fake.app("shop--canary"),
        0.0,
    )
    # Loading: the old version keeps all traffic; nothing is promoted yet.
    env.tick()
    assert env.get()["version"] == 1 and env.get()["state"] == "updating"

    env.fake.run("shop--canary")
    env.tick()
    out = env.get()
    assert (out["version"], out["model_label"]) == (2, "m:2")
    assert out["previous"] == {"version": 1, "label": "m:1"} and out["canary"] is None
    assert env.events()[-1] == ("rollout", "m:2 now serves all traffic: it started and loaded")
    # Next tick: the primary application now loads m:2 and the canary application goes.
    env.tick()
    primary = env.fake.last("shop")
    assert primary.traffic.model.label == "m:2" and primary.traffic.canary_app is None
    assert env.fake.deleted == ["shop--canary"]
    env.tick()
    assert env.get()["state"] == "ready"
    assert [k for k, _ in env.events()] == ["deploy", "ready", "rollout", "rollout"]


def test_a_version_that_fails_to_load_is_dropped_and_the_old_one_keeps_serving(
    env: Env,
) -> None:
    env.ready("m:1")
    env.deploy("m:2", status=200)
    env.tick()
    env.fake.fail("shop--canary", "ModuleNotFoundError: No module named 'xgboost'\n")
    env.tick()
    out = env.get()
    expected = (
        "deploy of version 2 failed: ModuleNotFoundError: No module named 'xgboost'; "
        "version 1 keeps serving"
    )
    assert (out["version"], out["canary"], out["message"]) == (1, None, expected)
    assert env.events()[-1] == ("failed", expected)
    env.tick()
    assert env.fake.deleted == ["shop--canary"]
    assert env.fake.last("shop").traffic.model.label == "m:1"
    env.tick()
    out = env.get()
    assert out["state"] == "ready" and out["version"] == 1
    assert out["message"] == expected  # the reason stays visible


def test_deploying_the_serving_version_during_a_rollout_cancels_the_rollout(env: Env) -> None:
    env.ready("m:1")
    env.deploy("m:2", status=200)
    env.tick()
    # Changed one's mind: m:1 is what should serve, so m:2 must not take over once it loads.
    out = env.deploy("m:1", status=200)
    assert out["canary"] is None, out
    env.fake.run("shop--canary")
    env.tick(2)
    assert env.get()["version"] == 1
    assert "shop--canary" in env.fake.deleted


def test_deploying_a_third_version_during_a_rollout_rolls_out_that_one(env: Env) -> None:
    register(env.http, "m")
    env.ready("m:1")
    env.deploy("m:2", status=200)
    env.tick()
    env.deploy("m:3", status=200)
    env.tick()
    assert env.fake.last("shop--canary").traffic.model.label == "m:3"
    env.fake.run("shop--canary")
    env.tick()
    out = env.get()
    assert (out["version"], out["previous"]["version"]) == (3, 1)


# -- canaries --------------------------------------------------------------------------------------


def canary_at_10(env: Env) -> tuple[int, int]:
    """m:1 serving, m:2 a running canary at 10 %; the two version ids."""
    v1, v2 = version_ids(env)
    env.ready("m:1")
    canary = env.deploy("m:2", status=200, canary_percent=10)
    assert canary["canary"] == {"version": 2, "label": "m:2", "percent": 10.0}
    env.tick()
    assert env.fake.last("shop").traffic.canary_percent == 10.0
    env.fake.run("shop--canary")
    env.tick()
    return v1, v2


@pytest.mark.parametrize(
    ("errors", "latency_ms", "why"),
    [
        (5, 10.0, "error rate 25.0% over 20 requests vs 0.0% for the primary (limit +5.0%)"),
        (0, 35.0, "p95 latency 35.0 ms vs 10.0 ms for the primary (limit 2x)"),
    ],
)
def test_a_canary_that_breaches_its_limits_is_rolled_back(
    env: Env, errors: int, latency_ms: float, why: str
) -> None:
    v1, v2 = canary_at_10(env)
    env.ship([usage_record(v1, "m:1", latency_ms=10.0) for _ in range(20)])
    env.ship(
        [
            usage_record(v2, "m:2", role="canary", status=500 if i < errors else 200,
                         latency_ms=latency_ms)
            for i in range(20)
        ]
    )  # fmt: skip
    env.tick()
    out = env.get()
    assert out["canary"] is None and out["version"] == 1
    assert out["message"] == f"canary rolled back automatically: {why}"
    assert env.events()[-1] == ("rollback", f"canary rolled back automatically: {why}")
    env.tick()
    assert env.fake.last("shop").traffic.canary_app is None
    assert env.fake.deleted == ["shop--canary"]


def test_a_canary_that_fails_to_load_is_dropped(env: Env) -> None:
    env.ready("m:1")
    env.deploy("m:2", status=200, canary_percent=10)
    env.tick()
    env.fake.fail("shop--canary", "OSError: out of memory")
    env.tick()
    out = env.get()
    assert out["canary"] is None and out["version"] == 1
    expected = "canary of version 2 failed: OSError: out of memory; version 1 keeps serving"
    assert out["message"] == expected and env.events()[-1] == ("failed", expected)


def test_a_canary_with_too_few_requests_is_not_judged(env: Env) -> None:
    v1, v2 = canary_at_10(env)
    env.ship([usage_record(v1, "m:1") for _ in range(50)])
    # 19 canary requests, all failed and slow: too few to judge (min_requests is 20).
    env.ship(
        [usage_record(v2, "m:2", role="canary", status=500, latency_ms=900.0) for _ in range(19)]
    )
    env.tick(2)
    assert env.get()["canary"] is not None
    env.ship([usage_record(v2, "m:2", role="canary", status=500)])
    env.tick()
    assert env.get()["canary"] is None


def test_only_the_canarys_own_requests_count(env: Env) -> None:
    v1, v2 = version_ids(env)
    env.ready("m:1")
    env.deploy("m:2", status=200, canary_percent=10)
    env.tick()
    env.ship([usage_record(v2, "m:2", role="canary", status=500) for _ in range(30)])
    env.http.post("/v1/endpoints/shop/rollback")
    # Tried again later: the failures of the first try are not held against it.
    env.deploy("m:2", status=200, canary_percent=10)
    env.ship([usage_record(v2, "m:2", role="canary") for _ in range(25)])
    env.ship([usage_record(v1, "m:1") for _ in range(25)])
    env.tick(2)
    assert env.get()["canary"]["percent"] == 10.0


def test_limits_come_from_the_endpoints_configuration(env: Env) -> None:
    _, v2 = version_ids(env)
    limits = {"min_requests": 5, "max_error_rate_increase": 0.5}
    env.ready("m:1", config={"canary_limits": limits})
    env.deploy("m:2", status=200, canary_percent=10)
    env.tick()
    env.ship([usage_record(v2, "m:2", role="canary", status=500 if i < 2 else 200)
              for i in range(5)])  # fmt: skip
    env.tick()
    assert env.get()["canary"] is not None  # 40 % errors: within +50 %
    env.ship([usage_record(v2, "m:2", role="canary", status=500) for _ in range(5)])
    env.tick()
    assert "error rate 70.0% over 10 requests" in env.get()["message"]


def test_a_healthy_canary_stays_and_is_promoted_by_hand(env: Env) -> None:
    v1, v2 = version_ids(env)
    env.ready("m:1")
    env.deploy("m:2", status=200, canary_percent=10)
    env.tick()
    env.fake.run("shop--canary")
    env.ship([usage_record(v2, "m:2", role="canary", latency_ms=11.0) for _ in range(40)])
    env.ship([usage_record(v1, "m:1", latency_ms=10.0) for _ in range(40)])
    env.tick(3)
    assert env.get()["canary"]["percent"] == 10.0  # a canary is never promoted by itself

    r = env.http.post("/v1/endpoints/shop/promote")
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["version"], out["canary"], out["previous"]["version"]) == (2, None, 1)
    assert env.events()[-1] == ("promote", "m:2 now serves all traffic: promoted by hand")
    env.tick()
    assert env.fake.last("shop").traffic.model.label == "m:2"
    assert env.fake.deleted == ["shop--canary"]


def test_rollback_by_hand_returns_to_the_previous_version_once_it_loads(env: Env) -> None:
    env.ready("m:1")
    env.deploy("m:2", status=200)
    env.tick()
    env.fake.run("shop--canary")
    env.tick(2)  # promoted, then applied
    assert env.get()["version"] == 2
    env.fake.gone("shop--canary")

    r = env.http.post("/v1/endpoints/shop/rollback")
    assert r.status_code == 200, r.text
    assert r.json()["canary"] == {"version": 1, "label": "m:1", "percent": 0.0}
    assert env.events()[-1] == ("rollback", "rolling back to m:1")
    env.tick()
    assert env.fake.last("shop--canary").traffic.model.label == "m:1"
    env.fake.run("shop--canary")
    env.tick()
    out = env.get()
    assert (out["version"], out["previous"]["version"], out["canary"]) == (1, 2, None)


def test_a_shadow_gets_its_own_application_and_is_removed_by_rollback(env: Env) -> None:
    env.ready("m:1")
    out = env.deploy("m:2", status=200, shadow=True)
    assert out["shadow"] == {"version": 2, "label": "m:2"} and out["version"] == 1
    env.tick()
    shadow = env.fake.last("shop--shadow")
    assert shadow.replica.role == "shadow" and shadow.route_prefix is None
    assert env.fake.last("shop").traffic.shadow_app == env.fake.app("shop--shadow")
    env.fake.run("shop--shadow")
    env.tick()
    assert env.get()["replicas"]["shadow"] == 1
    assert env.http.post("/v1/endpoints/shop/rollback").json()["shadow"] is None
    env.tick()
    assert env.fake.deleted == ["shop--shadow"]
    assert env.fake.last("shop").traffic.shadow_app is None


# -- deleting, restarting, metering ----------------------------------------------------------------


def test_delete_waits_for_the_applications_to_go_and_keeps_the_usage(env: Env) -> None:
    env.ready("m:1")
    env.deploy("m:2", status=200, canary_percent=10)
    env.tick()
    env.ship([usage_record(env.row().version_id, "m:1")])
    r = env.http.delete("/v1/endpoints/shop")
    assert r.status_code == 202 and r.json()["state"] == "deleting"
    again = env.http.post("/v1/endpoints", json={"name": "shop", "model": "m:1"})
    assert again.status_code == 409 and "being deleted" in again.json()["error"]["message"]
    env.tick()
    assert sorted(env.fake.deleted) == ["shop", "shop--canary"]
    env.tick()
    assert env.get()["state"] == "deleting"  # Ray Serve is still removing them
    env.fake.gone("shop")
    env.tick()
    assert env.get()["state"] == "deleting"
    env.fake.gone("shop--canary")
    env.tick()
    assert env.http.get("/v1/endpoints/shop").status_code == 404
    assert env.http.get("/v1/endpoints").json()["items"] == []
    with env.cloud.app.state.db.read() as s:
        kept = s.scalars(select(UsageRecord)).all()
    assert [(u.endpoint_name, u.endpoint_id) for u in kept] == [("shop", None)]


def test_a_restarted_controller_reapplies_what_was_not_applied(env: Env) -> None:
    env.ready("m:1")
    env.deploy("m:2", status=200, canary_percent=10)
    # A new controller (a restarted server) with the same backend: it knows nothing but the
    # database, and finishes the job.
    fresh = endpoint_controller.EndpointController(
        env.cloud.app.state.db, env.fake, env.cloud.settings, env.cloud.app.state.serving.secret
    )
    fresh.tick()
    assert env.fake.last("shop--canary").traffic.model.label == "m:2"
    applied = len(env.fake.applied)
    fresh.tick()
    env.controller.tick()
    assert len(env.fake.applied) == applied  # converged: nothing applied twice


def test_an_application_ray_serve_lost_is_applied_again(env: Env) -> None:
    # A restarted Ray cluster has no applications; the endpoints table still says what to run.
    env.ready("m:1")
    applied = len(env.fake.applied)
    env.fake.gone("shop")
    env.tick()
    assert len(env.fake.applied) == applied + 1, "the lost application was not re-applied"
    assert env.fake.last("shop").traffic.model.label == "m:1"
    env.fake.run("shop")
    env.tick()
    assert env.get()["state"] == "ready"


def test_one_endpoint_that_cannot_be_applied_does_not_hold_up_the_others(env: Env) -> None:
    env.deploy("m:1", name="bad")
    env.deploy("m:1", name="shop")
    env.fake.refuse["bad"] = RuntimeError("Ray Serve refused the application")
    with contextlib.suppress(RuntimeError):
        env.tick()
    assert "shop" in env.fake.names()


def test_replica_seconds_are_recorded_per_endpoint(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(endpoint_controller, "METER_EVERY_S", 0.0)
    env.ready("m:1", config={"resources": {"cpus": 0.5, "gpus": 0}})
    env.fake.run("shop", running=2)
    env.tick(3)
    with env.cloud.app.state.db.read() as s:
        rows = s.scalars(select(ResourceUsage).where(ResourceUsage.kind == "endpoint")).all()
    assert rows and {r.ref for r in rows} == {"shop"}
    last = rows[-1]
    seconds = (last.end - last.start).total_seconds()
    assert last.replica_seconds == pytest.approx(2 * seconds)
    assert last.cpu_seconds == pytest.approx(0.5 * last.replica_seconds)
    # No replicas, no cost.
    env.fake.gone("shop")
    before = len(rows)
    env.tick(2)
    with env.cloud.app.state.db.read() as s:
        after = s.scalars(select(ResourceUsage).where(ResourceUsage.kind == "endpoint")).all()
    assert len(after) == before


# -- whose application it is -----------------------------------------------------------------------


def test_an_application_recording_another_endpoint_is_never_adopted_nor_deleted(env: Env) -> None:
    """A Serve application under an endpoint's application name whose user_config records
    another endpoint (another control plane's, or made by hand) is not counted as its replicas,
    not replaced by a deploy, and not deleted when the endpoint goes."""
    env.tick()
    env.deploy("m:1")
    ep = env.row()
    app = f"ep-{ep.id}"
    env.fake.apps[app] = AppState("RUNNING", "", 3, endpoint_id=ep.id + 100, owner="someone")
    env.tick(2)
    out = env.get()
    assert out["state"] == "deploying" and out["replicas"]["primary"] == 0
    assert env.fake.applied == [] and env.fake.deleted_apps == []
    assert "not this endpoint's" in out["message"]
    assert [k for k, _ in env.events()].count("error") == 1  # said once, not every tick
    # The same id but another owner (an earlier database's endpoint 1): not adopted either.
    env.fake.apps[app] = AppState("RUNNING", "", 3, endpoint_id=ep.id, owner="earlier-db")
    env.tick()
    assert env.get()["replicas"]["primary"] == 0 and env.fake.applied == []
    # Deleting the endpoint leaves the foreign application running, and the row goes.
    assert env.http.delete("/v1/endpoints/shop").status_code == 202
    env.tick(2)
    assert env.fake.deleted_apps == [] and app in env.fake.apps
    assert env.http.get("/v1/endpoints/shop").status_code == 404


def test_once_the_foreign_application_is_gone_the_endpoint_deploys(env: Env) -> None:
    env.deploy("m:1")
    ep = env.row()
    env.fake.apps[f"ep-{ep.id}"] = AppState("RUNNING", "", 1, endpoint_id=None, owner=None)
    env.tick()
    assert env.fake.applied == []
    del env.fake.apps[f"ep-{ep.id}"]
    env.tick()
    env.fake.run("shop")
    env.tick()
    out = env.get()
    assert out["state"] == "ready" and out["replicas"]["primary"] == 1
    assert env.fake.apps[f"ep-{ep.id}"].endpoint_id == ep.id


def test_applications_named_by_an_earlier_gureum_are_retired(env: Env) -> None:
    """Before applications were named by id they were named like the endpoint; after an upgrade
    they hold the endpoint's route, so they are removed; nothing else named alike is."""
    env.deploy("m:1")
    legacy = AppState("RUNNING", "", 1, legacy=True, route_prefix="/v1/endpoints/shop")
    env.fake.apps.update(
        {
            "shop": legacy,
            "shop--canary": AppState("RUNNING", "", 1, legacy=True),
            "shop--shadow": AppState("RUNNING", "", 1),  # not a gureum application
            "elsewhere": AppState("RUNNING", "", 1, legacy=True),  # no such endpoint
        }
    )
    env.tick()
    assert sorted(env.fake.deleted_apps) == ["shop", "shop--canary"]
    env.fake.apps.pop("shop")
    env.fake.apps.pop("shop--canary")
    env.tick()
    env.fake.run("shop")
    env.tick()
    assert env.get()["state"] == "ready"
    assert sorted(env.fake.deleted_apps) == ["shop", "shop--canary"]


def test_a_new_application_that_does_not_yet_say_whose_it_is_is_not_foreign(env: Env) -> None:
    """Ray Serve lists a new application a moment before its deployment (and user_config): the
    controller that applied it keeps it; a restarted one waits rather than calling it foreign."""
    env.deploy("m:1")
    env.tick()
    app = env.fake.app("shop")
    recorded = env.fake.apps[app]
    env.fake.apps[app] = AppState("DEPLOYING", "", 0)  # nothing recorded yet
    env.tick(2)
    assert env.get()["message"] == "" and len(env.fake.applied) == 1
    fresh = endpoint_controller.EndpointController(
        env.cloud.app.state.db, env.fake, env.cloud.settings, env.cloud.app.state.serving.secret
    )
    env.http.patch("/v1/endpoints/shop", json={"config": {"cold_start_timeout_s": 30}})
    fresh.tick()
    assert len(env.fake.applied) == 1 and env.get()["message"] == ""  # waits
    env.fake.apps[app] = recorded
    fresh.tick()
    assert len(env.fake.applied) == 2  # now known to be its own: the change is applied
    env.fake.run("shop")
    fresh.tick()
    assert env.get()["state"] == "ready" and fresh.live("shop").primary == 1
