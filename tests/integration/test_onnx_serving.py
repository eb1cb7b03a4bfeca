"""Imported ONNX models serve without code (issue 11, item 3), through the front door.

``gureum models import`` of a file named ``.onnx`` that is not ONNX is a 422 with the reason
and creates nothing (SQLite and PostgreSQL, a live server). A real ONNX classifier, built here
with onnx's helper API, is imported with the CLI, gets the ``onnx`` recipe, deploys on the
session's Ray Serve and answers ``/predict`` and the Open Inference Protocol v2 routes to a
paying consumer's key, each example billed as one ``input``, a replayed call not again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from gureum.cli.main import app as cli_app
from gureum.client.errors import BadRequestError
from gureum.server.services.bootstrap import bootstrap
from tests.conftest import LiveServer
from tests.integration.test_serving_ray import live_on_ray, wait_for
from tests.unit.test_onnx_model import classifier, expected

UNIT_PRICE = 0.001
SMALL = {"resources": {"cpus": 0.25}}


def _cli(url: str, key: str, *args: str) -> tuple[int, str]:
    env = {"GUREUM_URL": url, "GUREUM_API_KEY": key, "NO_COLOR": "1", "COLUMNS": "200"}
    result = CliRunner().invoke(cli_app, list(args), env=env)
    return result.exit_code, result.output


def test_a_file_named_onnx_that_is_not_onnx_is_refused_at_import(
    live_server: LiveServer, tmp_path: Path
) -> None:
    fake = tmp_path / "x.onnx"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n a picture renamed to .onnx" * 20)
    client = live_server.client()
    with pytest.raises(BadRequestError) as refused:
        client.models.import_weights("fake", fake)
    assert (refused.value.status, refused.value.code) == (422, "invalid_request")
    assert refused.value.message.startswith("x.onnx is not a usable ONNX model: ")
    assert refused.value.details["path"] == "x.onnx" and refused.value.details["reason"]
    code, out = _cli(
        live_server.url, live_server.cloud.admin_key, "models", "import", "fake", str(fake)
    )
    assert code != 0 and "x.onnx is not a usable ONNX model" in " ".join(out.split())
    with httpx.Client(base_url=live_server.url, headers=_auth(live_server.cloud.admin_key)) as api:
        assert api.get("/v1/models/fake").status_code == 404  # no model, no version
        # A real ONNX file imports, and is served by the onnx recipe with no code.
        real = classifier(tmp_path / "real" / "model.onnx")
        v = client.models.import_weights("real", real)
        assert (v.format, v.recipe, v.version) == ("onnx", "onnx", 1)
        # Naming the onnx recipe for files of another format is refused.
        body = {
            "files": [
                {"path": f.path, "sha256": f.sha256, "size": f.size}
                for f in client.models.files("real")
            ],
            "format": "gureum",
            "recipe": "onnx",
        }
        r = api.post("/v1/models/real/versions", json=body)
        assert (
            r.status_code == 422 and "serves files of format onnx" in r.json()["error"]["message"]
        )
        assert [x.version for x in client.models.versions("real")] == [1]


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


class Served:
    def __init__(self, url: str, token: str, consumer_key: str, endpoint_url: str) -> None:
        self.url, self.token, self.key, self.endpoint = url, token, consumer_key, endpoint_url

    def post(self, route: str, body: dict[str, Any], **headers: str) -> httpx.Response:
        return httpx.post(
            f"{self.endpoint}/{route}",
            json=body,
            headers={**_auth(self.key), **headers},
            timeout=60,
        )

    def get(self, route: str, key: str | None = None) -> httpx.Response:
        return httpx.get(f"{self.endpoint}/{route}", headers=_auth(key or self.key), timeout=60)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, ray_cluster: str) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("onnx-serve")
    with live_on_ray(root, ray_cluster) as live:
        settings = live.settings
        token = bootstrap(live.app.state.db)
        assert token is not None
        url = f"http://127.0.0.1:{settings.port}"
        model = classifier(root / "clf" / "model.onnx")
        code, out = _cli(url, token, "models", "import", "clf", str(model))
        assert code == 0, out
        with httpx.Client(base_url=url, headers=_auth(token), timeout=30) as api:
            r = api.post("/v1/consumers", json={"name": "acme", "price_per_unit": UNIT_PRICE})
            assert r.status_code == 201, r.text
            consumer_key = r.json()["token"]
            r = api.post("/v1/endpoints", json={"name": "e-onnx", "model": "clf", "config": SMALL})
            assert r.status_code == 201, r.text

            def ready() -> dict[str, Any] | None:
                ep: dict[str, Any] = api.get("/v1/endpoints/e-onnx").json()
                assert ep["state"] != "failed", ep["message"]
                return ep if ep["state"] == "ready" and ep["replicas"]["primary"] else None

            ep = wait_for(ready, 240, "endpoint e-onnx ready")
        yield Served(url, token, consumer_key, ep["url"])


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_an_imported_onnx_model_serves_predict_and_oip_billed_per_input(served: Served) -> None:
    rows = [[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    logits, probs = expected(rows)
    # /predict: one object per example (or the bare row: the model has one input).
    r = served.post("predict", {"inputs": [{"features": rows[0]}, rows[1]]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["units"], body["unit"]) == ("clf:1", 2, "input")
    assert [o["label"] for o in body["outputs"]] == [0, 1]
    assert body["outputs"][1]["probabilities"] == pytest.approx(probs[1].tolist(), abs=1e-5)
    r = served.post("predict", {"inputs": [[1.0, 2.0, 3.0]]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_input"
    assert "expected one example of shape [4], got [3]" in r.json()["error"]["message"]

    # The Open Inference Protocol v2: metadata, then infer with the tensor of three rows.
    meta = served.get("v2/models/e-onnx")
    assert meta.status_code == 200, meta.text
    assert meta.json()["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert served.get("v2/health/ready").json() == {"ready": True}
    assert served.get("v2/health/live", key="gck_nobody_nothing").status_code == 401
    flat = [x for row in rows for x in row]
    infer = {
        "id": "q1",
        "inputs": [{"name": "features", "shape": [3, 4], "datatype": "FP32", "data": flat}],
    }
    r = served.post("v2/models/clf:1/infer", infer, **{"idempotency-key": "infer-1"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("clf:1", "1", "q1")
    out = {o["name"]: o for o in answer["outputs"]}
    assert (out["logits"]["shape"], out["logits"]["datatype"]) == ([3, 3], "FP32")
    assert out["logits"]["data"] == pytest.approx(logits.ravel().tolist(), abs=1e-5)
    assert (out["label"]["shape"], out["label"]["data"]) == ([3], [0, 1, 2])
    # The same call again under its Idempotency-Key is a replay: the same answer, not billed.
    again = served.post("v2/models/clf:1/infer", infer, **{"idempotency-key": "infer-1"})
    assert again.status_code == 200 and again.json() == answer
    wrong = served.post("v2/models/other/infer", infer)
    assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "model_not_found"

    # Billed: 2 examples by /predict, 3 by infer; the refused calls and the replay cost nothing.
    with httpx.Client(base_url=served.url, headers=_auth(served.token), timeout=30) as api:

        def billed() -> dict[str, Any] | None:
            r = api.get("/v1/usage", params={"endpoint": "e-onnx", "group_by": "consumer"})
            rows = [x for x in r.json()["rows"] if x["consumer"] == "acme"]
            return rows[0] if rows and rows[0]["units"] >= 5 and rows[0]["errors"] >= 2 else None

        row = wait_for(billed, 30, "usage of e-onnx")
    assert (row["unit"], row["units"]) == ("input", pytest.approx(5))
    assert row["amount"] == pytest.approx(5 * UNIT_PRICE) and row["errors"] == 2


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_an_imported_onnx_model_is_evaluated_from_the_cli(served: Served, tmp_path: Path) -> None:
    rows = np.random.default_rng(1).normal(size=(30, 4)).round(3).tolist()
    kinds = expected(rows)[0].argmax(axis=1)
    data = tmp_path / "rows"
    data.mkdir()
    lines = ["a,b,c,d,kind"] + [
        ",".join(map(str, r)) + f",{k}" for r, k in zip(rows, kinds, strict=True)
    ]
    (data / "rows.csv").write_text("\n".join(lines) + "\n")
    code, out = _cli(served.url, served.token, "datasets", "push", "rows", str(data))
    assert code == 0, out

    code, out = _cli(served.url, served.token, "evaluate", "clf", "-d", "rows")
    assert code == 1 and "params.target" in out  # refused at submission: no truth column
    args = ("evaluate", "clf", "-d", "rows", "-p", "target=kind", "--wait", "-o", "json")
    code, out = _cli(served.url, served.token, *args)
    assert code == 0, out
    job = json.loads(out[out.index("{") :])
    assert job["state"] == "succeeded" and job["metrics"]["accuracy"] == 1.0, job
