"""The pool controller: one pool for serving and training, serving first.

Every tick it looks for endpoint replicas that Ray Serve has asked for but Ray has not placed
(no node has room) for longer than ``preempt_after_s`` (the time a node the autoscaler adds
would take to come). When the cluster's free resources, counting what jobs already asked to
stop will free, cannot hold one such replica, it preempts the lowest-priority running
training jobs that are preemptible and past ``preempt_min_run_s`` (``services.preemption``),
in one fenced write: the job controller stops them and queues them again with their
checkpoints, and Ray then places the replica in the room they left. Ray decides placement; this
decides who yields. A replica Ray has placed but still shows without a node (its worker
starting) is told apart by the cluster's use (``placed_unseen``) and preempts nothing.

Serving headroom (``serving_headroom_replicas``): for every endpoint application that serves
and may still scale up, room for its next replicas is kept free; the job queue does not start
jobs into it (``reserved``, which also holds the room of replicas Ray has not placed), so a
scale-up is placed at once. When a scale-up (or anything else) eats into it, the pool
preempts in the background, ``preempt_after_s`` later as for a waiting replica (and not before
HEADROOM_CONFIRM_S: a shortage for a tick is the views catching up), to restore it:
the preemption is off the replica's critical path. Guaranteed shares are taken back through
the queue (``services.share_reclaim``): a queued job within its workspace's share preempts
other workspaces' jobs on borrowed capacity.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from gureum.compute.resources import NodeInfo
from gureum.config import Settings
from gureum.schemas.endpoints import EndpointConfig
from gureum.server.controllers.loop import ControlLoop, Looped
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables_serving import Endpoint
from gureum.server.services import preemption, share_reclaim
from gureum.server.services.preemption import fits, plus
from gureum.serving.backend import AppState

log = logging.getLogger(__name__)
TICK_S = 1.0
# After room is made for a replica, how long (beyond the victims' checkpoint grace) Ray and the
# endpoint controller's view get to show it placed before that replica may preempt again.
SETTLE_S = 15.0
# A reservation older than this (the pool stopped ticking) no longer holds the queue back.
RESERVE_STALE_S = 10.0
# The headroom is restored only once it has been short this long (and ``preempt_after_s``):
# for a tick or two it can look taken while the cluster's views catch up (a job's CPU handed on
# as it ends, a replica placed but not yet seen), and a preemption for that costs a job its
# step and a restart for nothing. Off any replica's critical path, so waiting is cheap.
HEADROOM_CONFIRM_S = 3.0


# A replica Ray has placed shows no node until its worker process has started (seconds on a
# busy node: Python, Ray and the model server's imports). Within this time of the oldest
# waiting replica's start, waiting replicas whose room the cluster's use already pays for
# count as placed (``placed_unseen``).
PLACING_S = 15.0


def minus(free: Mapping[str, float], need: Mapping[str, float]) -> dict[str, float]:
    return plus(free, {k: -v for k, v in need.items()})


def _ours(
    name: str, st: AppState, endpoints: Mapping[str, tuple[int, dict[str, Any]]]
) -> dict[str, float] | None:
    """One replica's demand of an application of this control plane's endpoints, else None."""
    known = endpoints.get(name)
    if known is None or st.endpoint_id not in (None, known[0]):
        return None
    return preemption.replica_demand(EndpointConfig.model_validate(known[1]).resources)


def placed_unseen(
    states: Mapping[str, AppState],
    endpoints: Mapping[str, tuple[int, dict[str, Any]]],
    used: Mapping[str, float],
    jobs_held: Mapping[str, float],
    now_s: float,
) -> dict[str, int]:
    """Per application, how many of its replicas without a node Ray has placed already: what
    Ray has handed out (``used``) beyond what jobs and the replicas with a node hold pays for
    them, oldest application first. Without it, a replica placed in the headroom looked
    unplaced until its worker had started, and a job was preempted for room it already had.
    Only within PLACING_S of their start: room taken by something else (a validation task,
    another Ray user) delays a needed preemption by that long at most."""
    explained = dict(jobs_held)
    waiting: list[tuple[float, str, int, dict[str, float]]] = []
    for name, st in states.items():
        need = _ours(name, st, endpoints)
        if need is None:
            continue
        explained = plus(explained, *([need] * max(0, st.replicas - st.starting)))
        since = st.starting_since
        if st.starting > 0 and since is not None and now_s - since < PLACING_S:
            waiting.append((since, name, st.starting, need))
    left = minus(used, explained)
    placed: dict[str, int] = {}
    for _, name, n, need in sorted(waiting, key=lambda w: (w[0], w[1])):
        while placed.get(name, 0) < n and fits(need, left):
            left = minus(left, need)
            placed[name] = placed.get(name, 0) + 1
    return placed


def serving_room(
    states: Mapping[str, AppState],
    endpoints: Mapping[str, tuple[int, dict[str, Any]]],
    settings: Settings,
) -> tuple[dict[str, float], dict[str, tuple[int, dict[str, float]]]]:
    """What serving needs kept free: the replicas Ray has not placed (summed), and per
    application that serves (a replica running) and may still scale up, the room of its next
    ``serving_headroom_replicas`` replicas (application -> endpoint id, room), within the caps
    of ``serving_headroom_max_cpus`` / ``_gpus`` (applications by name)."""
    unplaced: dict[str, float] = {}
    headroom: dict[str, tuple[int, dict[str, float]]] = {}
    cap = {"CPU": settings.serving_headroom_max_cpus, "GPU": settings.serving_headroom_max_gpus}
    total: dict[str, float] = {}
    for name in sorted(states):
        st, known = states[name], endpoints.get(name)
        need = _ours(name, st, endpoints)
        if known is None or need is None:
            continue  # not one of this control plane's endpoints
        config = EndpointConfig.model_validate(known[1])
        unplaced = plus(unplaced, *([need] * st.starting))
        replicas = max(st.replicas, st.running + st.starting)
        more = min(settings.serving_headroom_replicas, config.autoscaling.max_replicas - replicas)
        if st.running < 1 or more < 1:
            continue
        room = {k: v * more for k, v in need.items()}
        after = plus(total, room)
        if any(c is not None and after.get(k, 0.0) > c + preemption.EPS for k, c in cap.items()):
            continue
        total, headroom[name] = after, (known[0], room)
    return unplaced, headroom


class PoolController(Looped):
    def __init__(
        self,
        db: Database,
        states: Callable[[], Mapping[str, AppState]],
        available: Callable[[], Mapping[str, float]],
        settings: Settings,
        wake: Callable[[], None],
        tick_s: float = TICK_S,
        nodes: Callable[[], Sequence[NodeInfo]] | None = None,
    ) -> None:
        """``states``: Ray Serve's applications as the endpoint controller last read them;
        ``available``: the cluster's free resources; ``wake``: the job controller's;
        ``nodes``: the cluster's alive nodes (without it, every replica without a node is
        taken as waiting for room)."""
        self.db, self.states, self.available, self.nodes = db, states, available, nodes
        self.settings, self.wake_jobs = settings, wake
        self.preempted = 0  # jobs this server's pool preempted (for logs and tests)
        # Per application, when room was made for each of its waiting replicas: the view of
        # Ray Serve lags a tick, and a replica already placed must not preempt twice.
        self._granted: dict[str, list[float]] = {}
        # Per application, since when its headroom has not been free.
        self._short: dict[str, float] = {}
        self._reserved: dict[str, float] = {}
        self._reserved_at = 0.0
        self.loop = ControlLoop("gureum-pool", self.tick, tick_s)

    def reserved(self) -> dict[str, float]:
        """The room the job queue leaves free for serving (Ray resource names): replicas Ray
        has not placed and the headroom of endpoints that may scale up; nothing when the pool
        has not ticked lately."""
        if time.monotonic() - self._reserved_at > RESERVE_STALE_S:
            return {}
        return dict(self._reserved)

    def starving(
        self, now_s: float | None = None, states: Mapping[str, AppState] | None = None
    ) -> dict[str, AppState]:
        """Applications with a replica waiting for room longer than ``preempt_after_s``."""
        now_s = time.time() if now_s is None else now_s
        after = self.settings.preempt_after_s
        return {
            name: st
            for name, st in (self.states() if states is None else states).items()
            if st.starting > 0
            and st.starting_since is not None
            and now_s - st.starting_since >= after
        }

    def tick(self) -> None:
        now_s = time.time()
        states = dict(self.states())
        placing = self.nodes is not None and any(st.starting for st in states.values())
        now = utcnow()
        with self.db.read() as s:
            endpoints = preemption.endpoint_apps(s)
            candidates, stopping = preemption.running_candidates(s)
            shares = preemption.shares(s)
            waiting = share_reclaim.queued(s, now) if shares else []
            used = share_reclaim.used_by_workspace(s) if waiting else {}
            jobs_held = preemption.held_by_jobs(s) if placing else {}
        available = self.available()
        if placing:
            states = self._seen_placed(states, endpoints, available, jobs_held, now_s)
        starving = self.starving(now_s, states)
        window = self.settings.preempt_grace_s + SETTLE_S
        self._granted = {
            name: recent
            for name, times in self._granted.items()
            if name in starving and (recent := [t for t in times if now_s - t < window])
        }
        unplaced, headroom = serving_room(states, endpoints, self.settings)
        self._reserved = plus(unplaced, *(room for _, room in headroom.values()))
        self._reserved_at = time.monotonic()
        free = plus(available, stopping)
        # What the job queue sees (``reserved`` held back): what a job taking a share back finds.
        queue_free = minus(free, self._reserved)
        free = self._place_waiting(starving, endpoints, free, candidates, now, now_s)
        if not unplaced:  # a waiting replica first: the headroom is the next one's
            free = self._restore_headroom(headroom, free, candidates, now, now_s)
        else:
            self._short.clear()
        if waiting:
            self._reclaim(waiting, queue_free, candidates, used, shares, now)

    def _seen_placed(
        self,
        states: dict[str, AppState],
        endpoints: Mapping[str, tuple[int, dict[str, Any]]],
        available: Mapping[str, float],
        jobs_held: Mapping[str, float],
        now_s: float,
    ) -> dict[str, AppState]:
        """``states`` with the replicas Ray has placed but not yet shown on a node taken off
        the waiting ones (``placed_unseen``)."""
        assert self.nodes is not None
        try:
            total = plus({}, *(n.total for n in self.nodes()))
        except Exception:
            log.warning("cannot list the cluster's nodes", exc_info=True)
            return states
        placed = placed_unseen(states, endpoints, minus(total, available), jobs_held, now_s)
        for name, n in placed.items():
            st = states[name]
            left = st.starting - n
            states[name] = replace(
                st, starting=left, starting_since=st.starting_since if left else None
            )
        return states

    def _place_waiting(
        self,
        starving: Mapping[str, AppState],
        endpoints: Mapping[str, tuple[int, dict[str, Any]]],
        free: dict[str, float],
        candidates: list[preemption.Candidate],
        now: datetime,
        now_s: float,
    ) -> dict[str, float]:
        """Preempt for the replicas waiting longest first; returns what is left free."""
        oldest_first = sorted(starving.items(), key=lambda kv: kv[1].starting_since or 0.0)
        for name, st in oldest_first:
            need = _ours(name, st, endpoints)
            if need is None:
                continue  # not one of this control plane's endpoints
            ep_id = endpoints[name][0]
            granted = self._granted.setdefault(name, [])
            for _ in range(max(0, st.starting - len(granted))):
                victims = preemption.choose_victims(
                    need, free, candidates, now, self.settings.preempt_min_run_s
                )
                if victims is None:
                    break  # no room to be made for it: nothing is stopped in vain
                for v in victims:
                    free = plus(free, v.need)
                    candidates.remove(v)
                free = minus(free, need)
                if victims:
                    self._preempt(ep_id, victims, need)
                    granted.append(now_s)
        return free

    def _restore_headroom(
        self,
        headroom: Mapping[str, tuple[int, dict[str, float]]],
        free: dict[str, float],
        candidates: list[preemption.Candidate],
        now: datetime,
        now_s: float,
    ) -> dict[str, float]:
        """Preempt, in the background, to give back the headroom that has not been free for
        ``preempt_after_s`` (a node the autoscaler adds may restore it first), nor for
        HEADROOM_CONFIRM_S."""
        self._short = {n: t for n, t in self._short.items() if n in headroom}
        for name, (ep_id, room) in headroom.items():
            if fits(room, free):
                self._short.pop(name, None)
                free = minus(free, room)
                continue
            since = self._short.setdefault(name, now_s)
            if now_s - since < max(self.settings.preempt_after_s, HEADROOM_CONFIRM_S):
                continue
            victims = preemption.choose_victims(
                room, free, candidates, now, self.settings.preempt_min_run_s
            )
            if not victims:
                continue  # none can be preempted yet: tried again next tick
            for v in victims:
                free = plus(free, v.need)
                candidates.remove(v)
            free = minus(free, room)
            self._preempt(ep_id, victims, room, headroom=True)
        return free

    def _reclaim(
        self,
        waiting: list[share_reclaim.Waiting],
        free: dict[str, float],
        candidates: list[preemption.Candidate],
        used: Mapping[int, Mapping[str, float]],
        shares: Mapping[int, preemption.Share],
        now: datetime,
    ) -> None:
        """Queued jobs within their workspace's share take back what others borrowed."""
        with self.db.read() as s:
            starting = preemption.held_by_jobs(s, ("starting",))
        free = minus(free, starting)
        # Within the share first, as the job queue orders them.
        order = share_reclaim.within_share_first(waiting, used, shares, lambda w: w.need)
        chosen = share_reclaim.reclaims(
            order, free, candidates, used, shares, now, self.settings.preempt_min_run_s
        )
        marked: list[str] = []
        for w, victims in chosen:
            with self.db.write() as s:  # fenced: a deposed leader preempts nothing
                marked += share_reclaim.reclaim(s, w, victims)
        if marked:
            self.preempted += len(marked)
            log.info("preempted %s for guaranteed shares", ", ".join(marked))
            self.wake_jobs()

    def _preempt(
        self,
        ep_id: int,
        victims: list[preemption.Candidate],
        need: Mapping[str, float],
        headroom: bool = False,
    ) -> None:
        with self.db.write() as s:  # fenced: a deposed leader preempts nothing
            ep = s.get(Endpoint, ep_id, with_for_update=True)
            if ep is None or ep.state == "deleting":
                return
            marked = preemption.preempt(s, victims, ep, need, headroom)
        if marked:
            self.preempted += len(marked)
            log.info("preempted %s for endpoint %s", ", ".join(marked), ep_id)
            self.wake_jobs()
