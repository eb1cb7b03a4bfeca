"""image-lora through the front door on real Ray (issue 15): a tiny Stable-Diffusion-shaped
diffusers folder imported with the SDK (as `gureum models import`), LoRA-trained as a platform
job on captioned pictures, deployed over REST and called through the data plane by a consumer
with a prompt: PNGs back, billed per image; a long prompt is cut and says so; steps out of
range is a 422 with the limits."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import httpx
import pytest
from PIL import Image

from gureum import samples
from gureum.client import Client
from gureum.recipes.sd_tiny import save_tiny_pipeline
from gureum.server.services.bootstrap import bootstrap
from tests.integration.test_serving_ray import live_on_ray, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

PARAMS = {"base_model": "tiny-sd", "epochs": 1, "max_steps": 2, "sample_steps": 2}


def test_import_train_deploy_and_generate_on_ray(tmp_path: Path, ray_cluster: str) -> None:
    with live_on_ray(tmp_path, ray_cluster) as live:
        token = bootstrap(live.app.state.db)
        assert token is not None
        url = f"http://127.0.0.1:{live.settings.port}"
        client = Client(url, token)
        base = client.models.import_weights("tiny-sd", save_tiny_pipeline(tmp_path / "tiny-sd"))
        assert (base.format, base.recipe) == ("huggingface", "image-lora")
        samples.write("garments", tmp_path / "designs", count=10, captions=True)
        client.datasets.push("designs", tmp_path / "designs")
        job = client.jobs.train("image-lora", "designs", model="designs-lora", params=PARAMS)
        assert job.params["base_model"] == "tiny-sd:1"
        done = client.jobs.wait(job.id, poll_s=0.5, timeout_s=300)
        events = [f"{e.kind}: {e.message}" for e in client.jobs.events(job.id)]
        assert done.state == "succeeded", (done.error, events)
        v = client.models.version("designs-lora", 1)
        assert v.params["base_model"] == "tiny-sd:1" and "from base model tiny-sd:1" in v.message
        # Every training picture captioned by the sample's metadata.jsonl, not its class name.
        log, _ = client.jobs.logs(job.id)
        assert re.search(r"image-lora: (\d+) pictures, \1 captioned by file: 'an? [a-z ]+'", log), (
            log
        )
        assert "val_loss" in v.metrics
        paths = {f.path for f in client.models.files("designs-lora", 1)}
        assert {"adapter/adapter_model.safetensors", "base/model_index.json"} <= paths
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}) as api:
            r = api.post("/v1/consumers", json={"name": "acme", "price_per_unit": 0.01})
            assert r.status_code == 201, r.text
            key = r.json()["token"]
            body = {
                "name": "designs",
                "model": "designs-lora",
                "config": {"resources": {"cpus": 0.25}},
            }
            r = api.post("/v1/endpoints", json=body)
            assert r.status_code == 201, r.text

            def ready() -> str | None:
                ep = api.get("/v1/endpoints/designs").json()
                assert ep["state"] != "failed", ep["message"]
                return (
                    str(ep["url"]) if ep["state"] == "ready" and ep["replicas"]["primary"] else None
                )

            endpoint = wait_for(ready, 240, "endpoint designs ready")

        def predict(inputs: list[object]) -> httpx.Response:
            return httpx.post(
                f"{endpoint}/predict",
                json={"inputs": inputs},
                headers={"authorization": f"Bearer {key}"},
                timeout=120,
            )

        ask = {
            "prompt": "a red dress",
            "seed": 1,
            "steps": 2,
            "count": 2,
            "width": 32,
            "height": 32,
        }
        r = predict([ask, {"prompt": "a red dress " * 30, "steps": 2}])
        assert r.status_code == 200, r.text
        first, long = r.json()["outputs"]
        for text in first["images"]:
            img = Image.open(io.BytesIO(base64.b64decode(text)))
            assert (img.format, img.size) == ("PNG", (32, 32))
        assert first["truncated"] is False and long["truncated"] is True and long["warning"]
        r = predict([{"prompt": "a dress", "steps": 500}])
        assert r.status_code == 422, r.text
        assert "steps" in r.text and "100" in r.text

        def billed() -> dict[str, object] | None:
            with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}) as api:
                rows = api.get(
                    "/v1/usage", params={"endpoint": "designs", "group_by": "consumer"}
                ).json()["rows"]
            row = next((x for x in rows if x["consumer"] == "acme"), None)
            return row if row and row["units"] >= 3 else None

        row = wait_for(billed, 30, "usage of designs")
        assert row["unit"] == "image" and row["units"] == pytest.approx(3)
