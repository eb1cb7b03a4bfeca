"""Jobs on a Ray cluster of several nodes: placement by accelerator type, refusal of what no
node has, and a data-parallel job whose workers land on two nodes.

The nodes are simulated on this machine with ``ray.cluster_utils.Cluster``: a head that runs
no work (0 CPUs), a worker node marked as an A100 machine the way Ray marks accelerators (the
resource ``accelerator_type:A100``), and two plain one-CPU nodes. The control plane is the
real app with its job controller, driven over REST and the SDK.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import ray
from fastapi.testclient import TestClient
from ray.cluster_utils import Cluster

from gureum import samples
from gureum.client import Client
from gureum.compute.ray_backend import RayBackend
from gureum.config import Settings
from gureum.schemas.jobs import JobOut
from gureum.server.app import create_app
from gureum.server.services.bootstrap import bootstrap
from tests.conftest import free_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

DATASET = "digits"
# Tiny on purpose: the point is where the work runs, not what it learns.
PARAMS = {"epochs": 1, "image_size": 16, "width": 4, "batch_size": 32}
JOB_TIMEOUT_S = 180.0
# Ray marks a node's accelerator with this resource; a request for accelerator_type asks
# for a sliver of it (ray.util.accelerators).
A100 = "accelerator_type:A100"


@dataclass(frozen=True)
class Nodes:
    address: str
    head: str
    a100: str
    plain: tuple[str, ...]


@dataclass
class Env:
    nodes: Nodes
    http: TestClient
    client: Client

    def train(self, **body: Any) -> JobOut:
        body = {"kind": "train", "recipe": "image-classifier", "dataset": DATASET, **body}
        body.setdefault("params", PARAMS)
        body.setdefault("max_retries", 0)
        return self.client.jobs.submit(body)

    def wait(self, job_id: str) -> JobOut:
        job = self.client.jobs.wait(job_id, poll_s=0.5, timeout_s=JOB_TIMEOUT_S)
        if job.state != "succeeded":
            logs, _ = self.client.jobs.logs(job_id)
            pytest.fail(f"job {job_id} ended {job.state}: {job.error}\n{logs[-3000:]}")
        return job


@pytest.fixture(scope="module")
def cluster() -> Iterator[Nodes]:
    """Four simulated nodes; torn down (and the driver disconnected) after the module."""
    # ray.init is process-global and this session may be connected to another cluster (the
    # session's `ray_head`): disconnect, so that connect() below joins this one. Later modules'
    # connect() joins theirs again, since this module disconnects at the end.
    ray.shutdown()
    temp_dir = Path(tempfile.mkdtemp(prefix="gureum-ray-mn", dir="/tmp"))  # short socket paths
    common: dict[str, Any] = {"temp_dir": str(temp_dir), "object_store_memory": 100 * 1024**2}
    head_args = {
        **common,
        "num_cpus": 0,
        "gcs_server_port": free_port(),  # never Ray's default 6379 (Redis lives there)
        "dashboard_agent_listen_port": free_port(),
        "include_dashboard": False,
        "env_vars": {"RAY_USAGE_STATS_ENABLED": "0"},
    }
    # Cluster writes (and at shutdown deletes) /tmp/ray/ray_current_cluster, the file a bare
    # `ray.init()` anywhere on this machine would follow: keep other Ray users out of it.
    with (
        mock.patch("ray._private.utils.write_ray_address"),
        mock.patch("ray._common.utils.reset_ray_address"),
    ):
        c = Cluster(initialize_head=True, head_node_args=head_args, shutdown_at_exit=True)
        try:
            a100 = c.add_node(**common, num_cpus=1, resources={A100: 1})
            plain = [c.add_node(**common, num_cpus=1) for _ in range(2)]
            c.wait_for_nodes()
            assert c.head_node is not None
            yield Nodes(
                address=c.address,
                head=c.head_node.node_id,
                a100=a100.node_id,
                plain=tuple(n.node_id for n in plain),
            )
        finally:
            ray.shutdown()
            c.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def env(cluster: Nodes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("multinode")
    home = root / "home"
    settings = Settings(
        home=home, database_url=f"sqlite:///{root / 'gureum.db'}", artifacts=str(home / "art")
    )
    app = create_app(settings, compute=RayBackend(cluster.address))
    token = bootstrap(app.state.db)
    assert token is not None
    with TestClient(app, raise_server_exceptions=False) as http:  # runs the job controller
        http.headers["Authorization"] = f"Bearer {token}"
        client = Client("http://testserver", token, http=http)
        samples.write(DATASET, root / DATASET, count=200)
        client.datasets.push(DATASET, root / DATASET)
        yield Env(cluster, http, client)
    app.state.db.dispose()


def test_the_driver_sees_the_simulated_nodes(env: Env) -> None:
    alive = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    nodes = env.nodes
    assert set(alive) == {nodes.head, nodes.a100, *nodes.plain}
    assert alive[nodes.a100][A100] == 1
    assert not any(A100 in alive[n] for n in (nodes.head, *nodes.plain))


def _nodes_ran_on(env: Env, job_id: str) -> list[str]:
    """The node of each attempt's rank 0, from the job's "running" events."""
    events = env.client.jobs.events(job_id)
    return [e.data["node_id"] for e in events if e.kind == "state" and "node_id" in e.data]


def test_a100_jobs_run_only_on_the_a100_node(env: Env) -> None:
    # Two at once: the second waits for the A100 node's only CPU although two plain nodes sit
    # idle, so a placement that ignored the accelerator would show on one of them.
    jobs = [env.train(resources={"cpus": 1, "accelerator_type": "A100"}) for _ in range(2)]
    for job in jobs:
        done = env.wait(job.id)
        assert done.resources.accelerator_type == "A100"
        assert done.model_version is not None
        assert _nodes_ran_on(env, job.id) == [env.nodes.a100]


def test_an_accelerator_no_node_has_is_refused_at_submission(env: Env) -> None:
    r = env.http.post(
        "/v1/jobs",
        json={
            "recipe": "image-classifier",
            "dataset": DATASET,
            "params": PARAMS,
            "resources": {"cpus": 1, "accelerator_type": "H100"},
        },
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "unschedulable"
    assert "H100" in error["message"]
    assert error["details"]["resources"]["accelerator_type"] == "H100"
    assert all(j.resources.accelerator_type != "H100" for j in env.client.jobs.list())


def _train_workers() -> list[dict[str, Any]]:
    """Every Ray Train worker actor the cluster has had, alive or dead, from the GCS actor
    table (``ray.util.state.list_actors`` would need the dashboard, which this cluster does not
    start, to stay light on a small machine)."""
    actors: dict[str, dict[str, Any]] = ray._private.state.actors()
    return [a for a in actors.values() if a["ActorClassName"].endswith("RayTrainWorker")]


def test_a_two_worker_job_spans_two_nodes(env: Env) -> None:
    before = {a["ActorID"] for a in _train_workers()}
    job = env.train(workers=2, resources={"cpus": 1})
    done = env.wait(job.id)
    assert done.workers == 2 and done.attempt == 1
    assert "accuracy" in done.metrics
    assert done.model_version is not None

    workers = [a for a in _train_workers() if a["ActorID"] not in before]
    assert len(workers) == 2
    placed = {a["Address"]["NodeID"] for a in workers}
    assert len(placed) == 2
    assert placed <= {env.nodes.a100, *env.nodes.plain}
    # The job's own account agrees: rank 0 started on one of those nodes.
    started = _nodes_ran_on(env, job.id)
    assert len(started) == 1 and started[0] in placed
