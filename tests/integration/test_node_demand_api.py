"""Node autoscaling over REST against a fake compute engine (a head with no CPUs): what is
accepted given the node types the autoscaler may add, what Ray's autoscaler is asked for as
jobs queue, are held by their workspace's quota and end, and that the request is cleared.
Real databases (SQLite and PostgreSQL), no Ray; tests/integration/test_node_autoscaling.py
runs the same on Ray's fake multi-node cluster."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gureum import samples
from gureum.client import Client
from gureum.compute.fake_cluster import FakeCluster, FakeNodeType, write_config
from gureum.compute.node_demand import Bundle
from gureum.config import Settings
from gureum.server.app import create_app
from gureum.server.controllers.nodes import NodeController
from gureum.server.services.bootstrap import DEFAULT_WORKSPACE, bootstrap
from gureum.serving.backend import AppState, app_name
from tests.integration.test_endpoints_api import Env as EndpointsEnv
from tests.integration.test_endpoints_api import make_env
from tests.integration.test_job_controller import FakeBackend

CLUSTER = FakeCluster((FakeNodeType("cpu2", {"CPU": 2}, 2),))


@dataclass
class Env:
    http: TestClient
    asked: list[list[Bundle]]

    def submit(self, **body: Any) -> Any:
        body = {"recipe": "tabular", "dataset": "orders", "params": {"target": "returned"}, **body}
        return self.http.post("/v1/jobs", json=body)

    def queued(self, **body: Any) -> str:
        r = self.submit(**body)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def cancel(self, job_id: str) -> None:
        assert self.http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200

    def asked_for(self, bundles: list[Bundle], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.asked and self.asked[-1] == bundles:
                return
            time.sleep(0.05)
        pytest.fail(f"the autoscaler was asked for {self.asked[-3:]}, not {bundles}")


def _app(settings: Settings, tmp_path: Path, asked: list[list[Bundle]]) -> tuple[Any, str]:
    app = create_app(settings, compute=FakeBackend(cpus=0))
    jobs = app.state.jobs
    # The controller the app would make, sending to a list instead of Ray's autoscaler.
    app.state.nodes = NodeController(app.state.db, asked.append, nodes=jobs.nodes, tick_s=0.05)
    token = bootstrap(app.state.db)
    assert token is not None
    return app, token


@pytest.fixture
def env(settings: Settings, tmp_path: Path) -> Iterator[Env]:
    config = write_config(CLUSTER, tmp_path / "autoscaling.yaml", "127.0.0.1:1")
    settings = settings.model_copy(update={"autoscaling_config": str(config)})
    asked: list[list[Bundle]] = []
    app, token = _app(settings, tmp_path, asked)
    with TestClient(app, raise_server_exceptions=False) as http:  # runs the controllers
        http.headers["Authorization"] = f"Bearer {token}"
        samples.write("tabular", tmp_path / "orders", count=100)
        Client("http://testserver", token, http=http).datasets.push("orders", tmp_path / "orders")
        yield Env(http, asked)
    app.state.db.dispose()


def test_a_job_only_a_node_to_be_added_could_run_queues_and_asks_for_that_node(env: Env) -> None:
    job = env.queued(resources={"cpus": 2})
    env.asked_for([{"CPU": 2.0}])
    assert env.http.get(f"/v1/jobs/{job}").json()["state"] == "queued"
    env.cancel(job)
    env.asked_for([])  # nothing waits: the request is cleared, idle nodes may go


def test_a_job_no_node_type_fits_is_refused_and_asks_for_nothing(env: Env) -> None:
    for body in ({"resources": {"cpus": 3}}, {"resources": {"cpus": 2}, "workers": 3}):
        r = env.submit(**body)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "unschedulable"
    r = env.submit(resources={"cpus": 3})
    assert "3 CPUs" in r.json()["error"]["message"]
    env.asked_for([])
    assert all(b == [] for b in env.asked)


def test_a_job_its_quota_holds_back_asks_for_no_node_until_the_quota_allows(env: Env) -> None:
    r = env.http.put(f"/v1/workspaces/{DEFAULT_WORKSPACE}/quotas", json={"max_cpus": 2})
    assert r.status_code == 200, r.text
    first = env.queued(resources={"cpus": 2}, priority=5)
    second = env.queued(resources={"cpus": 2})
    env.asked_for([{"CPU": 2.0}])  # one node: the quota lets only one of them run
    env.cancel(first)
    env.asked_for([{"CPU": 2.0}])  # now the second's
    r = env.http.put(f"/v1/workspaces/{DEFAULT_WORKSPACE}/quotas", json={"max_cpus": 4})
    third = env.queued(resources={"cpus": 2})
    env.asked_for([{"CPU": 2.0}, {"CPU": 2.0}])
    for job in (second, third):
        env.cancel(job)
    env.asked_for([])


def test_without_the_autoscaling_config_only_present_nodes_count(
    settings: Settings, tmp_path: Path
) -> None:
    asked: list[list[Bundle]] = []
    app, token = _app(settings, tmp_path, asked)
    with TestClient(app, raise_server_exceptions=False) as http:
        http.headers["Authorization"] = f"Bearer {token}"
        samples.write("tabular", tmp_path / "orders", count=100)
        Client("http://testserver", token, http=http).datasets.push("orders", tmp_path / "orders")
        r = Env(http, asked).submit(resources={"cpus": 2})
        assert r.status_code == 422, r.text
        assert "no node of the cluster can ever provide" in r.json()["error"]["message"]
    app.state.db.dispose()


def test_an_unreadable_autoscaling_config_stops_the_server_with_a_clear_error(
    settings: Settings, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_name: x\n")
    with pytest.raises(ValueError, match="no available_node_types"):
        create_app(settings.model_copy(update={"autoscaling_config": str(bad)}))


@pytest.fixture
def serving(settings: Settings) -> Iterator[EndpointsEnv]:
    yield from make_env(settings)


def test_a_replica_waiting_for_a_node_asks_for_one_at_once(serving: EndpointsEnv) -> None:
    """Before the pool controller's ``preempt_after_s``: the replica asks on the first tick."""
    serving.deploy("m:1", config={"resources": {"cpus": 2}})
    ep_id = serving.row().id
    states = {
        app_name(ep_id): AppState("DEPLOYING", "", 0, ep_id, None, starting=1),
        # A Serve application another control plane made: not ours to ask for.
        "other": AppState("RUNNING", "", 3, 999, None),
    }
    asked: list[list[Bundle]] = []
    nodes = NodeController(serving.cloud.app.state.db, asked.append, replicas=lambda: states)
    nodes.tick()
    assert asked == [[{"CPU": 2.0}]]
    states[app_name(ep_id)] = AppState("RUNNING", "", 2, ep_id, None, starting=1)
    nodes.tick()
    assert asked[-1] == [{"CPU": 2.0}] * 3  # running replicas hold their nodes too
    nodes.tick()
    assert len(asked) == 2  # unchanged: not sent again
    r = serving.http.delete("/v1/endpoints/shop")
    assert r.status_code in (200, 202, 204), r.text
    nodes.tick()
    assert asked[-1] == []
