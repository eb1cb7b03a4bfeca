"""The node autoscaling policy: which bundles Ray's autoscaler is asked for (what runs, what
waits and may start, replicas), what a workspace's quota or budget holds back, and the node
types read from an autoscaling config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gureum.compute import node_demand
from gureum.compute.fake_cluster import FakeCluster, FakeNodeType, write_config
from gureum.compute.node_demand import (
    JobLoad,
    Limits,
    NodeType,
    NodeTypesError,
    jobs_demand,
    load_node_types,
    possible_nodes,
    replicas_demand,
    request,
)
from gureum.compute.resources import NodeInfo, unplaceable
from gureum.schemas.jobs import Resources

CPU2 = NodeType("cpu2", {"CPU": 2.0}, 2)
GPU = NodeType("gpu", {"CPU": 4.0, "GPU": 1.0}, 1)
HEAD = NodeInfo("head", {"CPU": 0.0})


def load(
    job_id: str, cpus: float = 1, *, ws: int = 1, active: bool = False, **kw: object
) -> JobLoad:
    gpus = float(kw.pop("gpus", 0))  # type: ignore[arg-type]
    workers = int(kw.pop("workers", 1))  # type: ignore[call-overload]
    recipe = str(kw.pop("recipe", "tabular"))
    return JobLoad(job_id, ws, Resources(cpus=cpus, gpus=gpus), workers, active, recipe)


def test_a_queued_job_asks_for_its_workers_on_top_of_what_runs() -> None:
    jobs = [load("run", 2, active=True), load("q", 1, workers=2)]
    assert jobs_demand(jobs, {}) == [{"CPU": 2.0}, {"CPU": 1.0}, {"CPU": 1.0}]


def test_nothing_waits_nothing_runs_nothing_is_asked() -> None:
    assert jobs_demand([], {}) == []
    assert request([]) == []


def test_a_script_jobs_ranks_ask_for_one_node() -> None:
    script = load("s", 1, workers=3, recipe="script")
    assert jobs_demand([script], {}) == [{"CPU": 3.0}]


def test_a_job_its_workspace_quota_would_hold_back_asks_for_no_node() -> None:
    limits = {1: Limits(max_cpus=3)}
    jobs = [load("run", 2, active=True), load("fits", 1), load("over", 1), load("other", 2, ws=2)]
    # ws 1 runs 2 CPUs: "fits" brings it to 3; "over" would make 4; ws 2 has no quota.
    assert jobs_demand(jobs, limits) == [{"CPU": 2.0}, {"CPU": 1.0}, {"CPU": 2.0}]


def test_concurrent_job_and_gpu_quotas_hold_too() -> None:
    jobs = [load("a", 1), load("b", 1), load("g", 1, gpus=2)]
    assert jobs_demand(jobs, {1: Limits(max_concurrent_jobs=1)}) == [{"CPU": 1.0}]
    assert jobs_demand([jobs[2]], {1: Limits(max_gpus=1)}) == []


def test_a_workspace_held_by_its_budget_asks_for_nothing_new() -> None:
    jobs = [load("run", 2, active=True), load("q", 1), load("w2", 1, ws=2)]
    # Its running job (stopping for the budget) still holds its node until it ends.
    assert jobs_demand(jobs, {}, held={1}) == [{"CPU": 2.0}, {"CPU": 1.0}]


def test_replicas_running_and_waiting_each_ask() -> None:
    assert replicas_demand([({"CPU": 1.0, "GPU": 0.5}, 2), ({"CPU": 2.0}, 0)]) == [
        {"CPU": 1.0, "GPU": 0.5},
        {"CPU": 1.0, "GPU": 0.5},
    ]


def test_bundles_no_node_could_hold_are_left_out_and_the_request_is_capped() -> None:
    nodes = [HEAD, *possible_nodes([CPU2])]
    wanted = [{"CPU": 2.0}, {"CPU": 3.0}, {"CPU": 0.0}, {"CPU": 1.0, "GPU": 0.0}]
    assert request(wanted, nodes) == [{"CPU": 2.0}, {"CPU": 1.0}]
    assert request([{"CPU": 1.0}] * 5, nodes, limit=3) == [{"CPU": 1.0}] * 3
    # Nothing known about the cluster: everything is asked for; Ray decides.
    assert request([{"CPU": 3.0}]) == [{"CPU": 3.0}]


def test_a_job_that_fits_a_node_type_is_placeable_and_one_that_fits_none_is_not() -> None:
    nodes = [HEAD, *possible_nodes([CPU2, GPU])]
    assert unplaceable(Resources(cpus=2), 1, [HEAD]) is not None  # the head alone: never
    assert unplaceable(Resources(cpus=2), 1, nodes) is None
    assert unplaceable(Resources(cpus=4, gpus=1), 1, nodes) is None
    assert unplaceable(Resources(cpus=5), 1, nodes) is not None
    # Two cpu2 nodes at most, one 4-CPU GPU node: 2 + 2 slots of 2 CPUs, not 5.
    assert unplaceable(Resources(cpus=2), 4, nodes) is None
    assert unplaceable(Resources(cpus=2), 5, nodes) is not None


def test_node_types_come_from_the_autoscaling_config_without_the_head(tmp_path: Path) -> None:
    cluster = FakeCluster((FakeNodeType("cpu2", {"CPU": 2}, 2), FakeNodeType("none", {}, 0)))
    path = write_config(cluster, tmp_path / "fake.yaml", "127.0.0.1:1234")
    types = load_node_types(path)
    assert types == [NodeType("cpu2", {"CPU": 2.0}, 2)]  # object_store_memory is no resource
    config = json.loads(path.read_text())
    assert config["provider"]["gcs_address"] == "127.0.0.1:1234"
    assert config["available_node_types"]["ray.head.default"]["resources"] == {"CPU": 0}


def test_the_cluster_wide_max_workers_caps_each_type(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "max_workers: 3\nhead_node_type: h\navailable_node_types:\n"
        "  h: {resources: {CPU: 1}}\n"
        "  big: {resources: {CPU: 8}, max_workers: 10}\n"
        "  small: {resources: {CPU: 1}}\n"
    )
    assert load_node_types(path) == [
        NodeType("big", {"CPU": 8.0}, 3),
        NodeType("small", {"CPU": 1.0}, 3),
    ]


@pytest.mark.parametrize(
    "text", ["", "available_node_types: 3\n", "available_node_types:\n  a: {max_workers: x}\n"]
)
def test_an_unusable_config_is_a_clear_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(NodeTypesError, match=str(path)):
        load_node_types(path)
    with pytest.raises(NodeTypesError, match="cannot read"):
        load_node_types(tmp_path / "missing.yaml")


def test_summary_adds_the_bundles_up() -> None:
    assert node_demand.summary([{"CPU": 2.0}, {"CPU": 1.0, "GPU": 1.0}]) == {
        "CPU": 3.0,
        "GPU": 1.0,
    }
