"""The pool's choice of jobs to preempt for a replica Ray cannot place, and the controller's
tick over fakes: who starves, how much is taken, nothing preempted in vain; the headroom kept
for serving's next replicas; guaranteed shares taken back through the queue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gureum.config import Settings
from gureum.schemas.endpoints import ReplicaResources
from gureum.server.controllers.pool import PLACING_S, PoolController, placed_unseen, serving_room
from gureum.server.services.preemption import (
    Candidate,
    Share,
    borrowing,
    choose_victims,
    fits,
    replica_demand,
)
from gureum.server.services.share_reclaim import Waiting, reclaims, within_share_first
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
    ws: int = 1,
) -> Candidate:
    need = {"CPU": cpus} | ({"GPU": gpus} if gpus else {})
    return Candidate(job_id, priority, need, NOW - timedelta(seconds=ran_s), preemptible, ws)


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


# -- guaranteed shares and borrowing -----------------------------------------------------------


def borrowed(running: list[Candidate], shares: dict[int, Share]) -> set[str]:
    return {c.job_id for c in borrowing(running, shares) if c.borrowed}


def test_without_shares_everything_is_borrowed_and_the_order_is_unchanged() -> None:
    running = [job("a", 2, ws=1), job("b", 2, ws=2, priority=-1)]
    assert borrowed(running, {}) == {"a", "b"}
    assert ids(choose_victims({"CPU": 2}, {}, borrowing(running, {}), NOW, 60)) == ["b"]


def test_a_share_covers_the_highest_priority_then_the_oldest_jobs() -> None:
    running = [
        job("old", 2, ran_s=3600),
        job("new", 2, ran_s=600),
        job("vip", 2, ran_s=60, priority=9),
        job("tiny", 1, ran_s=30),
    ]
    # 4 CPUs: vip (highest priority), then old (oldest); new does not fit, tiny would not
    # either once old is in (5 > 4): both borrowed.
    assert borrowed(running, {1: Share(cpus=4)}) == {"new", "tiny"}
    # 5 CPUs: new still does not fit after vip and old, but the 1-CPU job does (first fit).
    assert borrowed(running, {1: Share(cpus=5)}) == {"new"}
    assert borrowed(running, {1: Share(cpus=100)}) == set()
    assert borrowed(running, {2: Share(cpus=100)}) == {"old", "new", "vip", "tiny"}


def test_gpus_beyond_the_share_are_borrowed_even_with_cpus_to_spare() -> None:
    running = [job("g", 1, gpus=2), job("c", 1)]
    assert borrowed(running, {1: Share(cpus=8, gpus=1)}) == {"g"}
    assert borrowed(running, {1: Share(cpus=8, gpus=2)}) == set()


def test_borrowed_jobs_are_preempted_before_jobs_within_a_share_whatever_their_priority() -> None:
    running = borrowing(
        [
            job("guaranteed", 2, ws=1, priority=-9),  # lowest priority, but within its share
            job("borrower", 2, ws=2, priority=5),  # workspace 2 has no share: all borrowed
        ],
        {1: Share(cpus=2)},
    )
    assert ids(choose_victims({"CPU": 2}, {}, running, NOW, 60)) == ["borrower"]


def test_a_job_within_its_share_goes_only_when_borrowed_capacity_cannot_make_room() -> None:
    shares = {1: Share(cpus=4)}
    running = borrowing([job("mine", 4, ws=1), job("b1", 1, ws=2), job("b2", 1, ws=2)], shares)
    assert ids(choose_victims({"CPU": 2}, {}, running, NOW, 60)) == ["b1", "b2"]
    # 3 CPUs: both borrowers together hold 2, not enough: the guaranteed job must go, and
    # then the borrowers are not needed (just enough).
    assert ids(choose_victims({"CPU": 3}, {}, running, NOW, 60)) == ["mine"]
    # Borrowers that cannot be preempted yet (minimum run time) do not shield anyone else.
    young = borrowing([job("mine", 4, ws=1), job("b", 2, ws=2, ran_s=10)], shares)
    assert ids(choose_victims({"CPU": 2}, {}, young, NOW, 60)) == ["mine"]


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


# -- serving headroom ----------------------------------------------------------------------------


def _apps(**config: object) -> dict[str, tuple[int, dict[str, object]]]:
    base: dict[str, object] = {"resources": {"cpus": 1}, "autoscaling": {"max_replicas": 3}}
    return {"ep-1": (1, base | config), "ep-2": (2, base | config)}


def test_headroom_is_the_next_replica_of_each_endpoint_that_serves_and_may_grow() -> None:
    states = {
        "ep-1": AppState("RUNNING", "", 1, 1, replicas=1),
        "ep-2": AppState("RUNNING", "", 3, 2, replicas=3),  # at max_replicas: nothing more
        "ep-9": AppState("RUNNING", "", 1, 9, replicas=1),  # not one of ours
    }
    unplaced, headroom = serving_room(states, _apps(), Settings())
    assert unplaced == {} and headroom == {"ep-1": (1, {"CPU": 1.0})}
    two = serving_room(states, _apps(), Settings(serving_headroom_replicas=2))[1]
    assert two == {"ep-1": (1, {"CPU": 2.0})}
    assert serving_room(states, _apps(), Settings(serving_headroom_replicas=0))[1] == {}


def test_headroom_counts_replicas_placed_but_not_running_and_keeps_waiting_ones() -> None:
    states = {
        # 1 running, 1 placed and loading, 1 waiting for room: max 3 reached, no headroom.
        "ep-1": AppState("RUNNING", "", 1, 1, starting=1, starting_since=1.0, replicas=3),
        # Scaled to zero: serves nothing, keeps no headroom.
        "ep-2": AppState("RUNNING", "", 0, 2, replicas=0),
    }
    unplaced, headroom = serving_room(states, _apps(), Settings())
    assert unplaced == {"CPU": 1.0} and headroom == {}
    # A fake backend that does not count replicas: running + waiting is the floor.
    legacy = {"ep-1": AppState("RUNNING", "", 1, 1, starting=1, starting_since=1.0)}
    assert serving_room(legacy, _apps(), Settings())[1] == {"ep-1": (1, {"CPU": 1.0})}


def test_the_headroom_of_all_endpoints_together_is_capped() -> None:
    states = {
        "ep-1": AppState("RUNNING", "", 1, 1, replicas=1),
        "ep-2": AppState("RUNNING", "", 1, 2, replicas=1),
    }
    capped = serving_room(states, _apps(), Settings(serving_headroom_max_cpus=1.5))[1]
    assert list(capped) == ["ep-1"]
    gpu = _apps(resources={"cpus": 1, "gpus": 1})
    assert serving_room(states, gpu, Settings(serving_headroom_max_gpus=0))[1] == {}


# -- guaranteed shares taken back ----------------------------------------------------------------


def test_a_job_within_its_share_takes_back_only_what_others_borrowed() -> None:
    shares = {1: Share(cpus=4)}
    running = borrowing(
        [
            job("lent-low", 2, ws=2, priority=-5),
            job("lent-high", 2, ws=2, priority=5),
            job("pinned", 2, ws=2, priority=-9, preemptible=False),
            job("young", 2, ws=2, priority=-9, ran_s=10),
            job("own", 2, ws=3, priority=-9),
        ],
        shares | {3: Share(cpus=2)},
    )
    wanted = Waiting("q", 1, 0, {"CPU": 2})
    out = reclaims([wanted], {}, running, {}, shares, NOW, 60)
    # ws 3's job is within its own share; pinned and young cannot go: the lowest priority
    # among the rest.
    assert [(w.job_id, ids(v)) for w, v in out] == [("q", ["lent-low"])]
    # Beyond the share (4 used already): it waits like any other job, nothing is preempted.
    assert reclaims([wanted], {}, running, {1: {"CPU": 4}}, shares, NOW, 60) == []
    # No share at all, or room enough already: nothing either.
    assert reclaims([wanted], {}, running, {}, {}, NOW, 60) == []
    assert reclaims([wanted], {"CPU": 2}, running, {}, shares, NOW, 60) == []


def test_reclaims_follow_the_queue_and_take_nothing_in_vain() -> None:
    shares = {1: Share(cpus=6)}
    running = borrowing([job("a", 2, ws=2, priority=1), job("b", 2, ws=2, priority=2)], {})
    queue = [Waiting("first", 1, 5, {"CPU": 2}), Waiting("second", 1, 1, {"CPU": 2})]
    out = reclaims(queue, {"CPU": 1}, running, {}, shares, NOW, 60)
    assert [(w.job_id, ids(v)) for w, v in out] == [("first", ["a"]), ("second", ["b"])]
    big = [Waiting("huge", 1, 5, {"CPU": 6})]  # all borrowers together are not enough
    assert reclaims(big, {"CPU": 1}, running, {}, shares, NOW, 60) == []


def test_the_queue_puts_jobs_within_their_share_before_borrowers() -> None:
    queue = [
        Waiting("borrower", 2, 9, {"CPU": 2}),
        Waiting("mine-1", 1, 1, {"CPU": 2}),
        Waiting("mine-2", 1, 0, {"CPU": 2}),  # beyond the share once mine-1 is in
    ]
    order = within_share_first(queue, {}, {1: Share(cpus=3)}, lambda w: w.need)
    assert [w.job_id for w in order] == ["mine-1", "borrower", "mine-2"]
    assert within_share_first(queue, {}, {}, lambda w: w.need) == queue


def test_a_replica_whose_room_ray_already_handed_out_counts_as_placed() -> None:
    """Ray shows a placed replica without a node until its worker has started: what Ray has
    handed out beyond the jobs and the replicas with a node pays for it."""
    # 2 CPUs of jobs, ep-1: 1 running + 1 without a node; ep-2: 1 without a node.
    states = {
        "ep-1": AppState("RUNNING", "", 1, 1, starting=1, starting_since=100.0, replicas=2),
        "ep-2": AppState("RUNNING", "", 0, 2, starting=1, starting_since=101.0, replicas=1),
    }
    jobs = {"CPU": 2.0}
    # 3 CPUs handed out: jobs and ep-1's running replica; both waiting replicas wait.
    assert placed_unseen(states, _apps(), {"CPU": 3.0}, jobs, 102.0) == {}
    # 4: one more, the oldest waiting replica's (ep-1); 5: both.
    assert placed_unseen(states, _apps(), {"CPU": 4.0}, jobs, 102.0) == {"ep-1": 1}
    assert placed_unseen(states, _apps(), {"CPU": 5.0}, jobs, 102.0) == {"ep-1": 1, "ep-2": 1}
    # Waiting longer than PLACING_S: room taken by something else no longer delays it.
    late = 100.0 + PLACING_S + 1
    assert placed_unseen(states, _apps(), {"CPU": 5.0}, jobs, late) == {}
    # Applications of another control plane are neither explained nor placed.
    assert placed_unseen({"ep-9": states["ep-1"]}, _apps(), {"CPU": 9.0}, jobs, 102.0) == {}
