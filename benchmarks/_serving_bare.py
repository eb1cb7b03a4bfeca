"""The baselines of ``bench_serving``: what a user would write without gureum around the same
predictor. A plain Ray Serve deployment (deployed on the benchmark's cluster under a route of its
own) and a plain FastAPI app (its own uvicorn process).

Kept apart from ``_serving_util`` and light on imports: Ray Serve replicas import this module, so
whatever it imports is part of the bare replica's cold start.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from gureum.recipes.base import Predictor
from gureum.recipes.registry import get_recipe

MODEL_DIR_ENV = "GUREUM_BENCH_MODEL_DIR"
RECIPE_ENV = "GUREUM_BENCH_RECIPE"


def load(model_dir: str, recipe: str, threads: int = 1) -> Predictor:
    """The recipe's own loader, with the thread count a gureum replica of that size uses."""
    torch.set_num_threads(max(1, threads))
    return get_recipe(recipe).load(Path(model_dir))


def _answer(predictor: Predictor, body: bytes) -> Response:
    inputs: list[Any] = json.loads(body)["inputs"]
    outputs = predictor.predict(inputs)
    return Response(json.dumps({"outputs": outputs}), media_type="application/json")


class BareModel:
    """A plain ``@serve.deployment`` body: load in ``__init__``, predict in ``__call__`` (HTTP)
    or ``predict`` (a deployment handle).

    Both say how long ``__init__`` took (the cold start's share spent loading the model):
    ``x-bare-init-ms`` on HTTP answers, ``init_ms`` in a handle's result."""

    def __init__(self, model_dir: str, recipe: str, threads: int = 1) -> None:
        started = time.perf_counter()
        self.predictor = load(model_dir, recipe, threads)
        self.init_ms = (time.perf_counter() - started) * 1000

    async def __call__(self, request: Request) -> Response:
        response = _answer(self.predictor, await request.body())
        response.headers["x-bare-init-ms"] = f"{self.init_ms:.0f}"
        return response

    async def predict(self, inputs: list[Any]) -> dict[str, Any]:
        return {"outputs": self.predictor.predict(inputs), "init_ms": self.init_ms}


class BareBatched:
    """The same with Ray Serve's ``@serve.batch`` as its docs show it: what batching costs in
    Ray Serve itself, without our path (``max_batch_size`` is set with ``configure``)."""

    def __init__(self, model_dir: str, recipe: str, threads: int, batch: int, wait_s: float):
        self.predictor = load(model_dir, recipe, threads)
        self.predict_batch.set_max_batch_size(batch)  # type: ignore[attr-defined]
        self.predict_batch.set_batch_wait_timeout_s(wait_s)  # type: ignore[attr-defined]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def predict_batch(self, items: list[list[Any]]) -> list[list[Any]]:
        flat = [x for item in items for x in item]
        outputs = await asyncio.to_thread(self.predictor.predict, flat)
        out, pos = [], 0
        for item in items:
            out.append(outputs[pos : pos + len(item)])
            pos += len(item)
        return out

    async def __call__(self, request: Request) -> Response:
        inputs = json.loads(await request.body())["inputs"]
        outputs = await self.predict_batch(inputs)
        return Response(json.dumps({"outputs": outputs}), media_type="application/json")


def plain_app() -> FastAPI:
    """``uvicorn --factory benchmarks._serving_bare:plain_app``: the predictor in-process,
    model and recipe from the environment."""
    predictor = load(os.environ[MODEL_DIR_ENV], os.environ[RECIPE_ENV], 1)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        return _answer(predictor, await request.body())

    return app
