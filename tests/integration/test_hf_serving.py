"""Imported Hugging Face folders through the front door (issue 11 item 3): ``gureum models
import`` of tiny local folders picks the recipe from each folder's architecture, refuses what
is not a Hugging Face model served without code (422, no version), says in one line when the
hub cannot be reached; and an imported causal LM deploys on Ray Serve and answers the official
``openai`` client (plain and streamed) for a consumer, who is billed the tokens."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gureum.client import Client
from gureum.client.errors import BadRequestError
from gureum.server.services.bootstrap import bootstrap
from tests.conftest import Cloud, free_port
from tests.integration.test_serving_ray import Live, live_on_ray, wait_for
from tests.unit.test_hf_model import build_tiny_bert, build_tiny_llama, build_tiny_vit, pickled_copy

SMALL = {"resources": {"cpus": 0.25}}
UNIT_PRICE = 0.001


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {
        "llama": build_tiny_llama(root / "llama"),
        "bert": build_tiny_bert(root / "bert"),
        "vit": build_tiny_vit(root / "vit"),
    }


# -- import (no Ray) --------------------------------------------------------------------------


def test_import_picks_the_recipe_from_the_architecture(
    cloud: Cloud, folders: dict[str, Path]
) -> None:
    c = cloud.client()
    expected = {
        "llama": "hf-text-generation",
        "bert": "hf-text-classification",
        "vit": "hf-image-classification",
    }
    for name, recipe in expected.items():
        v = c.models.import_weights(name, folders[name], message="built locally")
        assert (v.format, v.recipe, v.version) == ("huggingface", recipe, 1)
    # Naming another task's recipe for a folder is refused.
    r = cloud.http().post(
        "/v1/models/bert/versions",
        json={
            "files": [f.model_dump() for f in c.models.files("bert", 1)],
            "format": "huggingface",
            "recipe": "hf-text-generation",
        },
    )
    assert r.status_code == 422, r.text
    assert "served by hf-text-classification" in r.json()["error"]["message"]
    assert [v.version for v in c.models.versions("bert")] == [1]


def _edited(src: Path, dest: Path, **config: Any) -> Path:
    shutil.copytree(src, dest)
    data = json.loads((dest / "config.json").read_text())
    data.update(config)
    (dest / "config.json").write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
    return dest


def test_a_folder_that_is_not_a_hugging_face_model_is_refused_at_import(
    cloud: Cloud, folders: dict[str, Path], tmp_path: Path
) -> None:
    c = cloud.client()
    llama = folders["llama"]
    cases = {
        "no-arch": (_edited(llama, tmp_path / "a", architectures=None), '"architectures"'),
        "unknown": (_edited(llama, tmp_path / "b", architectures=["LlamaModel"]), "no task"),
        "remote": (
            _edited(llama, tmp_path / "c", auto_map={"AutoModelForCausalLM": "m.M"}),
            "trust_remote_code",
        ),
        "pickled": (pickled_copy(llama, tmp_path / "d"), "pytorch_model.bin"),
    }
    broken = tmp_path / "e"
    shutil.copytree(llama, broken)
    (broken / "config.json").write_text("{not json")
    cases["not-json"] = (broken, "not valid JSON")
    for name, (folder, reason) in cases.items():
        with pytest.raises(BadRequestError) as info:
            c.models.import_weights(name, folder)
        err = info.value
        assert (err.status, err.code) == (422, "invalid_request"), (name, err.message)
        assert reason in err.message and "Hugging Face" in err.message, (name, err.message)
    assert not {m.name for m in c.models.list()} & set(cases)  # no model, no version


def test_hf_import_says_in_one_line_when_the_hub_cannot_be_reached(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env |= {
        "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "GUREUM_URL": f"http://127.0.0.1:{free_port()}",
        "GUREUM_API_KEY": "unused",
        "HOME": str(tmp_path),
    }
    gureum = [sys.executable, "-m", "gureum.cli.main", "models", "import", "m", "hf://org/model"]
    done = subprocess.run([*gureum, "-o", "json"], env=env, capture_output=True, timeout=60)
    assert done.returncode == 1, done.stderr
    error = json.loads(done.stdout)["error"]
    assert error["code"] == "hub_unreachable"
    assert "cannot pull hf://org/model" in error["message"]
    assert "cannot be reached" in error["message"] and "\n" not in error["message"]
    bad = subprocess.run([*gureum[:-1], "hf://a/../b", "-o", "json"], env=env, capture_output=True)
    assert bad.returncode == 1 and json.loads(bad.stdout)["error"]["code"] == "bad_request"


# -- serving (Ray) ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, ray_cluster: str) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("hf-serve")
    with live_on_ray(root, ray_cluster) as server:
        yield server


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_an_imported_causal_lm_answers_the_openai_client_and_bills_tokens(
    live: Live, folders: dict[str, Path]
) -> None:
    token = bootstrap(live.app.state.db)
    assert token is not None
    url = f"http://127.0.0.1:{live.settings.port}"
    v = Client(url, token).models.import_weights("tiny-llama", folders["llama"])
    assert v.recipe == "hf-text-generation"
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}) as api:
        r = api.post("/v1/consumers", json={"name": "acme", "price_per_unit": UNIT_PRICE})
        assert r.status_code == 201, r.text
        key = r.json()["token"]
        body = {"name": "llama", "model": "tiny-llama", "config": SMALL}
        r = api.post("/v1/endpoints", json=body)
        assert r.status_code == 201, r.text

        def ready() -> dict[str, Any] | None:
            ep: dict[str, Any] = api.get("/v1/endpoints/llama").json()
            assert ep["state"] != "failed", ep["message"]
            return ep if ep["state"] == "ready" and ep["replicas"]["primary"] else None

        endpoint = wait_for(ready, 240, "endpoint llama ready")

    client = openai.OpenAI(base_url=endpoint["url"], api_key=key)
    assert [m.id for m in client.models.list()] == ["tiny-llama:1"]
    reply = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "Name a fabric."}],
        max_tokens=6,
        temperature=0,
    )
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 6
    assert reply.usage.prompt_tokens > 0
    tokens = reply.usage.total_tokens
    chunks = list(
        client.chat.completions.create(
            model="tiny-llama",
            messages=[{"role": "user", "content": "Name a fabric."}],
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed_text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed_text == reply.choices[0].message.content  # greedy: the same answer
    assert chunks[-2].choices[0].finish_reason == reply.choices[0].finish_reason
    usage = chunks[-1].usage
    assert usage is not None and usage.total_tokens == reply.usage.total_tokens
    tokens += usage.total_tokens
    # The plain data-plane route answers as the built-in text generator does.
    r = httpx.post(
        f"{endpoint['url']}/predict",
        json={"inputs": [{"prompt": "A wool", "max_tokens": 3, "temperature": 0}]},
        headers={"authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    out = r.json()
    (generated,) = out["outputs"]
    assert generated["prompt"] == "A wool" and generated["usage"]["completion_tokens"] <= 3
    assert (out["unit"], out["units"]) == ("token", sum(generated["usage"].values()))
    tokens += out["units"]

    def billed() -> dict[str, Any] | None:
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}) as api:
            r = api.get("/v1/usage", params={"endpoint": "llama", "group_by": "consumer"})
            assert r.status_code == 200, r.text
        rows = [row for row in r.json()["rows"] if row["consumer"] == "acme"]
        return rows[0] if rows and rows[0]["units"] >= tokens else None

    row = wait_for(billed, 30, "the consumer's usage")
    assert (row["unit"], row["units"], row["requests"], row["errors"]) == ("token", tokens, 3, 0)
    assert row["amount"] == pytest.approx(tokens * UNIT_PRICE)

    # `gureum endpoints show` says what generates (item 6): transformers on this CPU.
    def engines() -> dict[str, str] | None:
        return Client(url, token).endpoints.stats("llama").engines or None

    assert wait_for(engines, 30, "the engine in the endpoint's stats") == {
        "primary": "transformers-cpu"
    }
