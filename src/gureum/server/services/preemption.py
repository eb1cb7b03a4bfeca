"""One pool, serving first: which running training jobs an endpoint's replica that Ray cannot
place may preempt, marking them, and counting what was preempted.

The decision (``choose_victims``) is pure: preemptible jobs that have run at least the minimum
run time, those running on borrowed capacity first (``borrowing``: beyond their workspace's
guaranteed share of the pool, Kueue's cohorts as the model), then lowest priority first and,
among equals, the most recently started (it loses the least work), just enough of them to make
room for one replica; none at all when even every candidate together would not. A job within
its workspace's share is thus preempted only when borrowed capacity cannot make the room.

Marking (``preempt``) only writes the desired state: the job controller asks the attempt for a
checkpoint, stops it once it has one (or ended, or ``preempt_grace_s`` passed) and, when it
ends, queues the job again with its checkpoint kept (``requeue``), so the next attempt resumes
from it.

Free resources are summed over the cluster while Ray places per node: on several nodes a
replica may still wait after its victims stopped (the pool then preempts no more for it while
the room it counted is free).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gureum.compute.resources import (
    ACCELERATOR_AMOUNT,
    ACCELERATOR_PREFIX,
    demand,
    describe,
    scaled,
)
from gureum.schemas.endpoints import ReplicaResources
from gureum.schemas.jobs import PREEMPT, Resources
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import Job, JobEvent, Workspace
from gureum.server.db.tables_serving import Endpoint
from gureum.server.services import costs
from gureum.server.services import endpoints as endpoint_svc
from gureum.server.services.jobs import add_event
from gureum.serving.backend import app_name

GiB = 1024**3
EPS = 1e-9
EVENT = "preempted"  # the job event kind (metrics count these)
WAIT_REASON = "preempted: serving needed the capacity; resumes from its last checkpoint"
RECLAIM_PREFIX = "preempted for workspace"
RECLAIM_WAIT = (
    "preempted: a workspace took back its guaranteed share; resumes from its last checkpoint"
)

# The Serve applications one endpoint may have.
APP_ROLES = ("primary", "canary", "shadow")


@dataclass(frozen=True)
class Candidate:
    """A running job as the pool sees it: ``need`` is what all its workers hold; ``borrowed``:
    it runs beyond its workspace's guaranteed share (with no shares set, every job does)."""

    job_id: str
    priority: int
    need: Mapping[str, float] = field(hash=False)
    started_at: datetime | None
    preemptible: bool = True
    workspace_id: int = 0
    borrowed: bool = True


@dataclass(frozen=True)
class Share:
    """A workspace's guaranteed share of the pool (0: none; all it runs is borrowed)."""

    cpus: float = 0.0
    gpus: float = 0.0

    def holds(self, used: Mapping[str, float]) -> bool:
        return used.get("CPU", 0.0) <= self.cpus + EPS and used.get("GPU", 0.0) <= self.gpus + EPS


def borrowing(running: Sequence[Candidate], shares: Mapping[int, Share]) -> list[Candidate]:
    """``running`` with ``borrowed`` set: per workspace, its jobs fill its guaranteed share
    highest priority first, then oldest first (the work it cares most about, and the most of
    it, is what the share protects); a job that does not fit in what is left is borrowed."""
    by_workspace: dict[int, list[Candidate]] = defaultdict(list)
    for c in running:
        by_workspace[c.workspace_id].append(c)
    marked: dict[str, bool] = {}
    for ws, jobs in by_workspace.items():
        share = shares.get(ws, Share())
        used: dict[str, float] = {}
        for c in sorted(jobs, key=lambda c: (-c.priority, _started(c), c.job_id)):
            more = plus(used, c.need)
            marked[c.job_id] = not share.holds(more)
            if not marked[c.job_id]:
                used = more
    return [replace(c, borrowed=marked[c.job_id]) for c in running]


def _started(c: Candidate) -> float:
    return c.started_at.timestamp() if c.started_at is not None else float("inf")


def replica_demand(r: ReplicaResources) -> dict[str, float]:
    """One replica's request as Ray resource names (as ``serving.backend.actor_options``)."""
    out: dict[str, float] = {"CPU": r.cpus}
    if r.gpus:
        out["GPU"] = r.gpus
    if r.memory_gb:
        out["memory"] = r.memory_gb * GiB
    if r.accelerator_type:
        out[ACCELERATOR_PREFIX + r.accelerator_type] = ACCELERATOR_AMOUNT
    return {k: v for k, v in out.items() if v > 0}


def endpoint_apps(s: Session) -> dict[str, tuple[int, dict[str, Any]]]:
    """Ray Serve application name -> (endpoint id, its config) of every live endpoint, each
    role's application included: what a waiting replica is matched against."""
    return {
        app_name(ep_id, role): (ep_id, config)
        for ep_id, config, state in s.execute(
            select(Endpoint.id, Endpoint.config, Endpoint.state)
        ).all()
        if state != "deleting"
        for role in APP_ROLES
    }


def fits(need: Mapping[str, float], free: Mapping[str, float]) -> bool:
    return all(free.get(k, 0.0) + EPS >= v for k, v in need.items() if v > 0)


def plus(free: Mapping[str, float], *more: Mapping[str, float]) -> dict[str, float]:
    out = dict(free)
    for m in more:
        for k, v in m.items():
            out[k] = out.get(k, 0.0) + v
    return out


def choose_victims(
    need: Mapping[str, float],
    free: Mapping[str, float],
    running: Sequence[Candidate],
    now: datetime,
    min_run_s: float,
) -> list[Candidate] | None:
    """The jobs to preempt so that ``need`` fits: [] when it fits already, None when no choice
    of candidates makes room (nothing is preempted in vain)."""
    if fits(need, free):
        return []
    short = {k for k, v in need.items() if v > 0 and free.get(k, 0.0) + EPS < v}
    candidates = [
        c
        for c in running
        if c.preemptible
        and c.started_at is not None
        and (now - c.started_at).total_seconds() >= min_run_s
        and any(c.need.get(k, 0.0) > 0 for k in short)  # it holds something the replica lacks
    ]
    # Borrowed capacity first; then the lowest priority; among equals the latest started (the
    # least work to redo).
    candidates.sort(
        key=lambda c: (not c.borrowed, c.priority, -(c.started_at or now).timestamp(), c.job_id)
    )
    chosen: list[Candidate] = []
    for c in candidates:
        chosen.append(c)
        if fits(need, plus(free, *(v.need for v in chosen))):
            break
    else:
        return None
    # Just enough: a victim taken early whose room the later ones made unneeded is spared
    # (the last taken first: a job within its share before a borrowing one).
    for c in list(reversed(chosen)):
        rest = [v for v in chosen if v is not c]
        if fits(need, plus(free, *(v.need for v in rest))):
            chosen = rest
    return chosen


def mark(s: Session, victims: Sequence[Candidate], why: str, **data: Any) -> list[str]:
    """Ask the job controller to stop each victim (its attempt is re-queued with its
    checkpoint when it ends), ``why`` saying for what; returns the jobs marked. A job that
    changed meanwhile (ended, stopping already, made non-preemptible) is left alone."""
    marked: list[str] = []
    for v in victims:
        job = s.get(Job, v.job_id, with_for_update=True)
        if (
            job is None
            or job.state != "running"
            or job.stop_state is not None
            or not job.preemptible
        ):
            continue
        share = "borrowed capacity (beyond its workspace's guaranteed share)"
        reason = (
            f"{why}; priority {job.priority} on "
            f"{share if v.borrowed else 'its workspace guaranteed share'} yields"
        )
        job.stop_state, job.stop_reason = PREEMPT, reason
        add_event(s, job, EVENT, reason, attempt=job.attempt, borrowed=v.borrowed, **data)
        marked.append(job.id)
    return marked


def preempt(
    s: Session,
    victims: Sequence[Candidate],
    endpoint: Endpoint,
    need: Mapping[str, float],
    headroom: bool = False,
) -> list[str]:
    """Stop ``victims`` for ``endpoint``: a replica of it waiting for room or, ``headroom``,
    the room kept free for its next replica (``Settings.serving_headroom_replicas``)."""
    what = (
        f"room for its next replica ({describe(need)}) had been taken"
        if headroom
        else f"a replica ({describe(need)}) had no room on the cluster"
    )
    why = f"preempted for endpoint {endpoint.name}: {what}; serving comes first"
    marked = mark(s, victims, why, endpoint=endpoint.name, headroom=headroom)
    if marked:
        purpose = "keep room for its next replica" if headroom else "place a replica"
        endpoint_svc.add_event(
            s,
            endpoint,
            "preempt",
            f"preempted job(s) {', '.join(marked)} to {purpose} ({describe(need)})",
            jobs=marked,
        )
    return marked


def requeue(s: Session, job: Job, hold_s: float) -> None:
    """A preempted attempt ended: the job is queued again (its span recorded, its time limit
    keeping what is left) and waits ``hold_s`` before it may start, so the replica (or the
    job within its share) it made room for takes the room first; its next attempt resumes
    from its last checkpoint."""
    now = utcnow()
    costs.end_span(s, job, now)
    reclaimed = (job.stop_reason or "").startswith(RECLAIM_PREFIX)
    job.state, job.stop_state, job.stop_reason = "queued", None, None
    job.wait_reason, job.report_seq = (RECLAIM_WAIT if reclaimed else WAIT_REASON), 0
    job.not_before = now + timedelta(seconds=hold_s)
    add_event(
        s,
        job,
        "state",
        f"queued: preempted after attempt {job.attempt}; it resumes from its last checkpoint "
        "when there is room",
        attempt=job.attempt,
    )


def held(job: Job) -> dict[str, float]:
    """What a job's workers hold on the cluster (Ray resource names)."""
    return scaled(demand(Resources.model_validate(job.resources)), job.workers)


def held_by_jobs(s: Session, states: Sequence[str] = ("running", "starting")) -> dict[str, float]:
    """What the jobs in ``states`` hold, or may already hold, on the cluster."""
    jobs = s.scalars(select(Job).where(Job.state.in_(states)))
    return plus({}, *(held(j) for j in jobs))


def shares(s: Session) -> dict[int, Share]:
    """The guaranteed shares set (workspaces without one guarantee nothing)."""
    rows = s.execute(
        select(Workspace.id, Workspace.share_cpus, Workspace.share_gpus).where(
            (Workspace.share_cpus.is_not(None)) | (Workspace.share_gpus.is_not(None))
        )
    ).all()
    return {ws: Share(cpus or 0.0, gpus or 0.0) for ws, cpus, gpus in rows}


def running_candidates(s: Session) -> tuple[list[Candidate], dict[str, float]]:
    """Running jobs as candidates (borrowing or not), and the room the running jobs already
    asked to stop hold (about to be free: counted as free, so that no more is preempted for
    the same replica)."""
    active = s.scalars(select(Job).where(Job.state == "running")).all()
    candidates = [
        Candidate(j.id, j.priority, held(j), j.started_at, j.preemptible, j.workspace_id)
        for j in active
        if j.stop_state is None
    ]
    stopping = plus({}, *(held(j) for j in active if j.stop_state is not None))
    return borrowing(candidates, shares(s)), stopping


class PreemptionCollector(Collector):
    """``gureum_preemptions_total``: the jobs of a workspace preempted, for serving or a
    guaranteed share (from their events, so every API server reports the same count and a
    restart loses none)."""

    def __init__(self, db: Database, workspace_id: int, workspace: str) -> None:
        self.db, self.workspace_id, self.workspace = db, workspace_id, workspace

    def collect(self) -> Iterator[Metric]:
        with self.db.read() as s:
            count = s.scalar(
                select(func.count(JobEvent.id))
                .join(Job, Job.id == JobEvent.job_id)
                .where(Job.workspace_id == self.workspace_id, JobEvent.kind == EVENT)
            )
        counter = CounterMetricFamily(
            "gureum_preemptions",
            "Training jobs preempted for serving (a replica, or room kept for the next one) "
            "or for a workspace taking back its guaranteed share.",
            labels=["workspace"],
        )
        counter.add_metric([self.workspace], float(count or 0))
        yield counter
