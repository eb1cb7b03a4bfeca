"""Uploaded model files are never unpickled (issue 10, item 2): a tabular model imported with
a crafted ``model.joblib`` is refused at import, at evaluate/predict submission and at deploy,
and its code never runs; a version a platform train job registered still evaluates. Real
databases (SQLite and PostgreSQL); a fake compute backend stands in for Ray."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gureum.client.errors import BadRequestError
from gureum.schemas.jobs import SCRIPT_RECIPE
from gureum.server.db.tables import AuditEvent, Job, ModelVersion
from gureum.server.services.job_results import register_outputs
from tests.integration.test_job_controller import Env, FakeBackend, env
from tests.integration.trained_models import crafted_tabular, mark_platform_trained

__all__ = ["FakeBackend", "env"]  # the fixture, re-exported for pytest


def upload_folder(e: Env, folder: Path) -> list[dict[str, Any]]:
    manifest = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        assert e.http.put(f"/v1/blobs/{digest}", content=data).status_code in (200, 201)
        manifest.append(
            {"path": path.relative_to(folder).as_posix(), "sha256": digest, "size": len(data)}
        )
    return manifest


def train(e: Env, model: str, metrics: dict[str, float]) -> dict[str, Any]:
    """A tabular train job that the fake cluster finishes with a model file and metrics."""
    job = e.submit(model=model)
    e.controller.tick()
    data = b"weights of " + job["id"].encode()
    info = e.controller.store.write_blob(1, iter([data]), max_bytes=1 << 20)
    files = [{"path": "model.joblib", "sha256": info.sha256, "size": info.size}]
    result = {"metrics": metrics, "params": {"target": "returned"}, "register": True}
    e.fake.emit(job["id"], 1, {"type": "started", "node_id": "node-1"})
    e.fake.emit(
        job["id"],
        1,
        {"type": "end", "outcome": "succeeded", "result": {**result, "model_files": files}},
    )
    e.controller.tick()
    done = e.job(job["id"])
    assert done["state"] == "succeeded", done
    return done


def test_a_crafted_tabular_upload_is_refused_and_never_runs(env: Env, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = crafted_tabular(tmp_path / "evil", marker)
    files = upload_folder(env, folder)
    r = env.http.post(
        "/v1/models/evil/versions",
        json={"files": files, "recipe": "tabular", "metrics": {"accuracy": 1.0}},
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "untrusted_model_files"
    assert "pickle" in error["message"] and error["details"]["recipe"] == "tabular"
    with pytest.raises(BadRequestError, match="pickle"):
        env.client.models.register("evil", folder, recipe="tabular")
    assert env.http.get("/v1/models/evil").status_code == 404  # nothing was created
    # Stored without a recipe it is inert bytes; asking a built-in recipe to load it is refused.
    r = env.http.post("/v1/models/evil/versions", json={"files": files})
    assert r.status_code == 201 and r.json()["platform_written"] is False
    for kind in ("evaluate", "predict"):
        body = {"kind": kind, "model": "evil:1", "recipe": "tabular", "dataset": "orders"}
        r = env.http.post("/v1/jobs", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "untrusted_model_files"
    assert env.fake.launched == []
    assert not marker.exists()


def test_an_untrusted_tabular_row_is_refused_at_deploy_and_evaluate(
    env: Env, tmp_path: Path
) -> None:
    """A version recorded as tabular but not platform-written (one registered before this
    check existed) is refused where it would be loaded: deploy, evaluate."""
    marker = tmp_path / "pwned"
    files = upload_folder(env, crafted_tabular(tmp_path / "evil", marker))
    assert env.http.post("/v1/models/evil/versions", json={"files": files}).status_code == 201
    with env.controller.db.write() as s:
        row = s.scalar(select(ModelVersion).where(ModelVersion.version == 1))
        assert row is not None
        row.recipe = "tabular"
    r = env.http.post("/v1/endpoints", json={"name": "evil", "model": "evil:1"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "untrusted_model_files"
    assert env.http.get("/v1/endpoints/evil").status_code == 404
    r = env.http.post("/v1/jobs", json={"kind": "evaluate", "model": "evil", "dataset": "orders"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "untrusted_model_files"
    assert env.fake.launched == [] and not marker.exists()
    # Once the platform has written it (test stand-in for a train job), it may be loaded.
    mark_platform_trained(env.controller.db, "evil", 1, recipe="tabular")
    r = env.http.post("/v1/jobs", json={"kind": "evaluate", "model": "evil", "dataset": "orders"})
    assert r.status_code == 201, r.text


def test_a_platform_trained_version_is_marked_and_evaluates(env: Env) -> None:
    job = train(env, "returns", {"accuracy": 0.75})
    v = env.http.get("/v1/models/returns/versions/1").json()
    assert v["job_id"] == job["id"] and v["recipe"] == "tabular"
    assert v["platform_written"] is True and v["metrics_source"] == "measured"
    r = env.http.post(
        "/v1/jobs", json={"kind": "evaluate", "model": "returns:1", "dataset": "orders"}
    )
    assert r.status_code == 201, r.text
    env.controller.tick()
    assert [s.kind for s in env.fake.launched] == ["train", "evaluate"]
    with env.controller.db.read() as s:
        details = s.scalars(
            select(AuditEvent.details).where(AuditEvent.action == "model.version.create")
        ).all()
    assert [d["platform_written"] for d in details] == [True]


def test_a_claimed_job_id_neither_trusts_nor_blocks_the_real_version(
    env: Env, tmp_path: Path
) -> None:
    """The registry accepts ``job_id`` as a lineage note from anyone; it proves nothing."""
    job = env.submit(model="returns")
    files = upload_folder(env, crafted_tabular(tmp_path / "evil", tmp_path / "pwned"))
    body = {"files": files, "job_id": job["id"], "metrics": {"accuracy": 0.99}}
    r = env.http.post("/v1/models/returns/versions", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["platform_written"] is False and r.json()["metrics_source"] == "reported"
    r = env.http.post("/v1/models/returns/versions", json={**body, "recipe": "tabular"})
    assert r.status_code == 422  # naming the job does not make the upload loadable
    # The job, when it ends, still registers its own version, and only that one is trusted.
    env.controller.tick()
    data = b"real weights"
    info = env.controller.store.write_blob(1, iter([data]), max_bytes=1 << 20)
    result = {
        "metrics": {"accuracy": 0.7},
        "register": True,
        "model_files": [{"path": "model.joblib", "sha256": info.sha256, "size": info.size}],
    }
    env.fake.emit(job["id"], 1, {"type": "end", "outcome": "succeeded", "result": result})
    env.controller.tick()
    versions = env.http.get("/v1/models/returns/versions").json()["items"]
    marks = {v["version"]: (v["platform_written"], v["metrics_source"]) for v in versions}
    assert marks == {1: (False, "reported"), 2: (True, "measured")}
    assert env.job(job["id"])["model_version"] == "returns:2"


def test_a_script_jobs_model_is_registered_but_neither_trusted_nor_measured(env: Env) -> None:
    """A script's files and numbers are its user's: never unpickled, never "measured"."""
    db, store = env.controller.db, env.controller.store
    with db.write() as s:
        s.add(
            Job(
                id="j-script",
                workspace_id=1,
                kind="train",
                state="running",
                recipe=SCRIPT_RECIPE,
                model_label="scripted",
                params={},
                code={"entrypoint": "train.py", "args": [], "files": []},
                code_hash="sha256:x",
                created_by=1,
                resources={"cpus": 1.0},
                attempt=1,
                progress={},
                metrics={},
                details={},
            )
        )
    info = store.write_blob(1, iter([b"user bytes"]), max_bytes=1 << 20)
    result = {
        "register": True,
        "metrics": {"accuracy": 1.0},
        "model_files": [{"path": "model.joblib", "sha256": info.sha256, "size": info.size}],
    }
    register_outputs(db, store, "j-script", 1, result)
    v = env.http.get("/v1/models/scripted/versions/1").json()
    assert v["job_id"] == "j-script" and v["recipe"] == SCRIPT_RECIPE
    assert (v["platform_written"], v["metrics_source"]) == (False, "reported")
    register_outputs(db, store, "j-script", 1, result)  # delivered twice: registered once
    assert len(env.http.get("/v1/models/scripted/versions").json()["items"]) == 1
    body = {"kind": "evaluate", "model": "scripted:1", "recipe": "tabular", "dataset": "orders"}
    r = env.http.post("/v1/jobs", json=body)
    assert r.status_code == 422  # a script model is not a tabular one, whatever it claims
