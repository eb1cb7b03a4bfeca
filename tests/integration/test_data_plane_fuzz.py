"""The data plane fuzzed through its own OpenAPI schema (schemathesis), with a consumer key:
that is where customers cheat.

A real ``ModelServer`` (the class each replica runs, its key table, quota leases, rate limit,
Idempotency-Key replays and usage spool) behind uvicorn, without Ray: a fake control plane
that knows one consumer, and a real ``TextPredictor`` (so predict and the OpenAI routes, and
the recipe's own input checks, are all reached) over a tiny fake language model. Zero server
errors, every answer as documented, nothing served without a key; and afterwards every call
the model computed was spooled as billed usage (no free calls under fuzzing).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.feature_extraction import DictVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from starlette.requests import Request

from gureum.recipes.base import ModelConfig
from gureum.recipes.tabular import TabularPredictor, features
from gureum.recipes.text_generator import TextPredictor
from gureum.serving import deployment
from gureum.serving import replica as replica_module
from gureum.serving.replica import ReplicaCore
from tests.conftest import ThreadedServer, free_port
from tests.integration.schemathesis_run import fuzz
from tests.unit.test_serving_replica import FakeControl, QuietSpool, key, model, spec

# Per endpoint fuzzed (a text generator, a tabular model): about a minute in all.
BUDGET_S = int(os.environ.get("GUREUM_DATA_PLANE_FUZZ_SECONDS", "30"))
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "ignored_auth",
]
TOKEN = "gck_k1_s3cret"
COMPUTED = ("predict", "chat/completions", "completions")


class TinyLM:
    """What ``TextPredictor`` needs of a language model: UTF-8 bytes as tokens, and a few
    pieces of text per generation (as many as ``max_new`` allows), seeded like the real one;
    no chat format of its own, as the built-in byte GPT."""

    chat = None

    def encode(self, text: str) -> bytes:
        return text.encode()

    def stream(self, prompt: str, max_new: int, temperature: float, seed: int) -> Iterator[Any]:
        torch.Generator().manual_seed(seed)  # as the byte GPT does: the seed's range is torch's
        pieces = ["Linen", " and", " wool", "."][:max_new]
        for piece in pieces:
            yield piece, 1
        return "stop" if len(pieces) == 4 else "length"


def tabular() -> TabularPredictor:
    """A real tabular model (the recipe's pipeline, fitted on a few rows): a number column and
    a category column, regression."""
    types = {"x": "number", "color": "category"}
    rows = [{"x": str(i), "color": "rgb"[i % 3]} for i in range(9)]
    pipeline = Pipeline(
        [
            ("vectorize", DictVectorizer(sparse=False)),
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("model", Ridge()),
        ]
    )
    pipeline.fit([features(r, types) for r in rows], np.arange(9.0))
    return TabularPredictor(pipeline, ModelConfig("tabular", {}, {"columns": types}))


PREDICTORS = {"text-generator": lambda: TextPredictor(TinyLM()), "tabular": tabular}  # type: ignore[arg-type]


class Counted:
    """The replica's ASGI app, counting answers that the model computed (200s of a computed
    route, replays excluded): what the usage records must add up to."""

    def __init__(self, server: deployment.ModelServer) -> None:
        self.server = server
        self.computed = 0
        self.replayed = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        route = deployment._route(scope["path"], "shop")

        async def counting(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and route in COMPUTED:
                names = {k.lower() for k, _ in message.get("headers", [])}
                if message["status"] == 200 and b"idempotent-replayed" not in names:
                    self.computed += 1
                elif b"idempotent-replayed" in names:
                    self.replayed += 1
            await send(message)

        response = await self.server(Request(scope, receive))
        await response(scope, receive, counting)


@pytest.fixture(params=sorted(PREDICTORS))
def replica(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Any]]:
    monkeypatch.setattr(replica_module, "UsageSpool", QuietSpool)
    monkeypatch.setattr(replica_module, "REFRESH_S", 3600.0)
    consumer = key("k1", "s3cret", 7, "acme", rate_limit=10_000, quota=1_000_000)
    control = FakeControl([consumer], block=100)
    recipe = request.param
    predictor = PREDICTORS[recipe]()

    def core(spec_: Any, model_: Any, **kw: Any) -> ReplicaCore:
        return ReplicaCore(spec_, model_, predictor=predictor, control=control, **kw)

    monkeypatch.setattr(deployment, "ReplicaCore", core)
    server = deployment.ModelServer(spec(tmp_path / "replica").model_dump())
    served = model(recipe=recipe, label="shop:1").model_dump()
    server.reconfigure({"model": served, "max_batch_size": 1})
    app = Counted(server)
    http = ThreadedServer(app, free_port())
    yield http.url, (server, control, app)
    http.stop()
    server.core.close()


@pytest.mark.slow
def test_data_plane_survives_fuzzing(replica: tuple[str, Any], tmp_path: Path) -> None:
    url, (server, control, app) = replica
    stdout = fuzz(
        f"{url}/v1/endpoints/shop/openapi.json",
        TOKEN,
        tmp_path,
        checks=CHECKS,
        budget_s=BUDGET_S,
        max_examples=40,
    )
    print(stdout[-1500:])  # schemathesis's summary, shown with -s or on a failure

    # No free calls: every answer the model computed is a billed usage record, and only those.
    server.core.spool.flush()
    billed = [r for r in control.records if r["status"] < 400]
    print(f"computed {app.computed}, replayed {app.replayed}, billed {len(billed)}")
    assert app.computed > 0
    assert len(billed) == app.computed
    assert all(r["units"] > 0 and r["consumer_id"] == 7 for r in billed)
