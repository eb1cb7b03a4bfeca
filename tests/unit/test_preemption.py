"""The pool's choice of jobs to preempt for a replica Ray cannot place, and the controller's
tick over fakes: who starves, how much is taken, nothing preempted in vain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gureum.config import Settings
from gureum.schemas.endpoints import ReplicaResources
from gureum.server.controllers.pool import PoolController
from gureum.server.services.preemption import Candidate, choose_victims, fits, replica_demand
from gureum.serving.backend import AppState

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
GiB = 1024**3


def job(
    job_id: str,
    cpus: float,
    *,
    priority: int = 0,
    ran_s: float = 600,
    preemptible: bool = True,
    gpus: float = 0,
) -> Candidate:
    need = {"CPU": cpus} | ({"GPU": gpus} if gpus else {})
    return Candidate(job_id, priority, need, NOW - timedelta(seconds=ran_s), preemptible)


def ids(victims: list[Candidate] | None) -> list[str] | None:
    return None if victims is None else [v.job_id for v in victims]


def test_nothing_is_preempted_when_the_replica_fits() -> None:
    assert choose_victims({"CPU": 1}, {"CPU": 1.5}, [job("a", 3)], NOW, 60) == []


def test_the_lowest_priority_goes_first_and_just_enough() -> None:
    running = [job("hi", 2, priority=5), job("lo", 2, priority=-1), job("mid", 2, priority=0)]
    assert ids(choose_victims({"CPU": 2}, {"CPU": 0.5}, running, NOW, 60)) == ["lo"]
    assert ids(choose_victims({"CPU": 4}, {"CPU": 0.5}, running, NOW, 60)) == ["lo", "mid"]


def test_among_equal_priorities_the_latest_started_goes_first() -> None:
    running = [job("old", 2, ran_s=3600), job("new", 2, ran_s=120)]
    assert ids(choose_victims({"CPU": 1}, {}, running, NOW, 60)) == ["new"]


def test_a_job_under_its_minimum_run_time_is_left_alone() -> None:
    running = [job("young", 4, ran_s=30), job("grown", 4, ran_s=90, priority=9)]
    assert ids(choose_victims({"CPU": 2}, {}, running, NOW, 60)) == ["grown"]
    assert choose_victims({"CPU": 2}, {}, [job("young", 4, ran_s=30)], NOW, 60) is None
    assert ids(choose_victims({"CPU": 2}, {}, [job("young", 4, ran_s=30)], NOW, 0)) == ["young"]


def test_a_non_preemptible_job_is_never_chosen() -> None:
    running = [job("pinned", 4, priority=-100, preemptible=False), job("free", 4, priority=50)]
    assert ids(choose_victims({"CPU": 2}, {}, running, NOW, 60)) == ["free"]
    assert choose_victims({"CPU": 2}, {}, running[:1], NOW, 60) is None


def test_not_enough_room_even_from_all_candidates_preempts_nothing() -> None:
    running = [job("a", 1), job("b", 1)]
    assert choose_victims({"CPU": 4}, {"CPU": 1}, running, NOW, 60) is None


def test_a_job_holding_nothing_the_replica_lacks_is_spared() -> None:
    running = [job("cpu-only", 8, priority=-5), job("gpu", 1, gpus=1, priority=3)]
    victims = choose_victims({"CPU": 1, "GPU": 1}, {"CPU": 4}, running, NOW, 60)
    assert ids(victims) == ["gpu"]


def test_an_early_victim_made_unneeded_by_a_later_one_is_spared() -> None:
    running = [job("small", 1, priority=-2), job("big", 4, priority=-1)]
    assert ids(choose_victims({"CPU": 4}, {}, running, NOW, 60)) == ["big"]


def test_replica_demand_names_ray_resources() -> None:
    r = ReplicaResources(cpus=0.25, gpus=1, memory_gb=2, accelerator_type="A100")
    assert replica_demand(r) == {
        "CPU": 0.25,
        "GPU": 1,
        "memory": 2 * GiB,
        "accelerator_type:A100": 0.001,
    }
    assert fits(replica_demand(ReplicaResources(cpus=1)), {"CPU": 1.0})


# -- the controller ----------------------------------------------------------------------------


def test_a_replica_starves_after_preempt_after_s() -> None:
    settings = Settings(preempt_after_s=10)
    states = {
        "ep-1": AppState("DEPLOYING", "", 0, 1, None, starting=1, starting_since=100.0),
        "ep-2": AppState("RUNNING", "", 1, 2, None, starting=1, starting_since=105.0),
        "ep-3": AppState("RUNNING", "", 2, 3, None),
    }
    pool = PoolController(None, lambda: states, dict, settings, lambda: None)  # type: ignore[arg-type]
    assert set(pool.starving(now_s=111.0)) == {"ep-1"}
    assert set(pool.starving(now_s=115.0)) == {"ep-1", "ep-2"}
    assert pool.starving(now_s=109.0) == {}
