"""image-lora's base is a diffusers folder imported into the workspace registry (issue 15):
through REST on SQLite and PostgreSQL, a Stable-Diffusion-format folder of safetensors imports
and is served by image-lora; one with pickle weights, or that is no diffusers folder, is a 422
at import; a train job on a base that is not a diffusers folder is a 422 at submission."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gureum.client.errors import BadRequestError
from gureum.client.models import detect_format
from gureum.recipes.sd_tiny import save_tiny_pipeline
from tests.integration.test_base_model_refs import hf_folder, refused, register
from tests.integration.test_job_controller import Env, FakeBackend, env

__all__ = ["FakeBackend", "env"]  # the fixtures, re-exported for pytest


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("sd") / "tiny-sd")


def upload(env: Env, name: str, folder: Path, fmt: str | None = None) -> Any:
    """Upload and register as `gureum models import` does, returning the raw response."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        assert env.http.put(f"/v1/blobs/{digest}", content=data).status_code in (200, 201)
        files.append(
            {"path": path.relative_to(folder).as_posix(), "sha256": digest, "size": len(data)}
        )
    body = {"files": files, "format": fmt or detect_format(folder)}
    return env.http.post(f"/v1/models/{name}/versions", json=body)


def test_a_diffusers_folder_imports_as_an_image_lora_base(env: Env, tiny_sd: Path) -> None:
    v = register(env.http, "tiny-sd", tiny_sd, format="huggingface")
    assert (v["format"], v["recipe"]) == ("huggingface", "image-lora")


def test_pickle_weights_are_refused_at_import(env: Env, tiny_sd: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_sd, tmp_path / "pickled")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    error = refused(upload(env, "pickled", folder), 422, "pickle weights", "safetensors")
    assert error["code"] == "invalid_request"
    assert env.http.get("/v1/models/pickled").status_code == 404  # nothing half-written


def test_a_folder_that_is_no_diffusers_pipeline_is_refused(
    env: Env, tiny_sd: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(tiny_sd, tmp_path / "partial")
    index = json.loads((folder / "model_index.json").read_text())
    del index["text_encoder"]
    (folder / "model_index.json").write_text(json.dumps(index))
    refused(upload(env, "partial", folder), 422, "lists no text_encoder")
    plain = tmp_path / "plain"
    (plain / "unet").mkdir(parents=True)
    (plain / "unet" / "w.safetensors").write_bytes(b"x")
    with pytest.raises(BadRequestError, match=r"model_index\.json") as caught:
        detect_format(plain)  # what `gureum models import` says before uploading anything
    assert caught.value.status == 422
    # The same folder registered over REST anyway: the server refuses it too.
    refused(upload(env, "plain", plain, "huggingface"), 422, "model_index.json")


def test_image_lora_trains_only_on_a_diffusers_base(
    env: Env, tiny_sd: Path, tmp_path: Path
) -> None:
    register(env.http, "gpt", hf_folder(tmp_path / "gpt", "1"), format="huggingface")
    register(env.http, "tiny-sd", tiny_sd, format="huggingface")
    pics = tmp_path / "pics" / "dress"
    pics.mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(pics / f"{i}.png")
    env.client.datasets.push("pics", tmp_path / "pics")

    def train(base: str) -> Any:
        body = {
            "recipe": "image-lora",
            "dataset": "pics",
            "model": "lora",
            "params": {"base_model": base},
        }
        return env.http.post("/v1/jobs", json=body)

    refused(train("gpt"), 422, "diffusers folder")
    refused(train("/etc"), 422, "base_model")
    job = train("tiny-sd").json()
    assert job["params"]["base_model"] == "tiny-sd:1"
    env.controller.tick()
    [spec] = env.fake.launched
    assert "model_index.json" in {f.path for f in spec.models["tiny-sd:1"]}
