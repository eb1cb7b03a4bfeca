"""One pool, serving first, on the session's real 4-CPU Ray cluster: a low-priority script job
holds most CPUs and checkpoints; an endpoint whose replica needs more than is free becomes
ready once the pool has preempted the job, which shows a "preempted" event and waits in the
queue; when the endpoint is deleted, the job resumes from its checkpoint and succeeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from gureum import samples
from gureum.client import Client
from gureum.config import Settings
from gureum.recipes import LocalDataset, LocalRunContext, train_and_evaluate
from gureum.server.services.bootstrap import bootstrap
from tests.conftest import free_port
from tests.integration.test_serving_ray import Live, clear_apps, wait_for
from tests.integration.trained_models import register_trained

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def _long_script(root: Path) -> Path:
    """Twenty half-second epochs, a checkpoint after each; resumes from the last one."""
    code = root / "long"
    code.mkdir(exist_ok=True)
    (code / "main.py").write_text(
        """
import time
import gureum.run as run
state = run.load_checkpoint()
start = 1 if state is None else state["epoch"] + 1
print("starting fresh" if state is None else f"resumed at epoch {state['epoch']}", flush=True)
for epoch in range(start, 21):
    time.sleep(0.5)
    run.save_checkpoint({"epoch": epoch})
    run.log_metrics({"loss": 1.0 / epoch}, step=epoch, epoch=epoch)
(run.model_dir() / "w.bin").write_bytes(b"w")
run.register_model(metrics={"epochs": 20.0})
"""
    )
    return code


def test_an_endpoint_short_of_room_preempts_a_job_which_resumes_after(
    tmp_path: Path, ray_cluster: str, database_url: str
) -> None:
    samples.write("tabular", tmp_path / "data", count=200)
    trained = train_and_evaluate(
        LocalRunContext(tmp_path / "run"),
        "tabular",
        {"max_iter": 10, "target": "returned"},
        LocalDataset.from_folder(tmp_path / "data"),
    )
    clear_apps(ray_cluster)
    home = tmp_path / "home"
    settings = Settings(
        home=home,
        database_url=database_url,
        artifacts=str(home / "artifacts"),
        ray_address=ray_cluster,
        port=free_port(),
        serve_port=free_port(),
        preempt_after_s=2.0,
        preempt_min_run_s=0.0,
        preempt_hold_s=5.0,
    )
    live = Live(settings)
    try:
        token = bootstrap(live.app.state.db)
        assert token is not None
        client = Client(live.url, token)
        register_trained(
            client, live.app.state.db, "orders", trained.train.model_dir, recipe="tabular"
        )
        job = client.jobs.train(
            "script",
            None,
            code_dir=_long_script(tmp_path),
            resources={"cpus": 3},
            priority=-5,
            max_retries=0,
        )
        wait_for(
            lambda: any("checkpoint 2 saved" in e.message for e in client.jobs.events(job.id)),
            timeout=60,
            what="two checkpoints",
        )
        config = {"resources": {"cpus": 2}, "autoscaling": {"min_replicas": 1, "max_replicas": 1}}
        client.endpoints.deploy("shop", "orders", config=config)
        wait_for(
            lambda: client.endpoints.get("shop").state == "ready",
            timeout=90,
            what="the endpoint ready in the room the job left",
        )
        events = client.jobs.events(job.id)
        preempted = [e for e in events if e.kind == "preempted"]
        assert preempted and "endpoint shop" in preempted[0].message, events
        waiting = client.jobs.get(job.id)
        assert waiting.state == "queued", waiting
        assert waiting.attempt == 1  # not a retry: max_retries 0 and still queued
        ep_events = [e.kind for e in client.endpoints.events("shop")]
        assert "preempt" in ep_events, ep_events

        client.endpoints.delete("shop")
        done = client.jobs.wait(job.id, poll_s=0.3, timeout_s=120)
        messages = [f"{e.kind}: {e.message}" for e in client.jobs.events(job.id)]
        assert done.state == "succeeded", (done.error, messages)
        assert done.attempt == 2
        assert any(m.startswith("resume: resuming from checkpoint") for m in messages), messages
        log = client.jobs.logs(job.id)[0]
        assert "starting fresh" in log and "resumed at epoch" in log, log[-2000:]
    finally:
        live.stop()
        clear_apps(ray_cluster)
