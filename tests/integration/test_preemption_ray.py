"""One pool, serving first, on the session's real 4-CPU Ray cluster: a low-priority script job
holds most CPUs and checkpoints; an endpoint whose replica needs more than is free becomes
ready once the pool has preempted the job, which shows a "preempted" event and waits in the
queue; when the endpoint is deleted, the job resumes from its checkpoint and succeeds. And the
fault: a preempted script job's worker killed while it writes the checkpoint it was asked for
resumes from its previous checkpoint (a half-written one never replaces the last good one)."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from gureum import samples
from gureum.client import Client
from gureum.compute.ray_backend import RayBackend
from gureum.compute.runtime import CheckpointStore
from gureum.config import Settings
from gureum.recipes import LocalDataset, LocalRunContext, train_and_evaluate
from gureum.server.app import create_app
from gureum.server.db.tables import Job, Model, ModelVersion
from gureum.server.db.tables_serving import Endpoint
from gureum.server.services import preemption
from gureum.server.services.bootstrap import bootstrap
from gureum.storage.store import ArtifactStore
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


def _asked_script(root: Path) -> Path:
    """Checkpoint 1 at once; asked for a checkpoint, it saves a large one (256 MB)."""
    code = root / "asked"
    code.mkdir(exist_ok=True)
    (code / "main.py").write_text(
        """
import time
import torch
import gureum.run as run
state = run.load_checkpoint()
print("starting fresh" if state is None else f"resumed at epoch {state['epoch']}", flush=True)
if state is None:
    run.save_checkpoint({"epoch": 1})
    while not run.should_checkpoint():
        time.sleep(0.02)
    print("checkpoint requested: saving epoch 2", flush=True)
    run.save_checkpoint({"epoch": 2, "weights": torch.zeros(64 * 1024 * 1024)})
    time.sleep(120)
(run.model_dir() / "w.bin").write_bytes(b"w")
run.register_model(metrics={"resumed_epoch": float(state["epoch"])})
"""
    )
    return code


def _spool_tmp(job_id: str) -> list[Path]:
    """The half-written spool file of attempt 1, seen from the host (the sandbox binds it)."""
    roots = {Path(tempfile.gettempdir()), Path("/tmp")}
    return [
        p
        for root in roots
        for p in (root / "gureum-jobs" / f"{job_id}-1-r0" / "script-run" / "spool").glob(
            ".ckpt-*.tmp"
        )
    ]


def test_a_worker_killed_while_writing_the_asked_checkpoint_resumes_from_the_previous_one(
    tmp_path: Path, ray_cluster: str, database_url: str
) -> None:
    home = tmp_path / "home"
    settings = Settings(
        home=home,
        database_url=database_url,
        artifacts=str(home / "artifacts"),
        preempt_hold_s=1.0,
        preempt_grace_s=60.0,
    )
    app = create_app(settings, compute=RayBackend(ray_cluster))
    token = bootstrap(app.state.db)
    assert token is not None
    with TestClient(app, raise_server_exceptions=False):  # runs the job controller
        client = Client("http://testserver", token, http=TestClient(app))
        job = client.jobs.train(
            "script", None, code_dir=_asked_script(tmp_path), resources={"cpus": 1}
        )
        wait_for(
            lambda: any("checkpoint 1 saved" in e.message for e in client.jobs.events(job.id)),
            timeout=90,
            what="the first checkpoint",
        )
        pid = next(
            int(e.data["pid"])
            for e in client.jobs.events(job.id)
            if e.kind == "state" and e.message.startswith("running")
        )
        with app.state.db.write() as s:  # the pool's choice, for an endpoint short of room
            row = s.get(Job, job.id)
            assert row is not None and row.started_at is not None
            ep = _endpoint_row(s, row.workspace_id)
            victim = preemption.Candidate(row.id, row.priority, {"CPU": 1}, row.started_at)
            assert preemption.preempt(s, [victim], ep, {"CPU": 1}) == [job.id]
            workspace_id = row.workspace_id
        deadline = time.monotonic() + 60
        while not _spool_tmp(job.id):
            assert time.monotonic() < deadline, "the asked checkpoint was never written"
            time.sleep(0.002)
        os.kill(pid, signal.SIGKILL)  # the job's Ray worker, mid-checkpoint
        store = CheckpointStore(ArtifactStore(settings.resolved_artifacts), workspace_id, job.id)
        assert store.numbers() == [1]  # the half-written one never became the newest

        done = client.jobs.wait(job.id, poll_s=0.3, timeout_s=180)
        messages = [f"{e.kind}: {e.message}" for e in client.jobs.events(job.id)]
        assert done.state == "succeeded", (done.error, messages)
        assert done.attempt == 2, messages  # preempted: queued again, not failed
        assert any(m.startswith("preempted: ") for m in messages), messages
        assert any(m.startswith("checkpoint-ask: asked to save a checkpoint") for m in messages)
        assert any(m.startswith("resume: resuming from checkpoint 1") for m in messages), messages
        assert not any("checkpoint 2 saved" in m for m in messages), messages
        log = client.jobs.logs(job.id)[0]
        # The script's last lines of attempt 1 may die with its worker (they are shipped in
        # batches); what it printed before the first checkpoint and after the resume may not.
        assert "starting fresh" in log and "resumed at epoch 1" in log, log
        assert done.metrics.get("resumed_epoch") == 1.0, done.metrics
        assert not [p for p in os.listdir(store.prefix) if p.endswith(".tmp")]


def _endpoint_row(s: Session, workspace_id: int) -> Endpoint:
    """An endpoint row for the preemption's events (nothing is served)."""
    model = Model(workspace_id=workspace_id, name="m")
    s.add(model)
    s.flush()
    version = ModelVersion(model_id=model.id, version=1, format="x", file_count=0, total_bytes=0)
    s.add(version)
    s.flush()
    ep = Endpoint(
        name="shop",
        workspace_id=workspace_id,
        model_id=model.id,
        version_id=version.id,
        config={"resources": {"cpus": 1}},
        token_hash="0" * 64,
        state="deploying",
    )
    s.add(ep)
    s.flush()
    return ep


def test_a_workspace_takes_back_its_share_from_a_borrower_which_resumes_after(
    tmp_path: Path, ray_cluster: str, database_url: str
) -> None:
    """research is guaranteed 2 of the 4 CPUs; default (no share) borrows 3 for a long job;
    research's 2-CPU job preempts it through the queue, runs first, and the borrower resumes
    from its checkpoint once the room is back."""
    home = tmp_path / "home"
    settings = Settings(
        home=home,
        database_url=database_url,
        artifacts=str(home / "artifacts"),
        ray_address=ray_cluster,
        port=free_port(),
        serve_port=free_port(),
        preempt_after_s=0.0,
        preempt_min_run_s=0.0,
        preempt_hold_s=2.0,
    )
    live = Live(settings)
    try:
        token = bootstrap(live.app.state.db)
        assert token is not None
        client = Client(live.url, token)
        client.workspaces.create("research")
        key = client.keys.create("research-key", workspace="research").token
        research = Client(live.url, key)
        client.workspaces.set_share("research", cpus=2)
        borrower = client.jobs.train(
            "script", None, code_dir=_long_script(tmp_path), resources={"cpus": 3}, max_retries=0
        )
        wait_for(
            lambda: any("checkpoint 2 saved" in e.message for e in client.jobs.events(borrower.id)),
            timeout=60,
            what="the borrower's checkpoints",
        )
        mine_code = tmp_path / "mine"
        mine_code.mkdir()
        (mine_code / "main.py").write_text('print("within the share", flush=True)\n')
        mine = research.jobs.train("script", None, code_dir=mine_code, resources={"cpus": 2})
        done = research.jobs.wait(mine.id, poll_s=0.3, timeout_s=90)
        assert done.state == "succeeded", done.error
        events = client.jobs.events(borrower.id)
        preempted = [e for e in events if e.kind == "preempted"]
        assert preempted and "workspace research" in preempted[0].message, events
        assert "borrowed capacity" in preempted[0].message
        finished = client.jobs.wait(borrower.id, poll_s=0.3, timeout_s=120)
        messages = [f"{e.kind}: {e.message}" for e in client.jobs.events(borrower.id)]
        assert finished.state == "succeeded", (finished.error, messages)
        assert finished.attempt == 2
        assert any(m.startswith("resume: resuming from checkpoint") for m in messages), messages
        # research's job went first: the borrower's second attempt began after it started.
        after = client.jobs.events(borrower.id)
        second = next(e.time for e in after if e.message == "starting (attempt 2)")
        assert done.started_at is not None and second >= done.started_at, (second, done)
    finally:
        live.stop()
