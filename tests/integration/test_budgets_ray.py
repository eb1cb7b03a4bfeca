"""A budget exceeded while a job runs on a real local Ray cluster: the job is stopped, queued
again with its checkpoints, and resumes from the last of them when the budget is raised."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gureum.client import Client
from gureum.compute.ray_backend import RayBackend
from gureum.config import Settings
from gureum.server.app import create_app
from gureum.server.services.bootstrap import bootstrap
from tests.integration.test_jobs_ray import _resumable_script

pytestmark = pytest.mark.ray


@pytest.fixture
def client(tmp_path: Path, ray_cluster: str) -> Iterator[Client]:
    home = tmp_path / "home"
    settings = Settings(home=home, artifacts=str(home / "artifacts"), price_cpu_hour=3600.0)
    app = create_app(settings, compute=RayBackend(ray_cluster))
    token = bootstrap(app.state.db)
    assert token is not None
    with TestClient(app, raise_server_exceptions=False):  # runs the controllers
        c = Client("http://testserver", token, http=TestClient(app))
        yield c
        for job in c.jobs.list():  # leave nothing running on the shared cluster
            if job.state not in ("succeeded", "failed", "cancelled"):
                c.jobs.cancel(job.id)


def _until(pred: Any, what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _events(c: Client, job_id: str) -> list[str]:
    return [f"{e.kind}: {e.message}" for e in c.jobs.events(job_id)]


def test_an_exceeded_budget_pauses_a_running_job_and_a_raise_resumes_it(
    client: Client, tmp_path: Path
) -> None:
    client.budgets.set("default", monthly=1000)
    job = client.jobs.train(
        "script", None, code_dir=_resumable_script(tmp_path), resources={"cpus": 0.5}
    )
    _until(
        lambda: any("checkpoint 2 saved" in e for e in _events(client, job.id)),
        "two checkpoints",
    )
    lowered = client.budgets.set("default", monthly=0.01)
    assert lowered.state == "exceeded"
    paused = _until(
        lambda: (j := client.jobs.get(job.id)).state == "queued" and j.wait_reason and j,
        "the job to be paused",
    )
    assert "budget" in paused.wait_reason and paused.error is None
    assert client.budgets.get("default").paused_jobs == [job.id]
    time.sleep(1.5)
    assert client.jobs.get(job.id).state == "queued"  # it waits while the budget is exceeded

    client.budgets.set("default", monthly=1000)
    done = client.jobs.wait(job.id, poll_s=0.3, timeout_s=120)
    events = _events(client, job.id)
    assert done.state == "succeeded", (done.error, events)
    assert done.attempt == 2
    assert any("paused by the budget after attempt 1" in e for e in events), events
    assert any(e.startswith("resume: resuming from checkpoint") for e in events), events
    log = client.jobs.logs(job.id)[0]
    assert "starting fresh" in log and "resumed at epoch" in log, log[-2000:]
    report = client.costs.report()
    [cost] = [j for j in report.jobs if j.job == job.id]
    assert cost.cpu_hours > 0  # both spans billed, not the pause between
