"""Guaranteed shares taken back through the queue: a queued job that fits in its workspace's
guaranteed share (``workspaces.share_cpus`` / ``share_gpus``) but not in the free room may
preempt jobs that other workspaces run on borrowed capacity (beyond their own share).

The choice is ``preemption.choose_victims`` over those borrowed jobs only (lowest priority
first, non-preemptible jobs and jobs under the minimum run time left alone, just enough of
them, none when even all of them would not make the room), so a share is honoured by
preempting only what was lent. The job queue admits jobs within their share before jobs that
would borrow (``within_share_first``), so the room made goes to the job that asked for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.compute.resources import describe
from gureum.schemas.jobs import ACTIVE_STATES
from gureum.server.db.tables import Job, Workspace
from gureum.server.services import budget_enforce, preemption
from gureum.server.services.preemption import Candidate, Share, choose_victims, fits, plus


@dataclass(frozen=True)
class Waiting:
    """A queued job as the reclaim sees it: ``need`` is what all its workers would hold."""

    job_id: str
    workspace_id: int
    priority: int
    need: Mapping[str, float] = field(hash=False)


def within(share: Share | None, used: Mapping[str, float], need: Mapping[str, float]) -> bool:
    """Whether ``need`` on top of what the workspace ``used`` stays within its share."""
    return share is not None and share.holds(plus(used, need))


def within_share_first(
    queued: Sequence[Any],
    used: Mapping[int, Mapping[str, float]],
    shares: Mapping[int, Share],
    need: Any,
) -> list[Any]:
    """``queued`` (jobs in priority order) with those that fit in their workspace's share
    first, the order otherwise kept: a share is a promise that borrowers do not queue ahead
    of. Without shares the order is unchanged. ``need(job)``: what the job would hold."""
    left = {ws: dict(u) for ws, u in used.items()}
    first, rest = [], []
    for job in queued:
        n = need(job)
        mine = left.setdefault(job.workspace_id, {})
        if within(shares.get(job.workspace_id), mine, n):
            first.append(job)
            left[job.workspace_id] = plus(mine, n)
        else:
            rest.append(job)
    return first + rest


def reclaims(
    waiting: Sequence[Waiting],
    free: Mapping[str, float],
    running: Sequence[Candidate],
    used: Mapping[int, Mapping[str, float]],
    shares: Mapping[int, Share],
    now: datetime,
    min_run_s: float,
) -> list[tuple[Waiting, list[Candidate]]]:
    """For each queued job (in queue order) within its workspace's share that does not fit in
    ``free``: the borrowed jobs of other workspaces to preempt for it. Jobs that fit take
    their room first; one that no choice can make room for gets nothing (and its room is not
    taken from the ones after it)."""
    free = dict(free)
    used = {ws: dict(u) for ws, u in used.items()}
    pool = list(running)
    out: list[tuple[Waiting, list[Candidate]]] = []
    for w in waiting:
        mine = used.setdefault(w.workspace_id, {})
        if not within(shares.get(w.workspace_id), mine, w.need):
            continue  # it would borrow: it waits for free room like any other job
        if fits(w.need, free):
            free = plus(free, {k: -v for k, v in w.need.items()})
            used[w.workspace_id] = plus(mine, w.need)
            continue
        lent = [c for c in pool if c.borrowed and c.workspace_id != w.workspace_id]
        victims = choose_victims(w.need, free, lent, now, min_run_s)
        if not victims:
            continue
        for v in victims:
            pool.remove(v)
        free = plus(free, *(v.need for v in victims), {k: -v for k, v in w.need.items()})
        used[w.workspace_id] = plus(mine, w.need)
        out.append((w, victims))
    return out


def queued(s: Session, now: datetime) -> list[Waiting]:
    """Queued jobs that may start now, in queue order: not in a preemption's hold, nor held
    back by their workspace's budget or quotas (room made for them would go unused)."""
    rows = s.scalars(
        select(Job)
        .where(Job.state == "queued")
        .order_by(Job.priority.desc(), Job.created_at, Job.id)
    ).all()
    ids = {j.workspace_id for j in rows}
    held = budget_enforce.held_reasons(s, ids)
    quotas = {w.id: w for w in s.scalars(select(Workspace).where(Workspace.id.in_(ids)))}
    active: dict[int, list[Job]] = {}
    for j in s.scalars(select(Job).where(Job.state.in_(ACTIVE_STATES))):
        active.setdefault(j.workspace_id, []).append(j)
    return [
        Waiting(j.id, j.workspace_id, j.priority, preemption.held(j))
        for j in rows
        if (j.not_before is None or j.not_before <= now)
        and j.workspace_id not in held
        and _under_quota(quotas.get(j.workspace_id), active.get(j.workspace_id, []), j)
    ]


def _under_quota(ws: Workspace | None, active: Sequence[Job], job: Job) -> bool:
    """Whether the workspace's quotas (jobs, CPUs, GPUs at once) let ``job`` start."""
    if ws is None:
        return True
    used = plus({"jobs": len(active)}, *(preemption.held(j) for j in active))
    after = plus(used, {"jobs": 1}, preemption.held(job))
    limits = {"jobs": ws.max_concurrent_jobs, "CPU": ws.max_cpus, "GPU": ws.max_gpus}
    return all(c is None or after.get(k, 0.0) <= c + preemption.EPS for k, c in limits.items())


def used_by_workspace(s: Session) -> dict[int, dict[str, float]]:
    """What each workspace's running and starting jobs hold."""
    out: dict[int, dict[str, float]] = {}
    for j in s.scalars(select(Job).where(Job.state.in_(("starting", "running")))):
        out[j.workspace_id] = plus(out.get(j.workspace_id, {}), preemption.held(j))
    return out


def reclaim(s: Session, for_job: Waiting, victims: Sequence[Candidate]) -> list[str]:
    """Mark ``victims`` for ``for_job``'s workspace taking back its share (fenced caller)."""
    name = s.scalar(select(Workspace.name).where(Workspace.id == for_job.workspace_id))
    why = (
        f"{preemption.RECLAIM_PREFIX} {name}: its job {for_job.job_id} "
        f"({describe(for_job.need)}) is within the workspace's guaranteed share and had no room"
    )
    return preemption.mark(s, victims, why, reclaimed_for=for_job.job_id)
