"""Each built-in recipe serves through the platform with its defaults (issue 10): the version a
platform train job produced (with the same small jobs as test_recipes_defaults) is deployed
over REST (``POST /v1/endpoints``, as ``gureum deploy`` does) on the session's Ray Serve
(HAProxy mode) with the default endpoint configuration except small resources, and called
through the data plane as a consumer would, checking each answer's shape, its billed units and
the usage records they become."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from gureum import samples
from gureum.client import Client
from gureum.server.services.bootstrap import bootstrap
from tests.integration.test_recipes_defaults import RECIPES
from tests.integration.test_serving_ray import live_on_ray, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]  # the first test trains and deploys

SMALL = {"resources": {"cpus": 0.25}}  # everything else: the endpoint defaults
UNIT_PRICE = 0.001  # the consumer's plan: what one billed unit costs


@dataclass
class Served:
    """A live control plane on the session's Ray cluster with one endpoint per recipe."""

    url: str
    token: str
    consumer_key: str  # a paying customer's key
    team_key: str  # a workspace key created with data_plane: true
    datasets: dict[str, Path]
    urls: dict[str, str] = field(default_factory=dict)

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"authorization": f"Bearer {self.token}"}, timeout=30
        )

    def call(self, recipe: str, inputs: list[Any], key: str | None = None) -> httpx.Response:
        return httpx.post(
            f"{self.urls[recipe]}/predict",
            json={"inputs": inputs},
            headers={"authorization": f"Bearer {key or self.consumer_key}"},
            timeout=120,
        )

    def usage(self, recipe: str) -> list[dict[str, Any]]:
        with self.api() as api:
            r = api.get("/v1/usage", params={"endpoint": f"e-{recipe}", "group_by": "consumer"})
            assert r.status_code == 200, r.text
            rows: list[dict[str, Any]] = r.json()["rows"]
            return rows


def _train_all(client: Client, root: Path) -> dict[str, Path]:
    """Train every recipe as a platform job; the datasets' folders by recipe."""
    folders = {}
    jobs = {}
    for recipe, (sample, count, params) in RECIPES.items():
        folder = root / f"s-{sample}"
        if not folder.exists():  # two recipes may train on one sample
            samples.write(sample, folder, count=count)
            client.datasets.push(folder.name, folder)
        folders[recipe] = folder
        jobs[recipe] = client.jobs.train(recipe, folder.name, model=f"m-{recipe}", params=params)
    for recipe, job in jobs.items():
        done = client.jobs.wait(job.id, poll_s=0.5, timeout_s=300)
        events = [f"{e.kind}: {e.message}" for e in client.jobs.events(job.id)]
        assert done.state == "succeeded", (recipe, done.error, events)
        assert done.model_version == f"m-{recipe}:1"
    return folders


def _wait_ready(s: Served, name: str) -> dict[str, Any]:
    with s.api() as api:

        def ready() -> dict[str, Any] | None:
            ep: dict[str, Any] = api.get(f"/v1/endpoints/{name}").json()
            assert ep["state"] != "failed", (name, ep["message"])
            return ep if ep["state"] == "ready" and ep["replicas"]["primary"] else None

        result: dict[str, Any] = wait_for(ready, 240, f"endpoint {name} ready")
        return result


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, ray_cluster: str) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("recipes-serve")
    with live_on_ray(root, ray_cluster) as live:
        settings = live.settings
        token = bootstrap(live.app.state.db)
        assert token is not None
        url = f"http://127.0.0.1:{settings.port}"
        client = Client(url, token)
        datasets = _train_all(client, root)
        team_key = client.keys.create("team", data_plane=True).token
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}) as api:
            r = api.post("/v1/consumers", json={"name": "acme", "price_per_unit": UNIT_PRICE})
            assert r.status_code == 201, r.text
            s = Served(url, token, r.json()["token"], team_key, datasets)
            for recipe in RECIPES:  # all replicas start at once
                body = {"name": f"e-{recipe}", "model": f"m-{recipe}", "config": SMALL}
                r = api.post("/v1/endpoints", json=body)
                assert r.status_code == 201, r.text
        for recipe in RECIPES:
            s.urls[recipe] = _wait_ready(s, f"e-{recipe}")["url"]
        yield s


def _billed(s: Served, recipe: str, units: float, unit: str) -> None:
    """The consumer's calls became usage records with these units, charged at the plan's
    price per unit."""

    def shipped() -> dict[str, Any] | None:
        rows = [r for r in s.usage(recipe) if r["consumer"] == "acme"]
        return rows[0] if rows and rows[0]["units"] >= units else None

    row = wait_for(shipped, 30, f"usage of e-{recipe}")
    assert row["unit"] == unit and row["units"] == pytest.approx(units)
    assert row["errors"] == 0 and row["amount"] == pytest.approx(units * UNIT_PRICE)


def _png(text: str) -> Image.Image:
    raw = base64.b64decode(text)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(raw))
    img.load()
    return img


def test_image_generator_serves_png_images_billed_per_image(served: Served) -> None:
    r = served.call(
        "image-generator", [{"class": "dress", "count": 2, "seed": 1}, {"class": "skirt"}]
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "m-image-generator:1" and r.headers["x-gureum-model"] == body["model"]
    first, second = body["outputs"]
    assert (first["class"], first["format"], len(first["images"])) == ("dress", "png", 2)
    assert len(second["images"]) == 1
    sizes = {_png(t).size for o in body["outputs"] for t in o["images"]}
    assert len(sizes) == 1 and min(next(iter(sizes))) >= 8
    assert (body["units"], body["unit"]) == (3, "image")
    _billed(served, "image-generator", 3, "image")


def test_image_diffusion_serves_guided_pngs_per_image_and_refuses_bad_requests(
    served: Served,
) -> None:
    """Issue 15: PNGs billed per image; steps/guidance/size out of range is a 422 naming the
    limits; a generation past its time budget is a 504 and not billed."""
    first = {"class": "dress", "count": 2, "seed": 1, "steps": 3, "guidance": 3.0}
    inputs = [first, {"class": "skirt", "steps": 3, "sampler": "ddim"}]
    r = served.call("image-diffusion", inputs)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "m-image-diffusion:1"
    one, two = body["outputs"]
    assert (one["class"], one["format"], one["steps"], len(one["images"])) == ("dress", "png", 3, 2)
    assert (one["sampler"], two["sampler"], len(two["images"])) == ("dpm-solver", "ddim", 1)
    assert {_png(t).size for o in body["outputs"] for t in o["images"]} == {(16, 16)}
    assert (body["units"], body["unit"]) == (3, "image")
    again = served.call("image-diffusion", [first]).json()["outputs"][0]
    assert again["images"] == one["images"]  # a seed repeats its pictures

    for bad, limit in (
        ({"class": "dress", "steps": 500}, '"steps" must be an integer from 1 to 100'),
        ({"class": "dress", "guidance": 11}, '"guidance" must be a number from 0 to 10'),
        ({"class": "dress", "size": 64}, '"size" must be 16'),
    ):
        r = served.call("image-diffusion", [bad])
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "bad_input" and limit in error["message"]
    slow = {"class": "dress", "steps": 100, "count": 64, "time_budget_s": 0.001}
    r = served.call("image-diffusion", [slow])
    assert r.status_code == 504, r.text
    error = r.json()["error"]
    assert error["code"] == "generation_timeout" and "not billed" in error["message"]

    def shipped() -> dict[str, Any] | None:
        rows = [r for r in served.usage("image-diffusion") if r["consumer"] == "acme"]
        return rows[0] if rows and rows[0]["requests"] >= 6 else None

    row = wait_for(shipped, 30, "usage of e-image-diffusion")
    assert (row["requests"], row["errors"], row["unit"]) == (6, 4, "image")
    # 3 + 2 images; the three refusals and the stopped generation cost nothing.
    assert row["units"] == 5 and row["amount"] == pytest.approx(5 * UNIT_PRICE)


def test_image_classifier_serves_labels_with_probabilities(served: Served) -> None:
    pictures = sorted(served.datasets["image-classifier"].rglob("*.png"))[:3]
    assert len(pictures) == 3
    inputs = [
        {"image": base64.b64encode(pictures[0].read_bytes()).decode()},
        base64.b64encode(pictures[1].read_bytes()).decode(),
        {"image": base64.b64encode(pictures[2].read_bytes()).decode()},
    ]
    r = served.call("image-classifier", inputs)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["outputs"]) == 3 and (body["units"], body["unit"]) == (3, "image")
    for out in body["outputs"]:
        scores = out["scores"]
        assert out["label"] in scores and set(scores) >= {"0", "1"}
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-4)
        assert all(0.0 <= p <= 1.0 for p in scores.values())
        assert out["confidence"] == pytest.approx(max(scores.values()))
    _billed(served, "image-classifier", 3, "image")


def test_tabular_serves_rows(served: Served) -> None:
    rows = [
        {"price": 30, "garment": "dress", "size": "M", "usual_size": "M", "fabric": "cotton"},
        {"price": 120, "garment": "jacket", "size": "L", "usual_size": "M", "fabric": "wool"},
    ]
    r = served.call("tabular", rows)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["units"], body["unit"]) == (2, "row") and len(body["outputs"]) == 2
    for out in body["outputs"]:
        assert out["prediction"] in ("yes", "no")
        assert set(out["probabilities"]) == {"yes", "no"}
        assert sum(out["probabilities"].values()) == pytest.approx(1.0)
    _billed(served, "tabular", 2, "row")


def test_text_generator_serves_text_and_openai_chat_completions(served: Served) -> None:
    r = served.call("text-generator", ["The linen", {"prompt": "A dress", "max_tokens": 5}])
    assert r.status_code == 200, r.text
    body = r.json()
    first, second = body["outputs"]
    assert first["prompt"] == "The linen" and isinstance(first["text"], str)
    assert (
        second["finish_reason"] in ("length", "stop") and second["usage"]["completion_tokens"] <= 5
    )
    tokens = sum(
        o["usage"]["prompt_tokens"] + o["usage"]["completion_tokens"] for o in body["outputs"]
    )
    assert body["unit"] == "token" and body["units"] == tokens > 0

    # The official client, with the endpoint URL as its base URL.
    client = openai.OpenAI(base_url=served.urls["text-generator"], api_key=served.consumer_key)
    assert [m.id for m in client.models.list()] == ["m-text-generator:1"]
    reply = client.chat.completions.create(
        model="m-text-generator",
        messages=[{"role": "user", "content": "Name a fabric."}],
        max_tokens=6,
        seed=3,
    )
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 6
    tokens += reply.usage.total_tokens
    # Streamed (server-sent events through HAProxy), with the usage chunk at the end.
    chunks = list(
        client.chat.completions.create(
            model="m-text-generator",
            messages=[{"role": "user", "content": "A skirt"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason in ("length", "stop")
    streamed = chunks[-1].usage
    assert streamed is not None and 0 < streamed.completion_tokens <= 4
    tokens += streamed.total_tokens
    legacy = client.completions.create(model="m", prompt="Wool is", max_tokens=3)
    assert legacy.object == "text_completion" and isinstance(legacy.choices[0].text, str)
    assert legacy.usage is not None
    tokens += legacy.usage.total_tokens
    _billed(served, "text-generator", tokens, "token")

    # The team's own calls with a data-plane workspace key: answered, metered apart, free.
    team = openai.OpenAI(base_url=served.urls["text-generator"], api_key=served.team_key)
    assert team.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    ).choices

    def team_row() -> dict[str, Any] | None:
        rows = served.usage("text-generator")
        return next((r for r in rows if (r["consumer"] or "").startswith("member:")), None)

    row = wait_for(team_row, 30, "the team's usage")
    assert row["requests"] == 1 and row["units"] > 0 and row["amount"] == 0
