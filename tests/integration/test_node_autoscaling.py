"""Node autoscaling on Ray's fake multi-node cluster, driven over REST like a user would.

The head (ours: ``compute.fake_cluster``, explicit free ports, a temp dir of its own, never
``ray stop``) has no CPUs; Ray's autoscaler may add up to two 2-CPU nodes, simulated as raylets
on this machine. A job needing 2 CPUs is accepted because a node type fits it, waits queued,
the server asks Ray's autoscaler for a node, the job runs there and succeeds, and the request
is cleared once nothing waits; a job that fits no node type is refused. Then a checkpointing
job's node is killed mid-job (its raylet and the processes it started, SIGKILL): the job is
retried and resumes from its checkpoint on the other node (given up by a job that held it).

Every simulated node shares this machine's two cores: the jobs only sleep.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray
from fastapi.testclient import TestClient
from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
from ray.experimental import internal_kv

from gureum.client import Client
from gureum.client.errors import BadRequestError
from gureum.compute import ray_backend
from gureum.compute.fake_cluster import (
    FAKE_NODE_ID_PREFIX,
    FakeCluster,
    FakeNodeType,
    start_fake_cluster,
)
from gureum.compute.local_ray import RayHead, stop_head
from gureum.compute.ray_backend import RayBackend
from gureum.config import Settings
from gureum.schemas.jobs import JobOut
from gureum.server.app import create_app
from gureum.server.services.bootstrap import bootstrap

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

CLUSTER = FakeCluster(
    (FakeNodeType("cpu2", {"CPU": 2}, max_workers=2),),
    head_cpus=0,
    idle_timeout_s=6.0,
    update_interval_s=1,
    heartbeat_timeout_s=5,
)
# The GCS declares a node whose raylet stopped answering dead after 3 missed checks of 1 s
# (Ray's defaults: 5 of 3 s); the autoscaler then replaces it.
HEALTH_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
HEAD_ID = FAKE_NODE_ID_PREFIX + "00000"


@dataclass(frozen=True)
class Fake:
    head: RayHead
    config: Path


@pytest.fixture
def fake() -> Iterator[Fake]:
    # A cluster per test (a few seconds): a node Ray kept from an earlier test would change
    # what the next one sees.
    # ray.init is process-global: leave whatever cluster an earlier module joined, so that
    # RayBackend joins this one (later modules join theirs again).
    ray_backend.disconnect()
    temp_dir = Path(tempfile.mkdtemp(prefix="gureum-ray-as", dir="/tmp"))  # short socket paths
    config = temp_dir.parent / f"{temp_dir.name}.autoscaling.json"
    head = start_fake_cluster(CLUSTER, temp_dir, temp_dir / "head.log", config, env=HEALTH_ENV)
    try:
        yield Fake(head, config)
    finally:
        ray_backend.disconnect()
        stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
        config.unlink(missing_ok=True)


@dataclass
class Env:
    client: Client
    http: TestClient

    def script(self, code: Path, **kw: Any) -> JobOut:
        kw.setdefault("resources", {"cpus": 2})
        return self.client.jobs.train("script", None, code_dir=code, **kw)

    def nodes_ran_on(self, job_id: str) -> list[str]:
        """The node of each attempt, from the job's "running" events."""
        events = self.client.jobs.events(job_id)
        return [e.data["node_id"] for e in events if e.kind == "state" and "node_id" in e.data]

    def messages(self, job_id: str) -> list[str]:
        return [f"{e.kind}: {e.message}" for e in self.client.jobs.events(job_id)]


@pytest.fixture
def env(fake: Fake, tmp_path: Path, database_url: str) -> Iterator[Env]:
    home = tmp_path / "home"
    settings = Settings(
        home=home,
        database_url=database_url,
        artifacts=str(home / "artifacts"),
        autoscaling_config=str(fake.config),
    )
    app = create_app(settings, compute=RayBackend(fake.head.address))
    token = bootstrap(app.state.db)
    assert token is not None
    with TestClient(app, raise_server_exceptions=False) as http:  # runs the controllers
        http.headers["Authorization"] = f"Bearer {token}"
        yield Env(Client("http://testserver", token, http=http), http)
    app.state.db.dispose()


def alive_nodes() -> list[str]:
    return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])


def asked_of_autoscaler() -> list[dict[str, float]]:
    raw = internal_kv._internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return list(json.loads(raw)) if raw else []


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(
        f"timed out waiting for {what}; nodes alive: {alive_nodes()}; asked of the autoscaler: "
        f"{asked_of_autoscaler()}; its log:\n{_autoscaler_log()}"
    )


def _autoscaler_log(lines: int = 60) -> str:
    """The end of the head's monitor log (Ray's autoscaler): what it decided and why."""
    temp_dir = ray._private.worker._global_node.get_temp_dir_path()
    path = Path(temp_dir) / "session_latest" / "logs" / "monitor.log"
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(unreadable: {exc})"


def _code(root: Path, body: str) -> Path:
    code = root / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "main.py").write_text(body)
    return code


SHORT = """
import time
import gureum.run as run
time.sleep(2)
(run.model_dir() / "w.bin").write_bytes(b"w")
run.register_model(metrics={"slept": 2.0})
"""

# Waits until cancelled (a node's worth of CPUs held).
HOLD = """
import time
for _ in range(600):
    time.sleep(0.5)
"""

# Thirty half-second epochs, a checkpoint after each; resumes from the last one.
LONG = """
import time
import gureum.run as run
state = run.load_checkpoint()
start = 1 if state is None else state["epoch"] + 1
print("starting fresh" if state is None else f"resumed at epoch {state['epoch']}", flush=True)
for epoch in range(start, 31):
    time.sleep(0.5)
    run.save_checkpoint({"epoch": epoch})
    run.log_metrics({"loss": 1.0 / epoch}, step=epoch, epoch=epoch)
(run.model_dir() / "w.bin").write_bytes(b"w")
run.register_model(metrics={"epochs": 30.0})
"""


def test_a_job_waits_for_a_node_the_autoscaler_adds_and_the_request_is_cleared(
    env: Env, tmp_path: Path
) -> None:
    wait_for(lambda: alive_nodes() == [HEAD_ID], 60, "only the head (an earlier node idle)")
    # Nothing fits the head: accepted only because a cpu2 node may be added.
    job = env.script(_code(tmp_path, SHORT), max_retries=0)
    assert job.state == "queued"

    done = env.client.jobs.wait(job.id, poll_s=0.5, timeout_s=120)
    messages = env.messages(job.id)
    assert done.state == "succeeded", (done.error, messages)
    assert any(m.startswith("wait: waiting for 2 CPUs") for m in messages), messages
    ran_on = env.nodes_ran_on(job.id)
    assert len(ran_on) == 1 and ran_on[0] != HEAD_ID
    assert ran_on[0].startswith(FAKE_NODE_ID_PREFIX)  # a node the autoscaler added

    # Nothing waits or runs: the request is cleared, so Ray's autoscaler may remove the node
    # once idle. (Its removal is Ray's and is not asserted: in one CI run of two, Ray kept an
    # added node with no usage past 60 s; see docs/operations.md.)
    wait_for(lambda: asked_of_autoscaler() == [], 10, "the request cleared")

    with pytest.raises(BadRequestError) as refused:
        env.script(_code(tmp_path, SHORT), resources={"cpus": 3})
    assert (refused.value.status, refused.value.code) == (422, "unschedulable")
    assert "3 CPUs" in refused.value.message
    assert [j.id for j in env.client.jobs.list()] == [job.id]


def _raylet_of(node_id: str) -> psutil.Process:
    node = next(n for n in ray.nodes() if n["NodeID"] == node_id)
    socket_name = node["RayletSocketName"]
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].endswith("raylet") and any(socket_name in a for a in cmd):
            return p
    raise AssertionError(f"no raylet process for node {node_id} ({socket_name})")


def test_a_job_whose_node_is_killed_resumes_from_its_checkpoint_on_another_node(
    env: Env, tmp_path: Path
) -> None:
    # A second node, kept by a job that only waits: Ray 2.60's autoscaler does not replace a
    # fake node whose raylet died (it keeps faking the dead node's heartbeat, so it still
    # counts as capacity); the lost job resumes on the node this holder gives up.
    holder = env.script(_code(tmp_path / "holder", HOLD), max_retries=0)
    wait_for(lambda: env.nodes_ran_on(holder.id), 120, "the holder running on a second node")
    job = env.script(_code(tmp_path, LONG), max_retries=2)
    wait_for(
        lambda: any("checkpoint 3 saved" in m for m in env.messages(job.id)),
        timeout=120,
        what="three checkpoints",
    )
    [first] = env.nodes_ran_on(job.id)
    assert first != HEAD_ID
    # The node dies: its raylet and every process it started (workers, the job's sandbox).
    [second] = env.nodes_ran_on(holder.id)
    assert second not in (first, HEAD_ID)
    raylet = _raylet_of(first)
    for p in [raylet, *raylet.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    wait_for(
        lambda: any(m.startswith("retry: attempt 1 lost") for m in env.messages(job.id)),
        timeout=60,
        what="the lost attempt noticed",
    )
    env.client.jobs.cancel(holder.id)

    done = env.client.jobs.wait(job.id, poll_s=0.5, timeout_s=150)
    messages = env.messages(job.id)
    assert done.state == "succeeded", (done.error, messages)
    # Attempt 2, or 3 when Ray still offered the dead node's CPUs when the job was queued
    # again (its raylet is declared dead after a few missed health checks).
    assert done.attempt in (2, 3), messages
    assert any(m.startswith("retry: attempt 1 lost") for m in messages), messages
    assert any(m.startswith("resume: resuming from checkpoint") for m in messages), messages
    ran_on = env.nodes_ran_on(job.id)
    assert ran_on[0] == first and ran_on[-1] == second, (ran_on, messages)
    log = env.client.jobs.logs(job.id)[0]
    assert "starting fresh" in log and "resumed at epoch" in log, log[-2000:]
    assert first not in alive_nodes()
