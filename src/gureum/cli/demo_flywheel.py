"""The demo's last chapter, issue 12's loop turning once by itself: the customer's calls were
captured; the customer rates the pictures and corrects a label; a retrain pipeline curates them
into the next dataset version, retrains, evaluates the candidate against production on the
same held-out pictures, canaries it while the customer keeps calling, and promotes it or says
why not."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

from rich.table import Table

from gureum.cli.output import Format, console
from gureum.client import Client
from gureum.client.errors import ConflictError, GureumError
from gureum.client.serving import EndpointClient, PredictResult, RateLimited
from gureum.schemas.pipelines import ACTIVE_RUN_STATES, RunOut, StepName

T = TypeVar("T")
# What the demo's customer thinks of each call's pictures, in call order (1-5).
RATINGS = (5, 4, 2, 5)
# The customer finds the second call's pictures look more like this class: a corrected label.
CORRECTED = (1, "skirt")
# Replicas store captured calls and ship feedback about every second.
SHIPPED_TIMEOUT_S = 60.0
PIPELINE = "garments-loop"
# Half the calls go to the candidate for a short window; four of its answers are enough to
# judge (a real team would ask for hundreds over hours).
CANARY_PERCENT = 50.0
CANARY_MINUTES = 0.5
MIN_CANARY_REQUESTS = 4
# The retrain has more time than the first training had (a nightly job, say): twice the epochs.
RETRAIN_PARAMS: dict[str, Any] = {"epochs": 80}
QUICK_RETRAIN_PARAMS: dict[str, Any] = {"epochs": 2}
RUN_TIMEOUT_S = 20 * 60.0
# The customer keeps calling while the canary is judged, one picture a call, this often.
CALL_EVERY_S = 1.0
MAX_CANARY_CALLS = 120
POLL_S = 1.0


def patiently(call: Callable[[], T]) -> T:
    """One data-plane call; over the plan's rate limit, wait as told and send it again."""
    for _ in range(3):
        try:
            return call()
        except RateLimited as exc:
            if exc.code != "rate_limited":
                raise
            time.sleep(exc.retry_after or 1.0)
    return call()


def predict(endpoint: EndpointClient, inputs: list[Any]) -> PredictResult:
    return patiently(lambda: endpoint.predict(inputs))


def rate(
    client: Client,
    url: str,
    token: str,
    endpoint: str,
    calls: list[dict[str, Any]],
    captured_before: int,
    classes: list[str],
) -> list[dict[str, Any]]:
    """The customer rates each call and corrects one label; returns once the control plane
    holds this run's captured calls and ratings."""
    rated_before = client.endpoints.feedback(endpoint).count
    rated = []
    with EndpointClient(url, token) as consumer:
        for i, (call, rating) in enumerate(zip(calls, RATINGS * len(calls), strict=False)):
            label = CORRECTED[1] if i == CORRECTED[0] and CORRECTED[1] in classes else None
            rid = call["request_id"]
            patiently(
                functools.partial(
                    consumer.feedback, rid, rating=rating, label=label, note="demo customer"
                )
            )
            rated.append(
                {"request_id": rid, "class": call["class"], "rating": rating, "label": label}
            )
    _wait_shipped(client, endpoint, captured_before + len(calls), rated_before + len(calls))
    return rated


def _wait_shipped(client: Client, endpoint: str, captured: int, rated: int) -> None:
    deadline = time.monotonic() + SHIPPED_TIMEOUT_S
    while time.monotonic() < deadline:
        if (
            client.endpoints.capture(endpoint).captured >= captured
            and client.endpoints.feedback(endpoint).count >= rated
        ):
            return
        time.sleep(0.5)
    raise GureumError(
        f"the endpoint's captured calls and ratings did not reach the control plane within "
        f"{SHIPPED_TIMEOUT_S:.0f} s",
        code="capture",
    )


def ensure_pipeline(client: Client, model: str, endpoint: str, dataset: str, quick: bool) -> None:
    """The demo's pipeline (made by the first run of the demo; later runs use it again)."""
    with contextlib.suppress(ConflictError):
        client.pipelines.create(
            PIPELINE,
            model=model,
            endpoint=endpoint,
            dataset=dataset,
            canary_percent=CANARY_PERCENT,
            canary_minutes=CANARY_MINUTES / 2 if quick else CANARY_MINUTES,
            min_requests=MIN_CANARY_REQUESTS,
            params=QUICK_RETRAIN_PARAMS if quick else RETRAIN_PARAMS,
        )


def turn_the_loop(
    client: Client,
    url: str,
    token: str,
    endpoint: str,
    model: str,
    dataset: str,
    output: Format,
    quick: bool,
) -> dict[str, Any]:
    """Start a run of the pipeline and follow it to its decision; while its canary is out, the
    customer keeps calling (each call metered, as any)."""
    ensure_pipeline(client, model, endpoint, dataset, quick)
    run = client.pipelines.run(PIPELINE)
    if output is Format.table:
        console.print(f"pipeline {PIPELINE}, run {run.number}: {run.trigger}")
    shown: set[str] = set()
    canary_calls = 0
    deadline = time.monotonic() + RUN_TIMEOUT_S
    with EndpointClient(url, token) as customer:
        while run.state in ACTIVE_RUN_STATES:
            if time.monotonic() > deadline:
                raise GureumError(
                    f"run {run.number} of {PIPELINE} did not finish in {RUN_TIMEOUT_S:.0f} s "
                    f"(at {run.step}); follow it with `gureum pipelines show {PIPELINE}`",
                    code="timeout",
                )
            _show_steps(run, shown, output)
            if run.step == StepName.canary and canary_calls < MAX_CANARY_CALLS:
                predict(customer, [{"class": "dress", "seed": 100 + canary_calls, "count": 1}])
                canary_calls += 1
                time.sleep(CALL_EVERY_S)
            else:
                time.sleep(POLL_S)
            run = client.pipelines.get_run(PIPELINE, run.number)
    _show_steps(run, shown, output)
    if output is Format.table:
        _show_decision(run, canary_calls)
    return {
        "pipeline": PIPELINE,
        "run": run.number,
        "state": run.state.value,
        "reason": run.reason,
        "curated": run.dataset_version,
        "candidate": run.candidate,
        "production": run.production,
        "metrics": run.metrics,
        "steps": [
            s.model_dump(mode="json", include={"name", "state", "message"}) for s in run.steps
        ],
        "canary_calls": canary_calls,
    }


def _show_steps(run: RunOut, shown: set[str], output: Format) -> None:
    if output is not Format.table:
        return
    for step in run.steps:
        if step.state in ("succeeded", "failed", "skipped") and step.name not in shown:
            shown.add(step.name)
            took = (
                f" ({(step.finished_at - step.started_at).total_seconds():.0f} s)"
                if step.started_at and step.finished_at
                else ""
            )
            console.print(f"  {step.name}: {step.state}{took} - {step.message}", highlight=False)


def _show_decision(run: RunOut, canary_calls: int) -> None:
    if run.metrics:
        table = Table("metric", f"candidate {run.candidate}", f"production {run.production}")
        cand, prod = run.metrics.get("candidate", {}), run.metrics.get("production", {})
        for name in sorted(set(cand) & set(prod)):
            if isinstance(cand[name], int | float) and isinstance(prod[name], int | float):
                table.add_row(name, f"{cand[name]:.4g}", f"{prod[name]:.4g}")
        console.print(table)
    if canary_calls:
        console.print(f"the customer called {canary_calls} more times while the canary was out")
    verdict = {"promoted": "PROMOTED", "not_promoted": "NOT PROMOTED"}.get(
        run.state.value, run.state.value.upper()
    )
    console.print(f"[bold]{verdict}[/bold]: {run.reason}", soft_wrap=True)
