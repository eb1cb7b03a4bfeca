"""Validation before deploy, control-plane side, against a fake Ray Serve (real databases,
SQLite and PostgreSQL): a deploy opens a report whose sample inputs reach the new replica in its
TrafficConfig; the replica's report over the internal API decides the deploy (a failed one
keeps the old version serving and lists the failed checks); stale, foreign and repeated reports
change nothing; reports are read back over REST. The replica side runs on Ray in
test_validation_ray.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gureum import samples
from gureum.config import Settings
from gureum.recipes.specs import SPECS
from gureum.server.db.session import Database
from gureum.server.db.tables import Dataset, DatasetVersion, Model, ModelVersion
from gureum.server.db.tables_validation import ModelValidation
from gureum.serving.spec import TrafficConfig
from tests.integration.test_consumers_api import member_key
from tests.integration.test_endpoints_api import Env, make_env, register
from tests.integration.trained_models import mark_platform_trained

ROWS = [{"price": "30", "size": "M"}, {"price": "12", "size": "S"}]


@pytest.fixture
def env(settings: Settings) -> Iterator[Env]:
    yield from make_env(settings)


def traffic(env: Env, app: str) -> TrafficConfig:
    return env.fake.last(app).traffic


def report(
    env: Env, validation: int, version_id: int, passed: bool, name: str = "shop", **extra: Any
) -> int:
    checks = [{"name": "load", "passed": True, "detail": "loaded in 12 ms"}]
    if not passed:
        detail = "input 0: RuntimeError: the model failed"
        checks.append({"name": "predict", "passed": False, "detail": detail})
    body = {
        "id": validation,
        "version_id": version_id,
        "passed": passed,
        "checks": checks,
        "samples": 2,
        **extra,
    }
    r = env.replica(name).post(f"/v1/internal/endpoints/{name}/validation", json=body)
    return r.status_code


def rows(env: Env) -> list[ModelValidation]:
    db: Database = env.cloud.app.state.db
    with db.read() as s:
        out = list(s.scalars(select(ModelValidation).order_by(ModelValidation.id)))
        for r in out:
            s.expunge(r)
        return out


def test_a_new_endpoint_s_replica_gets_the_test_and_its_pass_is_recorded(env: Env) -> None:
    env.deploy("m:1", sample_inputs=ROWS)
    env.tick()
    validation = traffic(env, "shop").validation
    assert validation is not None
    row = env.row()
    assert (validation.version_id, validation.inputs) == (row.version_id, ROWS)
    assert validation.source == "2 inputs given with the deploy"
    assert report(env, validation.id, row.version_id, passed=True) == 204

    r = env.http.get("/v1/models/m/versions/1/validation")
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["state"], out["passed"], out["kind"], out["endpoint"]) == (
        "passed",
        True,
        "deploy",
        "shop",
    )
    assert out["samples"] == 2 and out["checks"][0]["name"] == "load"
    # Once passed, re-applying the endpoint (a config change) does not test again.
    env.deploy("m:1", status=200, config={"autoscaling": {"max_replicas": 2}})
    env.tick()
    assert traffic(env, "shop").validation is None


def test_a_new_endpoint_that_fails_validation_is_failed_with_the_checks(env: Env) -> None:
    env.deploy("m:1", sample_inputs=ROWS)
    env.tick()
    validation = traffic(env, "shop").validation
    assert validation is not None
    assert report(env, validation.id, env.row().version_id, passed=False) == 204
    expected = (
        "version 1 failed validation before taking traffic: "
        "predict: input 0: RuntimeError: the model failed"
    )
    out = env.get()
    assert (out["state"], out["message"]) == ("failed", expected)
    events = env.http.get("/v1/endpoints/shop/events").json()
    assert (events[-1]["kind"], events[-1]["message"]) == ("failed", expected)
    assert events[-1]["data"]["checks"] == [
        {"name": "predict", "passed": False, "detail": "input 0: RuntimeError: the model failed"}
    ]
    # Ray Serve retrying the replica (the application still deploying) does not undo it.
    env.tick(2)
    assert env.get()["state"] == "failed"

    # Deploying the version again (other inputs) starts a fresh validated deploy.
    again = env.deploy("m:1", status=200, sample_inputs=ROWS[:1])
    assert again["state"] == "deploying"
    env.tick()
    retry = traffic(env, "shop").validation
    assert retry is not None and retry.id != validation.id and retry.inputs == ROWS[:1]


def test_a_rollout_that_fails_validation_keeps_the_old_version_serving(env: Env) -> None:
    env.ready("m:1")
    first = traffic(env, "shop").validation
    assert first is not None and report(env, first.id, env.row().version_id, True) == 204
    env.deploy("m:2", status=200, sample_inputs=ROWS)
    env.tick()
    canary = traffic(env, "shop--canary").validation
    assert canary is not None and canary.inputs == ROWS
    assert traffic(env, "shop").validation is None  # the serving version is not tested again
    v2 = env.row().canary_version_id
    assert v2 is not None and report(env, canary.id, v2, passed=False) == 204

    out = env.get()
    expected = (
        "deploy of version 2 failed validation before taking traffic: "
        "predict: input 0: RuntimeError: the model failed; version 1 keeps serving"
    )
    assert (out["version"], out["canary"], out["message"]) == (1, None, expected)
    env.tick()
    assert env.fake.deleted == ["shop--canary"]
    assert traffic(env, "shop").model.label == "m:1"
    # A canary application that reaches RUNNING later cannot promote a dropped deploy.
    env.tick()
    assert env.get()["version"] == 1
    failed = env.http.get("/v1/models/m/versions/2/validation").json()
    assert (failed["state"], failed["passed"]) == ("failed", False)
    assert [c["name"] for c in failed["checks"] if not c["passed"]] == ["predict"]


def test_stale_repeated_and_foreign_reports_change_nothing(env: Env) -> None:
    register(env.http, "m")  # m:3
    env.ready("m:1")
    env.deploy("m:2", status=200)
    env.tick()
    stale = traffic(env, "shop--canary").validation
    assert stale is not None
    env.deploy("m:3", status=200)  # the newer deploy takes over from m:2's
    env.tick()
    current = traffic(env, "shop--canary").validation
    assert current is not None and current.id != stale.id
    # m:2's replica reports late: recorded with m:2, but m:3's rollout goes on.
    assert report(env, stale.id, stale.version_id, passed=False) == 204
    out = env.get()
    assert out["canary"]["label"] == "m:3" and out["message"] == ""
    # The first report of a test decides it; a later one is ignored.
    v3 = current.version_id
    assert report(env, current.id, v3, passed=True) == 204
    assert report(env, current.id, v3, passed=False) == 204
    assert env.get()["canary"]["label"] == "m:3"
    by_id = {r.id: r for r in rows(env)}
    assert (by_id[stale.id].state, by_id[current.id].state) == ("failed", "passed")
    # Another endpoint's token, a wrong version, an unknown id.
    env.deploy("m:1", name="other")
    assert report(env, current.id, v3, passed=False, name="other") == 404
    assert report(env, current.id, v3 + 100, passed=False) == 404
    assert report(env, 10_000, v3, passed=False) == 404
    r = env.replica(token="gst_" + "0" * 64).post(
        "/v1/internal/endpoints/shop/validation",
        json={"id": current.id, "version_id": v3, "passed": False, "checks": []},
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_without_sample_inputs_they_come_from_the_validation_split(
    env: Env, tmp_path: Path
) -> None:
    folder = tmp_path / "orders"
    samples.write("tabular", folder, count=200)
    client = env.cloud.client()
    client.datasets.push("orders", folder)
    digest = register(env.http, "t")  # a tabular version without lineage: load only
    assert digest == 1
    db: Database = env.cloud.app.state.db
    register(env.http, "t")
    with db.write() as s:  # t:2 trained on orders:1 to predict "returned"
        v2 = s.scalar(
            select(ModelVersion)
            .join(Model, Model.id == ModelVersion.model_id)
            .where(Model.name == "t", ModelVersion.version == 2)
        )
        assert v2 is not None
        v2.dataset_version_id = s.scalar(
            select(DatasetVersion.id).join(Dataset).where(Dataset.name == "orders")
        )
        v2.params = {"target": "returned"}
    env.deploy("t:1", name="plain")
    env.deploy("t:2", name="rows")
    env.tick()
    plain = traffic(env, "plain").validation
    assert plain is not None and plain.inputs == []
    assert plain.source == "none: the version records no dataset (load checked only)"
    picked = traffic(env, "rows").validation
    assert picked is not None and len(picked.inputs) == 16
    assert picked.source == "16 inputs from the validation split of dataset orders:1"
    assert all(isinstance(r, dict) and "returned" not in r and "price" in r for r in picked.inputs)


def test_models_validate_needs_the_cluster_and_reports_are_404_until_one_exists(
    env: Env,
) -> None:
    r = env.http.get("/v1/models/m/versions/1/validation")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert "gureum models validate m:1" in r.json()["error"]["message"]
    # Uploaded tabular files are never unpickled, so never validated either.
    r = env.http.post("/v1/models/m/versions/1/validate", json={})
    assert r.status_code == 422 and r.json()["error"]["code"] == "untrusted_model_files"
    mark_platform_trained(env.cloud.app.state.db, "m", 1, recipe="tabular")
    r = env.http.post("/v1/models/m/versions/1/validate", json={})
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    r = env.http.post("/v1/models/nope/versions/1/validate", json={})
    assert r.status_code == 404
    r = env.http.post("/v1/models/m/versions/1/validate", json={"sample_inputs": []})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    viewer = env.cloud.http(member_key(env.cloud, "vic", "viewer"))
    r = viewer.post("/v1/models/m/versions/1/validate", json={})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert viewer.get("/v1/models/m/versions/1/validation").status_code == 404


def test_too_many_sample_inputs_are_refused_at_deploy(env: Env) -> None:
    r = env.http.post(
        "/v1/endpoints", json={"name": "shop", "model": "m:1", "sample_inputs": [{}] * 65}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


def test_the_catalog_lists_deployable_versions_recipes_and_formats(env: Env) -> None:
    register(env.http, "script-made", recipe=None)  # no recipe serves it: not in the catalog
    db: Database = env.cloud.app.state.db
    with db.write() as s:  # m:1 is in production: `gureum deploy m` deploys it, not m:2
        v1 = s.scalar(
            select(ModelVersion)
            .join(Model, Model.id == ModelVersion.model_id)
            .where(Model.name == "m", ModelVersion.version == 1)
        )
        assert v1 is not None
        v1.stage, v1.total_bytes = "production", 3 * 1024**3
    r = env.http.get("/v1/catalog")
    assert r.status_code == 200, r.text
    entries = r.json()
    versions = [e for e in entries if e["kind"] == "version"]
    assert [e["name"] for e in versions] == ["m:1"]
    assert versions[0]["resources"] == {"cpus": 2.0, "memory_gb": 6.5, "gpus": 0.0}
    assert (versions[0]["unit"], versions[0]["how"]) == ("row", "gureum deploy m --endpoint E")
    served = {n: spec for n, spec in SPECS.items() if spec.serving is not None}
    recipes = {e["name"] for e in entries if e["kind"] == "recipe"}
    assert recipes == {n for n, spec in served.items() if spec.trainable and not spec.formats}
    formats = {(e["name"], e["recipe"]) for e in entries if e["kind"] == "format"}
    assert formats == {(f, n) for n, spec in served.items() for f in spec.formats}
    assert all(e["resources"] is None for e in entries if e["kind"] != "version")
    r = env.cloud.http(member_key(env.cloud, "vic", "viewer")).get("/v1/catalog")
    assert r.status_code == 200 and [e["name"] for e in r.json()][:1] == ["m:1"]
    assert env.cloud.http(False).get("/v1/catalog").status_code == 401  # type: ignore[arg-type]
