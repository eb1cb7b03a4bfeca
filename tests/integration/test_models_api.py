"""The model registry over REST and the SDK: versions with lineage, gates, stages, imports."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file
from sqlalchemy import select

from gureum.client.errors import BadRequestError, ConflictError, ForbiddenError
from gureum.client.models import UnknownFormat, detect_format
from gureum.server.db.tables import AuditEvent
from tests.conftest import Cloud
from tests.integration.test_blobs_api import member_key, sha
from tests.integration.test_datasets_api import GARMENTS, push
from tests.unit.test_onnx_model import classifier

WEIGHTS = {"model.bin": b"\x00weights\x01" * 10, "meta/notes.txt": b"trained here"}


def upload(h: TestClient | httpx.Client, files: dict[str, bytes]) -> None:
    for data in files.values():
        r = h.put(f"/v1/blobs/{sha(data)}", content=data)
        assert r.status_code == 201, r.text


def register(
    h: TestClient, name: str, files: dict[str, bytes] | None = None, **body: Any
) -> httpx.Response:
    files = WEIGHTS if files is None else files
    upload(h, files)
    manifest = [{"path": p, "sha256": sha(d), "size": len(d)} for p, d in files.items()]
    return h.post(f"/v1/models/{name}/versions", json={"files": manifest, **body})


def promote(h: TestClient, name: str, ref: str | int, stage: str, **body: Any) -> httpx.Response:
    return h.post(f"/v1/models/{name}/versions/{ref}/promote", json={"stage": stage, **body})


def gated(h: TestClient, name: str = "gen", **gates: Any) -> None:
    assert register(h, name, metrics={"accuracy": 0.5}).status_code == 201
    r = h.patch(f"/v1/models/{name}", json=gates)
    assert r.status_code == 200, r.text


def test_register_read_back_with_lineage(cloud: Cloud) -> None:
    h = cloud.http()
    assert push(h, "garments", GARMENTS).status_code == 201
    r = register(
        h,
        "gen",
        recipe="image-generator",
        params={"epochs": 3},
        metrics={"mmd": 0.12, "confusion": [[1, 0], [0, 1]]},
        dataset="garments:1",
        job_id="job-7",
        code_hash="abc123",
        message="first",
        description="designs",
    )
    assert r.status_code == 201, r.text
    v = r.json()
    assert (v["model"], v["version"], v["stage"], v["format"]) == ("gen", 1, "none", "gureum")
    assert v["dataset"] == "garments:1" and v["job_id"] == "job-7" and v["code_hash"] == "abc123"
    assert v["params"] == {"epochs": 3} and v["metrics"]["mmd"] == 0.12
    assert v["file_count"] == 2 and v["total_bytes"] == sum(len(d) for d in WEIGHTS.values())
    assert v["created_by"] == "admin"
    assert register(h, "gen", dataset="garments").json()["version"] == 2
    assert h.get("/v1/models/gen/versions/latest").json()["version"] == 2
    assert h.get("/v1/models/gen/versions/1").json()["recipe"] == "image-generator"
    files = h.get("/v1/models/gen/versions/1/files").json()["items"]
    assert [f["path"] for f in files] == ["meta/notes.txt", "model.bin"]
    assert files[1]["sha256"] == sha(WEIGHTS["model.bin"])
    model = h.get("/v1/models/gen").json()
    assert model["description"] == "designs" and model["latest_version"] == 2
    assert model["version_count"] == 2 and model["production_version"] is None
    versions = h.get("/v1/models/gen/versions", params={"limit": 1}).json()
    assert [x["version"] for x in versions["items"]] == [2]
    nxt = h.get("/v1/models/gen/versions", params={"cursor": versions["next_cursor"]}).json()
    assert [x["version"] for x in nxt["items"]] == [1] and nxt["next_cursor"] is None
    with cloud.app.state.db.read() as s:
        events = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "model.version.create")
        ).all()
    assert [e.target for e in events] == ["gen:1", "gen:2"]


def test_models_list_is_paginated(cloud: Cloud) -> None:
    h = cloud.http()
    for name in ("c", "a", "b"):
        assert register(h, name).status_code == 201
    page = h.get("/v1/models", params={"limit": 2}).json()
    assert [m["name"] for m in page["items"]] == ["a", "b"]
    rest = h.get("/v1/models", params={"cursor": page["next_cursor"]}).json()
    assert [m["name"] for m in rest["items"]] == ["c"]


def test_bad_registrations_are_refused(cloud: Cloud) -> None:
    h = cloud.http()
    manifest = [{"path": "w.bin", "sha256": sha(b"never sent"), "size": 10}]
    r = h.post("/v1/models/gen/versions", json={"files": manifest})
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_blobs"
    assert register(h, "gen", format="tensorflow").status_code == 422
    assert register(h, "gen", dataset="nope:1").status_code == 404
    assert register(h, "Bad Name").status_code in (404, 422)
    r = register(h, "gen", format="safetensors")
    assert r.status_code == 422 and ".safetensors" in r.json()["error"]["message"]
    r = register(h, "gen", {"fake.safetensors": b"not a header at all"}, format="safetensors")
    assert r.status_code == 422 and "not a safetensors file" in r.json()["error"]["message"]
    r = register(h, "gen", format="huggingface")
    assert r.status_code == 422 and "config.json" in r.json()["error"]["message"]
    assert h.get("/v1/models/gen").status_code == 404  # nothing was created


# -- gates and stages ---------------------------------------------------------------------


def test_metric_gates_refuse_with_reasons_then_accept(cloud: Cloud) -> None:
    h = cloud.http()
    gated(
        h,
        gates=[
            {"metric": "accuracy", "op": ">=", "threshold": 0.9},
            {"metric": "loss", "op": "<", "threshold": 1.0},
        ],
    )
    r = promote(h, "gen", 1, "production")
    assert r.status_code == 409
    err = r.json()["error"]
    assert err["code"] == "gate_failed"
    failed = {f["metric"]: f for f in err["details"]["failed"]}
    assert failed["accuracy"]["actual"] == 0.5 and failed["accuracy"]["required"] == 0.9
    assert failed["loss"]["actual"] is None and "not among" in failed["loss"]["reason"]
    assert h.get("/v1/models/gen/versions/1").json()["stage"] == "none"
    # Staging has no gate.
    assert promote(h, "gen", 1, "staging").json()["version"]["stage"] == "staging"
    assert register(h, "gen", metrics={"accuracy": 0.95, "loss": 0.3}).status_code == 201
    r = promote(h, "gen", 2, "production")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["version"]["stage"] == "production" and out["previous_stage"] == "none"
    assert all(c["passed"] for c in out["checks"]) and len(out["checks"]) == 2
    assert h.get("/v1/models/gen").json()["production_version"] == 2
    assert h.get("/v1/models/gen/versions/production").json()["version"] == 2


def test_promoting_archives_the_previous_production(cloud: Cloud) -> None:
    h = cloud.http()
    for _ in range(2):
        assert register(h, "gen").status_code == 201
    assert promote(h, "gen", 1, "production").status_code == 200
    r = promote(h, "gen", 2, "production")
    assert r.status_code == 200 and r.json()["archived"] == [1]
    stages = {v["version"]: v["stage"] for v in h.get("/v1/models/gen/versions").json()["items"]}
    assert stages == {1: "archived", 2: "production"}
    # Promoting again is a no-op; rolling back to the archived one archives 2.
    assert promote(h, "gen", 2, "production").json()["archived"] == []
    assert promote(h, "gen", 1, "production").json()["archived"] == [2]
    with cloud.app.state.db.read() as s:
        events = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "model.version.promote")
        ).all()
    assert [(e.target, e.details["to"]) for e in events] == [
        ("gen:1", "production"),
        ("gen:2", "production"),
        ("gen:1", "production"),
    ]


def test_must_beat_production(cloud: Cloud) -> None:
    h = cloud.http()
    gated(h, must_beat_production={"metric": "loss", "higher_is_better": False})
    # No production yet: nothing to beat.
    assert promote(h, "gen", 1, "production").status_code == 200
    assert register(h, "gen", metrics={"loss": 2.0}).status_code == 201
    r = h.patch("/v1/models/gen", json={"description": "x"})
    assert r.json()["must_beat_production"] == {
        "metric": "loss",
        "higher_is_better": False,
        "measured": False,
    }
    # Production v1 has no loss: it can't be beaten or lost to.
    assert promote(h, "gen", 2, "production").status_code == 200
    assert register(h, "gen", metrics={"loss": 2.5}).status_code == 201
    r = promote(h, "gen", 3, "production")
    assert r.status_code == 409
    (check,) = r.json()["error"]["details"]["failed"]
    assert check["check"] == "must_beat_production"
    assert (check["actual"], check["required"], check["op"]) == (2.5, 2.0, "<")
    assert register(h, "gen", metrics={"loss": 1.5}).status_code == 201
    assert promote(h, "gen", 4, "production").json()["archived"] == [2]
    # Cleared: anything goes again.
    assert h.patch("/v1/models/gen", json={"must_beat_production": None}).status_code == 200
    assert promote(h, "gen", 3, "production").status_code == 200


def test_force_needs_admin_and_is_audited(cloud: Cloud) -> None:
    h = cloud.http()
    gated(h, gates=[{"metric": "accuracy", "op": ">", "threshold": 0.99}])
    dev = cloud.http(member_key(cloud, "developer"))
    r = promote(dev, "gen", 1, "production", force=True)
    assert r.status_code == 403
    assert promote(dev, "gen", 1, "production").status_code == 409
    admin = cloud.http(member_key(cloud, "admin"))
    r = promote(admin, "gen", 1, "production", force=True)
    assert r.status_code == 200 and r.json()["forced"] is True
    with cloud.app.state.db.read() as s:
        event = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "model.version.promote")
        ).one()
    assert event.details["forced"] is True and "accuracy" in event.details["failed_checks"][0]


def test_bad_gates_and_refs_are_422(cloud: Cloud) -> None:
    h = cloud.http()
    assert register(h, "gen").status_code == 201
    bad = {"gates": [{"metric": "acc", "op": "==", "threshold": 1}]}
    assert h.patch("/v1/models/gen", json=bad).status_code == 422
    assert h.patch("/v1/models/gen", json={"nope": 1}).status_code == 422
    assert promote(h, "gen", 1, "gold").status_code == 422
    assert h.get("/v1/models/gen/versions/best").status_code == 422
    assert h.get("/v1/models/gen/versions/9").status_code == 404
    assert h.get("/v1/models/gen/versions/production").status_code == 404


# -- lineage protects the dataset ---------------------------------------------------------


def test_dataset_version_used_by_a_model_cannot_be_deleted(cloud: Cloud) -> None:
    h = cloud.http()
    assert push(h, "garments", GARMENTS).status_code == 201
    assert register(h, "gen", dataset="garments:1").status_code == 201
    r = h.delete("/v1/datasets/garments/versions/1")
    assert r.status_code == 409 and "model_version" in r.json()["error"]["message"]
    assert h.delete("/v1/datasets/garments").status_code == 409


# -- who may do what ----------------------------------------------------------------------


def test_viewer_reads_but_cannot_mutate(cloud: Cloud) -> None:
    h = cloud.http()
    assert register(h, "gen").status_code == 201
    viewer = cloud.http(member_key(cloud, "viewer"))
    assert viewer.get("/v1/models").json()["items"][0]["name"] == "gen"
    assert viewer.get("/v1/models/gen/versions/1/files").status_code == 200
    manifest = [{"path": "w", "sha256": sha(WEIGHTS["model.bin"]), "size": 1}]
    assert viewer.post("/v1/models/gen/versions", json={"files": manifest}).status_code == 403
    assert viewer.patch("/v1/models/gen", json={"description": "x"}).status_code == 403
    assert promote(viewer, "gen", 1, "staging").status_code == 403


def test_another_workspace_sees_404(cloud: Cloud) -> None:
    h = cloud.http()
    assert register(h, "gen").status_code == 201
    other = cloud.http(member_key(cloud, "owner", workspace="rival"))
    assert other.get("/v1/models").json()["items"] == []
    assert other.get("/v1/models/gen").status_code == 404
    assert other.get("/v1/models/gen/versions/1").status_code == 404
    assert other.patch("/v1/models/gen", json={"description": "x"}).status_code == 404
    assert promote(other, "gen", 1, "production").status_code == 404
    # Its own model of the same name is its own; our blobs are not visible to it.
    r = other.post(
        "/v1/models/gen/versions",
        json={"files": [{"path": "model.bin", "sha256": sha(WEIGHTS["model.bin"]), "size": 90}]},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_blobs"
    assert register(other, "gen").json()["version"] == 1


def test_unauthenticated_is_401(cloud: Cloud) -> None:
    anon = cloud.http(False)  # type: ignore[arg-type]
    assert anon.get("/v1/models").status_code == 401
    assert (
        anon.post("/v1/models/gen/versions/1/promote", json={"stage": "staging"}).status_code == 401
    )


# -- import through the SDK ---------------------------------------------------------------


def _safetensors(path: Path) -> Path:
    save_file({"w": torch.zeros(2, 3), "b": torch.ones(3)}, str(path))
    return path


def test_import_each_format(cloud: Cloud, tmp_path: Path) -> None:
    c = cloud.client()
    st = _safetensors(tmp_path / "model.safetensors")
    v = c.models.import_weights("st", st)
    assert (v.format, v.file_count, v.metrics) == ("safetensors", 1, {})
    pt = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, pt)
    assert c.models.import_weights("pt", pt).format == "pytorch"
    onnx = classifier(tmp_path / "onnx" / "net.onnx")  # parsed and checked by the server
    assert c.models.import_weights("onnx", onnx).format == "onnx"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    )
    _safetensors(hf / "model.safetensors")
    (hf / "tokenizer.json").write_text("{}")
    v = c.models.import_weights("hf", hf, message="from the hub")
    assert v.format == "huggingface" and v.file_count == 3 and v.message == "from the hub"
    assert [f.path for f in c.models.files("hf", 1)] == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert {m.name for m in c.models.list()} == {"st", "pt", "onnx", "hf"}


def test_import_refuses_unknown_formats(cloud: Cloud, tmp_path: Path) -> None:
    c = cloud.client()
    odd = tmp_path / "weights.h5"
    odd.write_bytes(b"x")
    with pytest.raises(UnknownFormat) as exc:
        c.models.import_weights("m", odd)
    assert exc.value.status == 422
    plain = tmp_path / "folder"
    plain.mkdir()
    (plain / "w.bin").write_bytes(b"x")
    with pytest.raises(UnknownFormat):
        detect_format(plain)
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(BadRequestError) as bad:
        c.models.import_weights("m", fake)
    assert bad.value.status == 422
    assert c.models.list() == []


def test_sdk_gates_and_promotion(cloud: Cloud, tmp_path: Path) -> None:
    c = cloud.client()
    st = _safetensors(tmp_path / "model.safetensors")
    c.models.register("gen", st, format="safetensors", metrics={"acc": 0.7})
    m = c.models.update("gen", gates=[{"metric": "acc", "op": ">=", "threshold": 0.8}])
    assert m.gates[0].threshold == 0.8
    with pytest.raises(ConflictError) as exc:
        c.models.promote("gen", 1, "production")
    assert exc.value.code == "gate_failed" and exc.value.details["failed"][0]["actual"] == 0.7
    out = c.models.promote("gen", 1, "production", force=True)
    assert out.forced and out.version.stage == "production"
    viewer = cloud.client(member_key(cloud, "viewer"))
    with pytest.raises(ForbiddenError):
        viewer.models.promote("gen", 1, "archived")
    assert c.models.version("gen", "production").version == 1


def test_deleting_a_dataset_version_keeps_blobs_a_model_uses(cloud: Cloud) -> None:
    """Blobs are shared per workspace: garbage collection must count model files too."""
    h = cloud.http()
    shared = {"weights.bin": b"same bytes in a dataset and a model" * 50}
    assert push(h, "exports", shared).status_code == 201
    assert register(h, "clf", shared).status_code == 201
    assert h.delete("/v1/datasets/exports/versions/1").status_code == 204
    r = h.get(f"/v1/blobs/{sha(shared['weights.bin'])}")
    assert r.status_code == 200 and r.content == shared["weights.bin"]
