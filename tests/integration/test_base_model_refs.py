"""A text-generator's ``base_model`` names a model of the job's own workspace registry, never a
path on the worker (issue 10 review: a path let workspace A fine-tune on, and export, another
workspace's weights). Through REST on SQLite and PostgreSQL with a fake compute backend; one
Ray test trains through the platform and checks the version's lineage. Also: a job whose
submitter was deleted still registers its model (no user, not user id 0)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from gureum import samples
from gureum.server.db.tables import AuditEvent, Model, ModelVersion, User
from tests.integration.test_job_controller import Env, FakeBackend, env
from tests.integration.test_jobs_ray import RayCloud, _events, _wait, rc
from tests.unit.test_recipes_text import build_tiny_gpt2

__all__ = ["FakeBackend", "env", "rc"]  # the fixtures, re-exported for pytest

SMALL = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "block_size": 16, "lr": 0.01}


def hf_folder(root: Path, tag: str) -> Path:
    """Enough of a Hugging Face folder for the registry (config.json at its root)."""
    root.mkdir(parents=True)
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "tag": tag}
    (root / "config.json").write_text(json.dumps(config))
    (root / "model.safetensors").write_bytes(b"not really weights of " + tag.encode())
    return root


def register(
    http: TestClient, name: str, folder: Path, token: str | None = None, **body: Any
) -> dict[str, Any]:
    """Upload ``folder``'s files and register them as a version (as ``gureum models import``)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        r = http.put(f"/v1/blobs/{digest}", content=data, headers=headers)
        assert r.status_code in (200, 201), r.text
        files.append(
            {"path": path.relative_to(folder).as_posix(), "sha256": digest, "size": len(data)}
        )
    r = http.post(f"/v1/models/{name}/versions", json={"files": files, **body}, headers=headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


def other_workspace(e: Env) -> str:
    """A key of the site admin in a second workspace, "team-b"."""
    e.client.workspaces.create("team-b")
    return e.client.keys.create("b", workspace="team-b").token


def lora(e: Env, base: str) -> Any:
    return e.http.post(
        "/v1/jobs",
        json={
            "recipe": "text-generator",
            "dataset": "notes",
            "model": "tuned",
            "params": {**SMALL, "base_model": base},
        },
    )


def refused(r: Any, status: int, *words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"code", "message", "details"}
    for word in words:
        assert word in error["message"], error
    return dict(error)


def test_a_base_model_given_as_a_path_is_refused(env: Env, tmp_path: Path) -> None:
    """Another workspace's model folder in the artifact store, or any folder of the node."""
    b = other_workspace(env)
    secret = register(
        env.http, "secret", hf_folder(tmp_path / "secret", "b"), b, format="huggingface"
    )
    store = env.controller.store
    with env.controller.db.read() as s:
        ws_b = s.scalar(select(Model.workspace_id).where(Model.name == "secret"))
    assert ws_b is not None and ws_b != 1 and secret["format"] == "huggingface"
    # Where team-b's files lie on this node: the blob folder of its config.json, and the store.
    config_sha = env.http.get(
        "/v1/models/secret/versions/1/files", headers={"Authorization": f"Bearer {b}"}
    ).json()["items"][0]["sha256"]
    blob = store.local_path(ws_b, config_sha)
    assert blob is not None and Path(blob).is_file()
    for path in (str(Path(blob).parent), str(store.root), "/", "/etc", "../secret", "~/x"):
        refused(lora(env, path), 422, "registry", "paths are not accepted")
    assert env.fake.launched == []
    env.controller.tick()
    assert env.fake.launched == []  # nothing was queued


def test_another_workspaces_model_is_not_found(env: Env, tmp_path: Path) -> None:
    b = other_workspace(env)
    register(env.http, "secret", hf_folder(tmp_path / "secret", "b"), b, format="huggingface")
    for ref in ("secret", "secret:1", "secret:latest"):
        refused(lora(env, ref), 404, "secret")
    # The same name in the caller's own workspace is that workspace's model, not team-b's.
    register(env.http, "secret", hf_folder(tmp_path / "mine", "a"), format="huggingface")
    r = lora(env, "secret")
    assert r.status_code == 201, r.text
    env.controller.tick()
    [spec] = env.fake.launched
    mine = env.http.get("/v1/models/secret/versions/1/files").json()["items"]
    assert list(spec.models) == ["secret:1"]
    assert sorted(f.sha256 for f in spec.models["secret:1"]) == sorted(f["sha256"] for f in mine)


def test_a_model_of_the_own_workspace_is_pinned_fetched_and_recorded(
    env: Env, tmp_path: Path
) -> None:
    register(env.http, "tiny", hf_folder(tmp_path / "v1", "1"), format="huggingface")
    register(env.http, "tiny", hf_folder(tmp_path / "v2", "2"), format="huggingface")
    register(env.http, "weights", hf_folder(tmp_path / "w", "w"), format="gureum")
    refused(lora(env, "weights"), 422, "not a Hugging Face model folder")
    refused(lora(env, "tiny:7"), 404, "has no version 7")
    job = lora(env, "tiny").json()
    assert job["params"]["base_model"] == "tiny:2"  # "latest", pinned at submission
    env.controller.tick()
    [spec] = env.fake.launched
    assert list(spec.models) == ["tiny:2"]
    assert {f.path for f in spec.models["tiny:2"]} == {"config.json", "model.safetensors"}
    assert spec.model_files == []
    # The worker's model (adapter, tokenizer, base/) registers with the base in its lineage.
    store = env.controller.store
    info = store.write_blob(1, iter([b"adapter"]), max_bytes=1 << 20)
    files = [{"path": "adapter/adapter_model.safetensors", "sha256": info.sha256, "size": 7}]
    result = {"metrics": {}, "params": job["params"], "register": True, "model_files": files}
    env.fake.emit(job["id"], 1, {"type": "started", "node_id": "n"})
    env.fake.emit(job["id"], 1, {"type": "end", "outcome": "succeeded", "result": result})
    env.controller.tick()
    assert env.job(job["id"])["model_version"] == "tuned:1"
    v = env.http.get("/v1/models/tuned/versions/1").json()
    assert v["params"]["base_model"] == "tiny:2" and "from base model tiny:2" in v["message"]


def lora_model(root: Path, base: str | None, with_base_files: bool) -> Path:
    """An uploaded text-generator LoRA model: config.json names ``base``."""
    root.mkdir(parents=True)
    config: dict[str, Any] = {"recipe": "text-generator", "params": {}, "mode": "lora"}
    if base is not None:
        config["base_model"] = base
    (root / "config.json").write_text(json.dumps(config))
    (root / "adapter").mkdir()
    (root / "adapter" / "adapter_model.safetensors").write_bytes(
        b"adapter of " + root.name.encode()
    )
    if with_base_files:
        hf_folder(root / "base", root.name)
    return root


def test_an_uploaded_model_whose_config_names_a_path_is_refused_at_deploy_and_evaluate(
    env: Env, tmp_path: Path
) -> None:
    b = other_workspace(env)
    register(env.http, "secret", hf_folder(tmp_path / "secret", "b"), b, format="huggingface")
    with env.controller.db.read() as s:
        ws_b = s.scalar(select(Model.workspace_id).where(Model.name == "secret"))
    theirs = str(Path(env.controller.store.root) / "workspaces" / str(ws_b))
    cases = {
        "bypath": (theirs, True, "never a path"),
        "bare": (None, True, "never a path"),
        "nobase": ("tiny:1", False, "carries its base model's files in base/"),
    }
    for name, (base, with_files, _) in cases.items():
        register(
            env.http, name, lora_model(tmp_path / name, base, with_files), recipe="text-generator"
        )
    for name, (_, _, why) in cases.items():
        r = env.http.post("/v1/endpoints", json={"name": name, "model": f"{name}:1"})
        refused(r, 422, why)
        assert env.http.get(f"/v1/endpoints/{name}").status_code == 404
        for kind in ("evaluate", "predict"):
            body = {"kind": kind, "model": f"{name}:1", "dataset": "notes"}
            refused(env.http.post("/v1/jobs", json=body), 422, why)
    # Told to load a model uploaded without a recipe as a text-generator: the same check.
    register(env.http, "plain", lora_model(tmp_path / "plain", theirs, True))
    body = {"kind": "evaluate", "model": "plain:1", "recipe": "text-generator", "dataset": "notes"}
    refused(env.http.post("/v1/jobs", json=body), 422, "never a path")
    assert env.fake.launched == []
    # A base named as a reference, its files carried in base/: accepted.
    register(
        env.http, "good", lora_model(tmp_path / "good", "tiny:1", True), recipe="text-generator"
    )
    body = {"kind": "evaluate", "model": "good:1", "dataset": "notes"}
    assert env.http.post("/v1/jobs", json=body).status_code == 201
    r = env.http.post("/v1/endpoints", json={"name": "good", "model": "good:1"})
    assert r.status_code == 201, r.text


def test_a_job_whose_submitter_was_deleted_registers_its_model(env: Env) -> None:
    """Attributed to no user (the system) in the job's workspace; user id 0 broke the
    foreign key, so the model was never registered."""
    env.client.users.add("dora", role="developer")
    token = env.client.keys.create("dora-key", user="dora").token
    r = env.http.post(
        "/v1/jobs",
        json={
            "recipe": "tabular",
            "dataset": "orders",
            "model": "orphan",
            "params": {"target": "returned"},
        },
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 201, r.text
    job = r.json()
    env.controller.tick()
    with env.controller.db.write() as s:
        s.execute(delete(User).where(User.name == "dora"))
    info = env.controller.store.write_blob(1, iter([b"weights"]), max_bytes=1 << 20)
    files = [{"path": "model.joblib", "sha256": info.sha256, "size": info.size}]
    result = {"metrics": {"accuracy": 0.5}, "register": True, "model_files": files}
    env.fake.emit(job["id"], 1, {"type": "started", "node_id": "n"})
    env.fake.emit(job["id"], 1, {"type": "end", "outcome": "succeeded", "result": result})
    env.controller.tick()
    done = env.job(job["id"])
    assert done["state"] == "succeeded" and done["model_version"] == "orphan:1", done
    v = env.http.get("/v1/models/orphan/versions/1").json()
    assert v["created_by"] is None and v["platform_written"] is True
    with env.controller.db.read() as s:
        model = s.scalar(select(Model).where(Model.name == "orphan"))
        assert model is not None and model.workspace_id == 1 and model.created_by is None
        row = s.scalar(select(AuditEvent).where(AuditEvent.action == "model.version.create"))
        assert (
            row is not None and row.actor_user_id is None and row.actor_key_id == f"job:{job['id']}"
        )
        assert s.scalar(select(ModelVersion.created_by)) is None


@pytest.mark.ray
def test_lora_on_a_registered_base_trains_on_ray_with_lineage(rc: RayCloud, tmp_path: Path) -> None:
    samples.write("text", tmp_path / "notes", count=20)
    rc.client.datasets.push("notes", tmp_path / "notes")
    lines = (tmp_path / "notes" / "corpus.txt").read_text().splitlines()
    base = build_tiny_gpt2(lines, tmp_path / "tiny")
    rc.client.models.import_weights("tiny", base)
    params = {**SMALL, "base_model": "tiny", "lora_r": 2, "sample_tokens": 4, "eval_windows": 2}
    job = rc.client.jobs.train("text-generator", "notes", model="tuned", params=params)
    assert job.params["base_model"] == "tiny:1"
    done = _wait(rc.client, job.id, timeout=300)
    assert done.state == "succeeded", (done.error, _events(rc.client, job.id))
    v = rc.client.models.version("tuned", 1)
    assert v.params["base_model"] == "tiny:1" and "from base model tiny:1" in v.message
    paths = {f.path for f in rc.client.models.files("tuned", 1)}
    assert {"config.json", "adapter/adapter_model.safetensors", "base/config.json"} <= paths
