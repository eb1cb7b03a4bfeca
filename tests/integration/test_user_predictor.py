"""A script job's own predictor through the front door, on the session's Ray cluster: the SDK
submits a script job whose code folder holds ``predictor.py``; the job trains (writes a model
file) and registers a version of recipe ``predictor`` with its code and exported schemas; REST
deploys it; a consumer calls ``/predict`` and is billed in the predictor's own unit as its
counter counted; a request that makes the predictor raise gets a 500 with a request id, is not
billed, and the replica answers the next request. A batch prediction job runs it too."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from gureum.cli.main import app as cli_app
from gureum.client import Client
from gureum.client.errors import GureumError
from gureum.client.serving import signed_request_id
from gureum.compute import sandbox
from gureum.server.services.bootstrap import bootstrap
from gureum.storage.store import ArtifactStore
from tests.integration.test_serving_ray import live_on_ray, wait_for

pytestmark = [
    pytest.mark.ray,
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        sandbox.probe(sandbox.bwrap_path()) is not None, reason="needs a working bubblewrap"
    ),
]
UNIT_PRICE = 0.01

TRAIN = """
import gureum.run as run

words = sorted({w for w in "good great fine nice".split()})
(run.model_dir() / "words.txt").write_text("\\n".join(words))
run.register_model(metrics={"words": float(len(words))})
"""

PREDICTOR = """
from pydantic import BaseModel, Field
from gureum.serve import Predictor


class Review(BaseModel):
    text: str = Field(min_length=1)


class Sentiment(BaseModel):
    label: str
    hits: int


class WordCounter(Predictor):
    Input, Output = Review, Sentiment
    unit = "word"

    def load(self, model_dir):
        self.words = set((model_dir / "words.txt").read_text().split())

    def predict(self, input):
        if input.text == "explode":
            raise ValueError("a secret-bearing error text")
        hits = sum(w in self.words for w in input.text.split())
        return Sentiment(label="positive" if hits else "negative", hits=hits)

    def units(self, input, output):
        return float(len(input.text.split()))
"""


@dataclass
class Served:
    url: str
    token: str
    consumer_key: str
    client: Client
    endpoint_url: str
    store: ArtifactStore

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"authorization": f"Bearer {self.token}"}, timeout=30
        )

    def call(self, inputs: list[Any]) -> httpx.Response:
        return httpx.post(
            f"{self.endpoint_url}/predict",
            json={"inputs": inputs},
            headers={"authorization": f"Bearer {self.consumer_key}"},
            timeout=120,
        )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, ray_cluster: str) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("user-predictor")
    with live_on_ray(root, ray_cluster) as live:
        settings = live.settings
        token = bootstrap(live.app.state.db)
        assert token is not None
        url = f"http://127.0.0.1:{settings.port}"
        client = Client(url, token)
        code = root / "code"
        code.mkdir()
        (code / "main.py").write_text(TRAIN)
        (code / "predictor.py").write_text(PREDICTOR)
        job = client.jobs.train("script", None, model="reviews", code_dir=code)
        done = client.jobs.wait(job.id, poll_s=0.5, timeout_s=300)
        logs, _ = client.jobs.logs(job.id)
        assert done.state == "succeeded", (done.error, logs)
        assert done.model_version == "reviews:1", logs
        assert "predictor: registered WordCounter (unit 'word')" in logs
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}) as api:
            r = api.post("/v1/consumers", json={"name": "acme", "price_per_unit": UNIT_PRICE})
            assert r.status_code == 201, r.text
            consumer_key = r.json()["token"]
            body = {"name": "reviews", "model": "reviews", "config": {"resources": {"cpus": 1}}}
            r = api.post("/v1/endpoints", json=body)
            assert r.status_code == 201, r.text

            def ready() -> dict[str, Any] | None:
                ep: dict[str, Any] = api.get("/v1/endpoints/reviews").json()
                assert ep["state"] != "failed", ep["message"]
                return ep if ep["state"] == "ready" and ep["replicas"]["primary"] else None

            ep = wait_for(ready, 240, "endpoint reviews ready")
        store = ArtifactStore(settings.resolved_artifacts)
        yield Served(url, token, consumer_key, client, ep["url"], store)


def test_the_version_is_a_predictor_with_its_code_and_exported_schemas(served: Served) -> None:
    v = served.client.models.version("reviews", 1)
    files = {f.path: f.sha256 for f in served.client.models.files("reviews", 1)}
    assert v.recipe == "predictor" and (v.code_hash or "").startswith("sha256:")
    assert {"words.txt", "predictor.json", "code/predictor.py", "code/main.py"} <= set(files)
    with served.store.open_blob(1, files["predictor.json"]) as fh:
        manifest = json.loads(fh.read())
    assert manifest["class_name"] == "WordCounter" and manifest["unit"] == "word"
    assert manifest["input_schema"]["properties"]["text"]["minLength"] == 1


def test_a_consumer_is_served_and_billed_in_the_predictors_own_units(served: Served) -> None:
    r = served.call([{"text": "good food"}, {"text": "cold soup served late"}])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["outputs"] == [
        {"label": "positive", "hits": 1},
        {"label": "negative", "hits": 0},
    ]
    assert (body["units"], body["unit"]) == (6.0, "word")

    bad = served.call([{"text": ""}])  # outside the exported schema: refused in the replica
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "bad_input"
    fault = served.call([{"text": "explode"}])
    assert fault.status_code == 500, fault.text
    err = fault.json()["error"]
    # The id to quote is the answer's own (signed for this caller), also its X-Request-Id.
    rid = err["details"]["request_id"]
    assert err["code"] == "model_error" and rid in err["message"]
    assert signed_request_id(fault.headers["x-request-id"]) == rid
    assert "secret-bearing" not in fault.text
    again = served.call([{"text": "nice"}])  # the replica and its worker pool are still up
    assert again.status_code == 200 and again.json()["units"] == 1.0

    def billed() -> dict[str, Any] | None:
        with served.api() as api:
            r = api.get("/v1/usage", params={"endpoint": "reviews", "group_by": "consumer"})
            rows = [x for x in r.json()["rows"] if x["consumer"] == "acme"]
        return rows[0] if rows and rows[0]["requests"] >= 4 else None

    row = wait_for(billed, 60, "usage of reviews")
    assert (row["unit"], row["units"], row["requests"], row["errors"]) == ("word", 7.0, 4, 2)
    assert row["amount"] == pytest.approx(7 * UNIT_PRICE)  # the failed calls cost nothing


def batch_predict(
    served: Served, model: str, inputs: list[Any], tmp_path: Path
) -> list[dict[str, Any]]:
    """A batch prediction job's rows of predictions.jsonl, once it succeeded."""
    job = served.client.jobs.predict(model, params={"inputs": inputs})
    done = served.client.jobs.wait(job.id, poll_s=0.5, timeout_s=240)
    assert done.state == "succeeded", done.error
    served.client.jobs.download_output(job.id, "predictions.jsonl", tmp_path)
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def test_a_batch_prediction_job_runs_the_predictor_in_its_sandbox(
    served: Served, tmp_path: Path
) -> None:
    rows = batch_predict(served, "reviews:1", [{"text": "great view"}, {"text": "rain"}], tmp_path)
    assert rows == [
        {"input": "inputs[0]", "output": {"label": "positive", "hits": 1}},
        {"input": "inputs[1]", "output": {"label": "negative", "hits": 0}},
    ]

    bad = served.client.jobs.predict("reviews:1", params={"inputs": [{"text": 3}]})
    failed = served.client.jobs.wait(bad.id, poll_s=0.5, timeout_s=240)
    assert failed.state == "failed" and "inputs[0]['text']" in (failed.error or "")


def test_an_evaluate_job_scores_the_predictor_on_the_validation_rows(
    served: Served, tmp_path: Path
) -> None:
    folder = tmp_path / "reviews-data"
    folder.mkdir()
    good = ["good food", "great view", "nice staff", "fine wine", "a good day"]
    bad = ["rain", "cold soup", "late bus", "noise", "a long wait"]
    rows = [f"{t},positive" for t in good] + [f"{t},negative" for t in bad]
    (folder / "reviews.csv").write_text("\n".join(["text,label", *rows, *rows]) + "\n")
    served.client.datasets.push("reviews-data", folder, validation_ratio=0.5)

    job = served.client.jobs.evaluate("reviews:1", "reviews-data", params={"target": "label"})
    done = served.client.jobs.wait(job.id, poll_s=0.5, timeout_s=240)
    logs, _ = served.client.jobs.logs(job.id)
    assert done.state == "succeeded", (done.error, logs)
    assert done.metrics["accuracy"] == 1.0, done.metrics
    served.client.jobs.download_output(job.id, "evaluation.json", tmp_path)
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["task"] == "classification" and report["classes"] == ["negative", "positive"]
    assert 0 < report["samples"] < 20  # the validation rows only

    with pytest.raises(GureumError) as refused:  # no truth column named: refused at once
        served.client.jobs.evaluate("reviews:1", "reviews-data")
    assert refused.value.status == 422 and "params.target" in str(refused.value)


def test_weights_and_a_predictor_folder_are_imported_from_the_cli(
    served: Served, tmp_path: Path
) -> None:
    code = tmp_path / "serve"
    code.mkdir()
    (code / "predictor.py").write_text(PREDICTOR)  # reads words.txt from its model folder
    weights = tmp_path / "words.txt"
    weights.write_text("calm\nquiet\n")
    env = {"GUREUM_URL": served.url, "GUREUM_API_KEY": served.token, "COLUMNS": "200"}

    def gureum(*args: str) -> Result:
        return CliRunner().invoke(cli_app, list(args), env=env)

    r = gureum("models", "import", "calm", str(weights), "--predictor", str(code), "-o", "json")
    assert r.exit_code == 0, r.output
    version = json.loads(r.stdout)
    assert (version["model"], version["version"], version["recipe"]) == ("calm", 1, "predictor")

    rows = batch_predict(served, "calm:1", [{"text": "a calm day"}, {"text": "rain"}], tmp_path)
    assert [r["output"]["label"] for r in rows] == ["positive", "negative"]

    r = gureum("models", "import", "none", str(weights), "--predictor", str(tmp_path / "serve2"))
    assert r.exit_code == 1 and "has no predictor.py" in r.output
