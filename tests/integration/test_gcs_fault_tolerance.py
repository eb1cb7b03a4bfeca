"""Ray's GCS fault tolerance with this machine's Redis: the head's control service is killed and
started again while a job runs on a worker node, and the job carries on to success, once.

The cluster is simulated with ``ray.cluster_utils.Cluster`` (a head with no CPU, one worker node)
whose GCS keeps its tables in Redis under a namespace of this test's own (the environment
``compute.gcs_storage.head_env`` gives a head gureum starts); the GCS is killed and restarted
the way Ray's own fault-tolerance tests do it (``kill_gcs_server`` / ``start_gcs_server`` on the
head node, same port). The control plane is the real app with its job controller, driven over
REST and the SDK. Every key the test left in Redis is deleted afterwards.

Redis: ``GUREUM_TEST_REDIS_ADDRESS`` (default 127.0.0.1:6379, no password). Without it the
tests skip, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import ray
from fastapi.testclient import TestClient
from ray.cluster_utils import Cluster

from gureum.client import Client
from gureum.compute import gcs_storage, local_ray
from gureum.compute.gcs_storage import GcsStorage
from gureum.compute.local_ray import start_head, stop_head
from gureum.compute.ray_backend import RayBackend
from gureum.config import Settings
from gureum.server.app import create_app
from gureum.server.services.bootstrap import bootstrap
from tests.conftest import free_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

REDIS = os.environ.get("GUREUM_TEST_REDIS_ADDRESS", "127.0.0.1:6379")
EPOCHS = 24  # half a second each: the job runs ~12 s, long enough to restart the GCS under it


def redis_command(*args: str) -> Any:
    """One command to the test Redis over RESP (no client library needed): str, int or list."""
    host, port, _ = gcs_storage.parse(REDIS)
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(payload.encode())
        return _read(sock.makefile("rb"))


def _read(f: Any) -> Any:
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind in (b"+", b":"):
        return int(rest) if kind == b":" else rest.decode()
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode(errors="replace")
    if kind == b"*":
        return [_read(f) for _ in range(int(rest))]
    raise RuntimeError(f"unexpected Redis reply {line!r}")


def keys_of(namespace: str) -> list[str]:
    """The keys Ray's GCS keeps for ``namespace`` (``RAY<namespace>@<table>``)."""
    keys: list[str] = redis_command("KEYS", f"RAY{namespace}@*")
    return keys


@pytest.fixture(scope="module")
def redis() -> str:
    host, port, _ = gcs_storage.parse(REDIS)
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        if os.environ.get("CI"):
            pytest.fail(f"no Redis at {REDIS} (GUREUM_TEST_REDIS_ADDRESS)")
        pytest.skip(f"no Redis at {REDIS} (GUREUM_TEST_REDIS_ADDRESS)")
    return REDIS


@pytest.fixture
def storage(redis: str) -> Iterator[GcsStorage]:
    """A namespace of this test's own; whatever is left under it is deleted at the end."""
    s = GcsStorage(address=redis, namespace=f"gureum-test-{secrets.token_hex(6)}")
    try:
        yield s
    finally:
        gcs_storage.clear(s)
        assert keys_of(s.namespace) == []


def _checkpoints(client: Client, job_id: str) -> int:
    return sum(
        "checkpoint" in e.message and "saved" in e.message for e in client.jobs.events(job_id)
    )


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.3)


@dataclass
class FtCluster:
    cluster: Cluster
    address: str  # the GCS's, the same before and after its restart
    worker: str  # the worker node's id: the only node that offers CPUs


@pytest.fixture
def ft_cluster(storage: GcsStorage) -> Iterator[FtCluster]:
    """A head with no CPU and one 2-CPU worker node, the GCS's tables in Redis."""
    ray.shutdown()  # this process may be a driver of the session's head: join this one instead
    temp_dir = Path(tempfile.mkdtemp(prefix="gureum-ray-ft", dir="/tmp"))  # short socket paths
    common: dict[str, Any] = {"temp_dir": str(temp_dir), "object_store_memory": 100 * 1024**2}
    head_args = {
        **common,
        "num_cpus": 0,
        # Fixed, so the restarted GCS answers where raylets and drivers look for it; never
        # Ray's default 6379 (Redis lives there).
        "gcs_server_port": free_port(),
        "dashboard_agent_listen_port": free_port(),
        "include_dashboard": False,
        "env_vars": {"RAY_USAGE_STATS_ENABLED": "0"},
    }
    # The GCS reads its storage from its environment, at its first start and at its restart.
    # Cluster writes (and at shutdown deletes) /tmp/ray/ray_current_cluster: keep out of it.
    with (
        mock.patch.dict(os.environ, gcs_storage.head_env(storage)),
        mock.patch("ray._private.utils.write_ray_address"),
        mock.patch("ray._common.utils.reset_ray_address"),
    ):
        c = Cluster(initialize_head=True, head_node_args=head_args, shutdown_at_exit=True)
        try:
            worker = c.add_node(**common, num_cpus=2)
            c.wait_for_nodes()
            yield FtCluster(c, c.address, worker.node_id)
        finally:
            ray.shutdown()
            c.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def _script(root: Path, epochs: int) -> Path:
    """Half-second epochs with a checkpoint after each; says whether it started fresh."""
    code = root / f"sleepy{epochs}"
    code.mkdir(exist_ok=True)
    (code / "main.py").write_text(
        f"""
import time
import gureum.run as run
state = run.load_checkpoint()
start = 1 if state is None else state["epoch"] + 1
print("starting fresh" if state is None else f"resumed at epoch {{state['epoch']}}", flush=True)
for epoch in range(start, {epochs + 1}):
    time.sleep(0.5)
    run.save_checkpoint({{"epoch": epoch}})
    run.log_metrics({{"loss": 1.0 / epoch}}, step=epoch, epoch=epoch)
(run.model_dir() / "w.bin").write_bytes(b"w")
run.register_model(metrics={{"epochs": {float(epochs)}}})
"""
    )
    return code


def test_a_job_survives_a_restart_of_the_gcs(
    ft_cluster: FtCluster, storage: GcsStorage, tmp_path: Path, database_url: str
) -> None:
    head = ft_cluster.cluster.head_node
    assert head is not None
    home = tmp_path / "home"
    settings = Settings(home=home, database_url=database_url, artifacts=str(home / "art"))
    app = create_app(settings, compute=RayBackend(ft_cluster.address))
    token = bootstrap(app.state.db)
    assert token is not None
    try:
        with TestClient(app, raise_server_exceptions=False) as http:  # runs the job controller
            http.headers["Authorization"] = f"Bearer {token}"
            client = Client("http://testserver", token, http=http)
            # The GCS keeps its tables in Redis, under this cluster's namespace only.
            assert keys_of(storage.namespace)
            job = client.jobs.train(
                "script",
                None,
                code_dir=_script(tmp_path, EPOCHS),
                resources={"cpus": 1},
                max_retries=1,  # a lost attempt would be retried: attempt 2 would show it
            )
            wait_for(
                lambda: any("checkpoint 2 saved" in e.message for e in client.jobs.events(job.id)),
                timeout=90,
                what="the job's second checkpoint",
            )
            before = _checkpoints(client, job.id)
            head.kill_gcs_server()
            assert not local_ray.reachable(ft_cluster.address)
            time.sleep(3.0)  # the job goes on without its control service meanwhile
            during = _checkpoints(client, job.id)
            # Reports travel from the supervisor to the controller without the GCS.
            assert during > before, "no report of the job was stored while the GCS was down"
            head.start_gcs_server()
            assert keys_of(storage.namespace)

            done = client.jobs.wait(job.id, poll_s=0.5, timeout_s=120)
            events = client.jobs.events(job.id)
            messages = [f"{e.kind}: {e.message}" for e in events]
            assert done.state == "succeeded", (done.error, messages)
            assert done.attempt == 1, messages  # not lost, not run again
            assert not any(e.kind == "retry" for e in events), messages
            started = [
                e.data["node_id"] for e in events if e.kind == "state" and "node_id" in e.data
            ]
            assert started == [ft_cluster.worker], messages
            log = client.jobs.logs(job.id)[0]
            assert log.count("starting fresh") == 1 and "resumed" not in log, log[-2000:]
            assert done.model_version is not None

            # The API server's connection to Ray works after the restart: it asks the new GCS
            # for the nodes (the worker node re-registered), and a new job is admitted,
            # launched and followed to success.
            alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
            assert ft_cluster.worker in alive
            after = client.jobs.train(
                "script", None, code_dir=_script(tmp_path, 2), resources={"cpus": 1}
            )
            again = client.jobs.wait(after.id, poll_s=0.5, timeout_s=90)
            assert again.state == "succeeded" and again.attempt == 1, again.error
    finally:
        app.state.db.dispose()


def test_a_head_gureum_starts_keeps_its_gcs_in_redis_and_a_new_one_starts_clean(
    storage: GcsStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``start_head`` with storage: the GCS writes under the namespace, a stale namespace is
    cleared before a new head uses it; without storage a stray RAY_REDIS_ADDRESS in the
    environment is not passed on (the setting is the one switch)."""
    monkeypatch.setenv("RAY_REDIS_ADDRESS", "127.0.0.1:1")  # would hang a head that used it
    # A dead cluster's leftovers under the namespace: a new head must not load them.
    redis_command("HSET", f"RAY{storage.namespace}@STALE", "k", "v")
    temp_dir = Path(tempfile.mkdtemp(prefix="gureum-ray-fs", dir="/tmp"))
    head = start_head(temp_dir, tmp_path / "ray.log", num_cpus=0, storage=storage)
    try:
        assert head.gcs_storage == storage
        keys = keys_of(storage.namespace)
        assert keys and f"RAY{storage.namespace}@STALE" not in keys, keys
    finally:
        stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
    plain = start_head(
        Path(tempfile.mkdtemp(prefix="gureum-ray-fp", dir="/tmp")),
        tmp_path / "ray2.log",
        num_cpus=0,
    )
    try:
        assert plain.gcs_storage is None  # started (a head that took 127.0.0.1:1 would not)
    finally:
        stop_head(plain)
        shutil.rmtree(plain.temp_dir, ignore_errors=True)
