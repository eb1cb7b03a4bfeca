"""Issue 11's newcomer, only through the CLI and the official ``openai`` client against a
server on Ray: import a small ONNX model and a small local Hugging Face text model, find both
in the catalog, deploy both (each validated in its first replica before it takes traffic),
call the ONNX one with ``gureum predict`` and the text one with the ``openai`` client as a
consumer; a deploy whose smoke test fails keeps the old version serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from gureum.server.services.bootstrap import bootstrap
from tests.e2e.cli_runner import run, run_json
from tests.integration.test_serving_ray import live_on_ray
from tests.unit.test_hf_model import build_tiny_llama
from tests.unit.test_onnx_model import classifier

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, ray_cluster: str) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("newcomer")
    with live_on_ray(root, ray_cluster) as live:
        settings = live.settings
        token = bootstrap(live.app.state.db)
        assert token is not None
        yield {
            "GUREUM_URL": f"http://127.0.0.1:{settings.port}",
            "GUREUM_API_KEY": token,
            "GUREUM_HOME": str(root / "cli-home"),
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }


def test_a_newcomer_imports_deploys_and_calls_onnx_and_hugging_face_models(
    cli: dict[str, str], tmp_path: Path
) -> None:
    onnx_file = classifier(tmp_path / "clf" / "model.onnx")
    llama = build_tiny_llama(tmp_path / "llama")
    assert run_json(cli, "models", "import", "clf", str(onnx_file))["recipe"] == "onnx"
    imported = run_json(cli, "models", "import", "chatty", str(llama))
    assert imported["recipe"] == "hf-text-generation"
    catalog = json.dumps(run_json(cli, "models", "list", "--catalog"))
    assert "clf" in catalog and "chatty" in catalog

    for model, endpoint in (("clf", "scores"), ("chatty", "chat")):
        deployed = run(cli, "deploy", model, "--endpoint", endpoint, "--cpus", "0.25", "--wait")
        assert deployed.exit_code == 0, deployed.output
    consumer = run_json(cli, "consumers", "create", "newcomer")
    key = consumer["token"]

    answer = run_json(cli, "predict", "scores", "--key", key, "-i", "[[1, 2, 3, 4]]")
    assert answer["unit"] == "input" and answer["units"] == 1
    assert set(answer["outputs"][0]) == {"logits", "probabilities", "label"}

    chat = run_json(cli, "endpoints", "show", "chat")
    client = openai.OpenAI(base_url=chat["url"], api_key=key)
    reply = client.chat.completions.create(
        model="chatty",
        messages=[{"role": "user", "content": "Say something."}],
        max_tokens=4,
        temperature=0,
    )
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 4

    # A version whose smoke test fails (samples of the wrong shape) never takes traffic.
    run_json(cli, "models", "import", "clf", str(onnx_file))  # clf:2, the same file
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([[1, 2, 3]]))
    refused = run(
        cli, "deploy", "clf:2", "--endpoint", "scores", "--sample-inputs", str(bad), "--wait"
    )
    assert refused.exit_code == 1, refused.output
    assert "failed validation" in refused.output
    again = run_json(cli, "predict", "scores", "--key", key, "-i", "[[1, 2, 3, 4]]")
    assert again["model"] == "clf:1"
