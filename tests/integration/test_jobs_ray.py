"""Jobs on a real local Ray cluster, through the server's controller, as a user sees them:
train and register, stream logs, scripts that fail or flood, cancel, timeout, a worker killed
mid-run resuming from its checkpoint, and a control-plane restart."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray
from fastapi.testclient import TestClient

from gureum import samples
from gureum.client import Client
from gureum.compute import fence
from gureum.compute.ray_backend import RayBackend
from gureum.compute.spec import NAMESPACE
from gureum.compute.supervisor import JobSupervisor
from gureum.config import Settings
from gureum.schemas.jobs import JobOut
from gureum.server.app import create_app
from gureum.server.db.tables import Job
from gureum.server.services.bootstrap import bootstrap

pytestmark = pytest.mark.ray


@dataclass
class RayCloud:
    settings: Settings
    token: str
    ray_address: str
    http: TestClient
    client: Client

    def reopen(self) -> RayCloud:
        """A new control plane over the same database, store and cluster."""
        app = create_app(self.settings, compute=RayBackend(self.ray_address))
        http = TestClient(app, raise_server_exceptions=False)
        http.headers["Authorization"] = f"Bearer {self.token}"
        return RayCloud(self.settings, self.token, self.ray_address, http, _client(app, self.token))


def _client(app: Any, token: str) -> Client:
    return Client("http://testserver", token, http=TestClient(app))


@pytest.fixture
def rc(tmp_path: Path, ray_cluster: str) -> Iterator[RayCloud]:
    home = tmp_path / "home"
    settings = Settings(home=home, artifacts=str(home / "artifacts"))
    app = create_app(settings, compute=RayBackend(ray_cluster))
    token = bootstrap(app.state.db)
    assert token is not None
    with TestClient(app, raise_server_exceptions=False) as http:  # runs the controller
        http.headers["Authorization"] = f"Bearer {token}"
        cloud = RayCloud(settings, token, ray_cluster, http, _client(app, token))
        samples.write("tabular", tmp_path / "orders", count=300)
        cloud.client.datasets.push("orders", tmp_path / "orders")
        yield cloud
        for job in cloud.client.jobs.list():  # leave nothing running on the shared cluster
            if job.state not in ("succeeded", "failed", "cancelled"):
                cloud.client.jobs.cancel(job.id)


def _wait(c: Client, job_id: str, timeout: float = 120) -> JobOut:
    return c.jobs.wait(job_id, poll_s=0.2, timeout_s=timeout)


def _wait_for(pred: Any, timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _script(tmp_path: Path, body: str, name: str = "main.py") -> Path:
    code = tmp_path / f"code-{abs(hash(body)) % 10**8}"
    code.mkdir()
    (code / name).write_text(body)
    return code


def _events(c: Client, job_id: str) -> list[str]:
    return [f"{e.kind}: {e.message}" for e in c.jobs.events(job_id)]


def test_train_registers_a_model_with_lineage_and_streams_logs(rc: RayCloud) -> None:
    job = rc.client.jobs.train("tabular", "orders", model="returns", params={"target": "returned"})
    assert job.state == "queued"
    done = _wait(rc.client, job.id)
    assert done.state == "succeeded", (done.error, _events(rc.client, job.id))
    assert done.model_version == "returns:1" and 0.5 < done.metrics["accuracy"] <= 1.0
    v = rc.client.models.version("returns", 1)
    assert (v.job_id, v.dataset, v.recipe) == (job.id, "orders:1", "tabular")
    assert v.params["target"] == "returned" and v.code_hash
    assert "accuracy" in v.metrics
    assert {o.path for o in rc.client.jobs.outputs(job.id)} >= {"evaluation.json"}
    text, _ = rc.client.jobs.logs(job.id)
    assert "classification of 'returned'" in text
    with rc.http.stream("GET", f"/v1/jobs/{job.id}/logs/stream") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        body = "".join(r.iter_text())
    assert "event: log" in body and "classification of" in body and "event: end" in body
    evaluation = _wait(rc.client, rc.client.jobs.evaluate("returns:1", "orders").id)
    assert evaluation.state == "succeeded", evaluation.error
    assert evaluation.metrics["accuracy"] == pytest.approx(done.metrics["accuracy"])
    batch = _wait(rc.client, rc.client.jobs.predict("returns", "orders").id)
    assert batch.state == "succeeded", batch.error
    lines = rc.http.get(f"/v1/jobs/{batch.id}/outputs/predictions.jsonl").text.splitlines()
    assert len(lines) == 300 and "output" in json.loads(lines[0])
    kinds = [e.split(":")[0] for e in _events(rc.client, job.id)]
    assert kinds[0] == "state" and "running" in " ".join(_events(rc.client, job.id))


def test_script_job_logs_metrics_checkpoints_and_registers(rc: RayCloud, tmp_path: Path) -> None:
    code = _script(
        tmp_path,
        """
import gureum.run as run
p = run.params()
for step in range(1, 4):
    run.log_metrics({"loss": 1.0 / step}, step=step, epoch=step)
    run.save_checkpoint({"epoch": step})
print("rows in data:", len(run.manifest()["files"]))
(run.model_dir() / "weights.bin").write_bytes(b"w" * 10)
run.register_model(metrics={"score": p["k"] * 2.0})
""",
    )
    job = rc.client.jobs.train("script", "orders", model="mine", params={"k": 21}, code_dir=code)
    done = _wait(rc.client, job.id)
    assert done.state == "succeeded", (done.error, rc.client.jobs.logs(job.id)[0])
    assert done.model_version == "mine:1" and done.metrics == {"score": 42.0}
    assert [m.values["loss"] for m in rc.client.jobs.metrics(job.id)] == [1.0, 0.5, 1 / 3]
    assert "rows in data: 1" in rc.client.jobs.logs(job.id)[0]
    assert any("checkpoint" in e for e in _events(rc.client, job.id))
    assert rc.client.models.version("mine", 1).code_hash == done.code_hash


def test_a_failing_script_fails_with_its_reason_and_keeps_its_logs(
    rc: RayCloud, tmp_path: Path
) -> None:
    raises = _script(tmp_path, "print('about to fail')\nraise ValueError('bad row 7')\n")
    exits = _script(tmp_path, "import sys\nprint('x' * 100 + '\\n' * 0)\nsys.exit(3)\n")
    flood = _script(
        tmp_path, "import sys\nfor i in range(40000):\n    print(f'line {i} ' + 'y' * 80)\n"
    )
    a = rc.client.jobs.train("script", None, code_dir=raises, max_retries=2)
    b = rc.client.jobs.train("script", None, code_dir=exits)
    c = rc.client.jobs.train("script", None, code_dir=flood)
    fa, fb, fc = (_wait(rc.client, j.id) for j in (a, b, c))
    assert fa.state == "failed" and "ValueError: bad row 7" in (fa.error or "")
    assert fa.attempt == 1  # the user's error is not retried
    assert "about to fail" in rc.client.jobs.logs(a.id)[0]
    assert fb.state == "failed" and "exited with status 3" in (fb.error or "")
    assert fc.state == "succeeded", fc.error
    text, end = rc.client.jobs.logs(c.id)
    while True:
        more, nxt = rc.client.jobs.logs(c.id, end)
        if not more:
            break
        text, end = text + more, nxt
    assert end > 3_000_000 and "line 39999" in text


def test_cancel_and_timeout_stop_the_work_within_seconds(rc: RayCloud, tmp_path: Path) -> None:
    sleeper = _script(tmp_path, "import time\nprint('sleeping', flush=True)\ntime.sleep(600)\n")
    cancelled = rc.client.jobs.train("script", None, code_dir=sleeper)
    timed = rc.client.jobs.train("script", None, code_dir=sleeper, timeout_s=4)
    _wait_for(lambda: "sleeping" in rc.client.jobs.logs(cancelled.id)[0], what="the sleeper")
    pid = _running_pid(rc.client, cancelled.id)
    began = time.monotonic()
    rc.client.jobs.cancel(cancelled.id)
    out = _wait(rc.client, cancelled.id, timeout=30)
    assert out.state == "cancelled" and time.monotonic() - began < 15
    _wait_for(lambda: not psutil.pid_exists(pid), timeout=15, what="the worker to exit")
    late = _wait(rc.client, timed.id, timeout=60)
    assert late.state == "failed" and (late.error or "").startswith("timed out after 4s")


def test_a_released_attempt_never_runs_again(rc: RayCloud, tmp_path: Path) -> None:
    """A deposed leader may launch an attempt after the new leader declared it lost and
    retried it: the cluster itself refuses it then, and stops it if it already runs."""
    ticker = _script(
        tmp_path, "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.3)\n"
    )
    job = rc.client.jobs.train("script", None, code_dir=ticker)
    _wait_for(lambda: "tick" in rc.client.jobs.logs(job.id)[0], what="the ticker")
    began = time.monotonic()
    fence.supersede(job.id, 1)  # what another server's release of attempt 1 writes
    out = _wait(rc.client, job.id, timeout=30)
    events = [(e.kind, e.message) for e in rc.client.jobs.events(job.id)]
    assert out.state == "cancelled", (out.error, events)
    assert time.monotonic() - began < 15

    db = rc.http.app.state.db  # type: ignore[attr-defined]
    with db.read() as s:
        spec = rc.http.app.state.jobs._spec(s, s.get(Job, job.id))  # type: ignore[attr-defined]
    assert spec.attempt == 1
    late = JobSupervisor.options(namespace=NAMESPACE).remote()  # type: ignore[attr-defined]
    try:
        with pytest.raises(ray.exceptions.RayTaskError, match="superseded"):
            ray.get(late.start.remote(spec), timeout=60)
        assert ray.get(late.whoami.remote(), timeout=30) is None
    finally:
        ray.kill(late)
    fence.sweep({job.id}, keep_s=0)  # an active job's marks stay
    assert fence.superseded(job.id, 1)
    assert fence.sweep(set(), keep_s=0) >= 1 and not fence.superseded(job.id, 1)


def _running_pid(c: Client, job_id: str) -> int:
    for e in c.jobs.events(job_id):
        if e.kind == "state" and e.message.startswith("running"):
            return int(e.data["pid"])
    raise AssertionError("no running event")


def test_a_killed_worker_is_retried_and_resumes_from_its_checkpoint(rc: RayCloud) -> None:
    slow = rc.client.jobs.train(
        "script",
        None,
        code_dir=_resumable_script(rc.settings.home.parent),
        max_retries=2,
    )
    _wait_for(
        lambda: any("checkpoint 2 saved" in e for e in _events(rc.client, slow.id)),
        what="two checkpoints",
    )
    os.kill(_running_pid(rc.client, slow.id), signal.SIGKILL)
    done = _wait(rc.client, slow.id, timeout=120)
    events = _events(rc.client, slow.id)
    assert done.state == "succeeded", (done.error, events)
    assert done.attempt == 2
    assert any(e.startswith("retry: attempt 1 lost") for e in events), events
    assert any(e.startswith("resume: resuming from checkpoint") for e in events), events
    log = rc.client.jobs.logs(slow.id)[0]
    assert "resumed at epoch 2" in log or "resumed at epoch 3" in log, log[-2000:]
    assert "starting fresh" in log  # the first attempt


def _resumable_script(root: Path) -> Path:
    code = root / "resumable"
    code.mkdir(exist_ok=True)
    (code / "main.py").write_text(
        """
import time
import gureum.run as run
state = run.load_checkpoint()
start = 1 if state is None else state["epoch"] + 1
print("starting fresh" if state is None else f"resumed at epoch {state['epoch']}", flush=True)
for epoch in range(start, 7):
    time.sleep(1.0)
    run.save_checkpoint({"epoch": epoch})
    run.log_metrics({"loss": 1.0 / epoch}, step=epoch, epoch=epoch)
(run.model_dir() / "w.bin").write_bytes(b"w")
run.register_model(metrics={"epochs": 6.0})
"""
    )
    return code


def test_a_control_plane_restart_loses_nothing(rc: RayCloud, tmp_path: Path) -> None:
    talker = _script(
        tmp_path,
        "import time\nfor i in range(8):\n    print(f'tick {i}', flush=True)\n    time.sleep(1)\n",
    )
    job = rc.client.jobs.train("script", None, code_dir=talker)
    _wait_for(lambda: "tick 1" in rc.client.jobs.logs(job.id)[0], what="first ticks")
    rc.http.app.state.jobs.stop()  # the control plane goes away; the job keeps running
    rc.http.app.state.leadership.stop()  # and hands the controllers' lease over
    time.sleep(3)
    assert rc.client.jobs.get(job.id).state == "running"
    second = rc.reopen()
    with second.http:
        done = _wait(second.client, job.id)
        assert done.state == "succeeded", done.error
        text = second.client.jobs.logs(job.id)[0]
        assert all(f"tick {i}" in text for i in range(8)), text


def test_queue_waits_for_resources_with_its_reason(rc: RayCloud, tmp_path: Path) -> None:
    sleeper = _script(tmp_path, "import time\ntime.sleep(600)\n")
    total = rc.client.jobs.train("script", None, code_dir=sleeper, resources={"cpus": 4})
    _wait_for(lambda: rc.client.jobs.get(total.id).state == "running", what="the big job")
    waiting = rc.client.jobs.train("script", None, code_dir=sleeper, resources={"cpus": 2})
    out = _wait_for(
        lambda: (j := rc.client.jobs.get(waiting.id)).wait_reason and j, what="a wait reason"
    )
    assert out.state == "queued" and out.wait_reason == "waiting for 2 CPUs"
    rc.client.jobs.cancel(total.id)
    _wait_for(lambda: rc.client.jobs.get(waiting.id).state == "running", what="the queued job")
    rc.client.jobs.cancel(waiting.id)
    assert _wait(rc.client, waiting.id, timeout=30).state == "cancelled"


def test_impossible_resources_are_refused_at_submission(rc: RayCloud) -> None:
    r = rc.http.post(
        "/v1/jobs",
        json={
            "recipe": "tabular",
            "dataset": "orders",
            "params": {"target": "returned"},
            "resources": {"cpus": 1000},
        },
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "unschedulable"
    assert "1000 CPUs" in json.dumps(r.json())
