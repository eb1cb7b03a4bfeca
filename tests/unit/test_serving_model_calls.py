"""Where a replica runs its model: quick models on the event loop, slow ones in a thread."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

from gureum.serving.deployment import INLINE_PREDICT_MS, ModelServer


class Model:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.threads: list[int] = []

    def predict(self, inputs: list[Any]) -> list[Any]:
        self.threads.append(threading.get_ident())
        time.sleep(self.seconds)
        return [x * 2 for x in inputs]


def server(model: Model) -> ModelServer:
    """A ModelServer as Ray Serve would hold it, without Ray: only what model calls use."""
    s = ModelServer.__new__(ModelServer)
    s._core = SimpleNamespace(predictor=model)  # type: ignore[assignment]
    s._predict_ms = float("inf")
    return s


def calls(model: Model, n: int) -> list[bool]:
    """For each of ``n`` calls, whether it ran on the event loop's own thread."""

    async def go() -> list[bool]:
        s = server(model)
        loop_thread = threading.get_ident()
        for _ in range(n):
            assert await s._run_model([1, 2]) == [2, 4]
        return [t == loop_thread for t in model.threads]

    return asyncio.run(go())


def test_a_quick_model_runs_on_the_event_loop_once_it_is_timed() -> None:
    assert calls(Model(0.0), 3) == [False, True, True]  # the first call, not yet timed: a thread


def test_a_slow_model_always_runs_in_a_thread() -> None:
    assert calls(Model(INLINE_PREDICT_MS * 2 / 1000), 3) == [False, False, False]
