"""The retrain loop on a real Ray cluster, as a team reaches it (issue 12, item 4), on SQLite and
PostgreSQL: a tabular model trained by a job serves captured traffic; a pipeline curates the
calls, retrains with the last good configuration, evaluates both versions on the same held-out
rows, gates, waits for a person, canaries and promotes, with the control plane restarted in
every step; a worse candidate and a failed training leave production as it was."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gureum import samples
from gureum.config import Settings
from gureum.server.services.bootstrap import bootstrap
from tests.conftest import free_port
from tests.integration.test_serving_ray import (
    SMALL,
    Cloud,
    Live,
    clear_apps,
    consumer,
    predict,
    wait_for,
    wait_ready,
)

pytestmark = pytest.mark.ray

ENDPOINT = "t-loop"
# A weak production model (three boosting rounds) that a retrain with more rounds can beat.
WEAK = {"target": "returned", "max_iter": 3, "learning_rate": 0.05}
ROWS = [
    {"price": 20 + 7 * i, "garment": g, "size": "M", "usual_size": s, "fabric": "cotton"}
    for i, (g, s) in enumerate([("dress", "M"), ("coat", "L"), ("shirt", "S"), ("hat", "M")] * 3)
]


@pytest.fixture(scope="module")
def data_port() -> int:
    """The data plane's port for this module's control planes (a restart keeps it)."""
    return free_port()


@pytest.fixture
def cloud(tmp_path: Path, ray_cluster: str, data_port: int, database_url: str) -> Iterator[Cloud]:
    """A control plane on the session's cluster, on SQLite and on PostgreSQL."""
    home = tmp_path / "home"
    settings = Settings(
        home=home,
        database_url=database_url,
        artifacts=str(home / "artifacts"),
        ray_address=ray_cluster,
        port=free_port(),
        serve_port=data_port,
    )
    clear_apps(ray_cluster)
    live = Live(settings)
    token = bootstrap(live.app.state.db)
    assert token is not None
    c = Cloud(settings, token, live, tmp_path)
    try:
        yield c
    finally:
        c.live.stop()  # the server the test left running (a restart replaces it)
        clear_apps(ray_cluster)


def train(c: Cloud, tmp: Path) -> str:
    """The production version: a train job on the cluster, deployed with every call captured."""
    client = c.client()
    samples.write("tabular", tmp / "orders", count=300)
    client.datasets.push("orders", tmp / "orders")
    job = client.jobs.train(
        "tabular", "orders", model="returns", params=WEAK, resources={"cpus": 0.5}
    )
    done = client.jobs.wait(job.id, timeout_s=240)
    assert done.state == "succeeded", done.error
    with c.api() as api:
        # Latency under a loaded CI machine is not what these tests judge: a generous bound.
        config = {**SMALL, "canary_limits": {"max_latency_ratio": 1000}}
        body = {"name": ENDPOINT, "model": "returns:1", "config": config, "capture": {"rate": 1.0}}
        r = api.post("/v1/endpoints", json=body)
        assert r.status_code == 201, r.text
    return str(wait_ready(c, ENDPOINT)["url"])


def call(url: str, key: str, n: int) -> list[str]:
    """``n`` one-row calls; their signed request ids."""
    ids = []
    for i in range(n):
        r = predict(url, key, [ROWS[i % len(ROWS)]])
        assert r.status_code == 200, r.text
        ids.append(r.headers["x-request-id"].split(",")[0].strip())
    return ids


def rate(url: str, key: str, ids: list[str], rating: int, label: str | None = None) -> None:
    for rid in ids:
        body: dict[str, Any] = {"request_id": rid, "rating": rating}
        if label is not None:
            body["label"] = label
        r = httpx.post(
            f"{url}/feedback", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
        )
        assert r.status_code == 202, r.text


def captured(c: Cloud, at_least: int) -> None:
    def enough() -> bool:
        with c.api() as api:
            out = api.get(f"/v1/endpoints/{ENDPOINT}/capture").json()
        return int(out["captured"]) >= at_least

    wait_for(enough, 60, f"{at_least} captured calls")


def pipeline(c: Cloud, **options: Any) -> None:
    body = {"name": "loop", "model": "returns", "endpoint": ENDPOINT, "dataset": "orders"}
    with c.api() as api:
        r = api.post("/v1/pipelines", json={**body, **options})
        assert r.status_code == 201, r.text


def latest(c: Cloud) -> dict[str, Any]:
    with c.api() as api:
        out: dict[str, Any] = api.get("/v1/pipelines/loop/runs/latest").json()
    return out


def follow(
    c: Cloud, until: Callable[[dict[str, Any]], bool], timeout: float, restart: bool = False
) -> dict[str, Any]:
    """Poll the latest run; with ``restart``, the control plane is stopped and started again
    each time the run enters a step, before that step has finished."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = latest(c)
        if until(run):
            return run
        step = run.get("step")
        if restart and step and step not in seen:
            seen.add(step)
            c.live.stop()
            c.live = Live(c.settings)
        time.sleep(0.5)
    raise AssertionError(f"the run did not get there in {timeout:.0f} s: {latest(c)}")


@contextmanager
def customers_calling(url: str, key: str) -> Iterator[list[int]]:
    """A consumer calling the endpoint a few times a second meanwhile (the canary's traffic,
    however long the control plane takes to restart); yields the count of calls answered."""
    answered = [0]
    stop = threading.Event()

    def calls() -> None:
        while not stop.is_set():
            if predict(url, key, [ROWS[answered[0] % len(ROWS)]]).status_code == 200:
                answered[0] += 1
            stop.wait(0.25)

    thread = threading.Thread(target=calls, daemon=True)
    thread.start()
    try:
        yield answered
    finally:
        stop.set()
        thread.join(timeout=60)


def jobs_of(c: Cloud) -> list[dict[str, Any]]:
    with c.api() as api:
        items: list[dict[str, Any]] = api.get("/v1/jobs", params={"limit": 100}).json()["items"]
    return items


def test_the_loop_turns_with_a_restart_in_every_step(cloud: Cloud, tmp_path: Path) -> None:
    url = train(cloud, tmp_path)
    key = consumer(cloud, "acme")
    ids = call(url, key, 12)
    rate(url, key, ids[:3], 2, label="yes")  # corrected labels win over the model's output
    captured(cloud, 12)
    pipeline(
        cloud,
        canary_percent=50,
        canary_minutes=0.25,
        min_requests=4,
        approve="manual",
        params={"max_iter": 150, "learning_rate": 0.1},
    )
    with cloud.api() as api:
        assert api.post("/v1/pipelines/loop/runs").status_code == 202

    waiting = follow(cloud, lambda r: r["state"] != "running", 420, restart=True)
    assert waiting["state"] == "awaiting_approval", waiting
    m = waiting["metrics"]
    assert m["candidate"]["accuracy"] > m["production"]["accuracy"], m  # the same held-out rows
    assert waiting["candidate"] == "returns:2" and waiting["production"] == "returns:1"
    cloud.live.stop()  # a restart while it waits for a person
    cloud.live = Live(cloud.settings)
    with cloud.api() as api:
        r = api.post("/v1/pipelines/loop/runs/latest/approve", json={"note": "looks right"})
        assert r.status_code == 200, r.text

    def canary_serving(run: dict[str, Any]) -> bool:
        canary = next(s for s in run["steps"] if s["name"] == "canary")
        return "serving_since" in canary["data"] or run["state"] != "running"

    with customers_calling(url, key) as answered:  # half of it to the canary
        follow(cloud, canary_serving, 240, restart=True)
        done = follow(cloud, lambda r: r["state"] not in ("running", "awaiting_approval"), 240)
    assert answered[0] >= 8
    assert done["state"] == "promoted", done
    assert "no worse" in done["reason"] and "returns:2 promoted" in done["reason"]
    assert [s["state"] for s in done["steps"]] == ["succeeded"] * 7
    assert done["steps"][4]["message"] == "approved by admin: looks right"

    client = cloud.client()
    assert client.models.version("returns", 2).stage == "production"
    assert client.models.version("returns", 1).stage == "none"  # never marked production
    ep = wait_ready(cloud, ENDPOINT)
    assert ep["model_label"] == "returns:2" and ep["canary"] is None
    curated = client.datasets.version("orders", 2)
    assert curated.source is not None and curated.source["records"] == 12
    assert curated.source["pipeline_run"]["pipeline"] == "loop"
    # Nothing twice: one curated version, one train job and two evaluations for the run.
    kinds = sorted(j["kind"] for j in jobs_of(cloud))
    assert kinds == ["evaluate", "evaluate", "train", "train"], kinds
    assert [v.version for v in client.datasets.versions("orders")] == [2, 1]


def test_a_worse_candidate_or_a_failed_training_leaves_production_alone(
    cloud: Cloud,
    tmp_path: Path,
) -> None:
    url = train(cloud, tmp_path)
    key = consumer(cloud, "acme")
    call(url, key, 6)
    captured(cloud, 6)
    # One boosting round at a tiny rate: worse than production on the same held-out rows.
    pipeline(cloud, params={"max_iter": 1, "learning_rate": 0.01})
    with cloud.api() as api:
        assert api.post("/v1/pipelines/loop/runs").status_code == 202
    worse = follow(cloud, lambda r: r["state"] != "running", 420)
    assert worse["state"] == "not_promoted", worse
    assert worse["reason"].startswith("the candidate is not better: accuracy")
    assert {s["name"]: s["state"] for s in worse["steps"]}["canary"] == "skipped"

    with cloud.api() as api:
        assert api.delete("/v1/pipelines/loop").status_code == 204
    # Regression on a yes/no column: the training job itself fails.
    pipeline(cloud, params={"task": "regression"})
    call(url, key, 2)
    captured(cloud, 8)
    with cloud.api() as api:
        assert api.post("/v1/pipelines/loop/runs").status_code == 202
    failed = follow(cloud, lambda r: r["state"] != "running", 300)
    assert failed["state"] == "failed", failed
    assert failed["reason"].startswith("training job"), failed["reason"]

    client = cloud.client()
    assert [v.stage for v in client.models.versions("returns")] == ["none", "none"]
    ep = client.endpoints.get(ENDPOINT)
    assert ep.model_label == "returns:1" and ep.canary is None
