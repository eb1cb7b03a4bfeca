"""The job controller: a reconciliation loop that makes the cluster match the jobs table.

Every tick it (1) stores what running attempts reported, (2) stops what was cancelled or ran
past its timeout, (3) settles attempts that ended: success registers the model, a lost worker
is retried from the last checkpoint, and (4) starts queued jobs in priority order (those within
their workspace's guaranteed share first) as quotas and free resources allow, leaving free the
room the pool keeps for serving, recording why the others wait. It keeps no state that
matters in memory: a controller started after a crash re-attaches to the attempts still on
the cluster (their supervisors kept every report) and settles the ones that ended meanwhile,
so no job is left "running" forever. The compute engine is behind ``ComputeBackend``; tests
inject a fake.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from gureum.compute.backend import ComputeBackend
from gureum.compute.resources import NodeInfo, demand, describe, scaled, shortfall
from gureum.compute.spec import BlobFile, Item, JobSpec
from gureum.schemas.jobs import ACTIVE_STATES, PREEMPT, Resources
from gureum.server.controllers.loop import ControlLoop, Looped, each
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import Dataset, DatasetVersion, Job, Workspace
from gureum.server.services import (
    base_models,
    budget_enforce,
    costs,
    job_results,
    preemption,
    share_reclaim,
)
from gureum.server.services.jobs import add_event, dataset_manifest, model_files, settle
from gureum.server.services.secrets import values as secret_values
from gureum.server.services.site_settings import allow_unsandboxed
from gureum.storage.store import ArtifactStore

log = logging.getLogger(__name__)
TICK_S = 0.25
STOP_GRACE_S = 8.0
PLACE_WAIT_S = 3.0
CLUSTER_REFRESH_S = 2.0
# How often released attempts' fences of ended jobs are swept off the cluster.
SWEEP_S = 300.0


@dataclass
class _Usage:
    cpus: float = 0.0
    gpus: float = 0.0
    jobs: int = 0


@dataclass
class JobController(Looped):
    db: Database
    backend: ComputeBackend
    store: ArtifactStore
    max_log_bytes: int = 64 << 20
    tick_s: float = TICK_S
    _nodes: list[NodeInfo] | None = None
    _nodes_at: float = 0.0
    _stopping: dict[tuple[str, int], float] = field(default_factory=dict)
    _launched: dict[tuple[str, int], float] = field(default_factory=dict)
    _swept_at: float = 0.0
    home: Path | None = None  # GUREUM_HOME: where the key of workspace secrets lives
    # A preempted job waits this long before it may start again (Settings.preempt_hold_s).
    preempt_hold_s: float = 30.0
    # ...and is first given this long to save a checkpoint (Settings.preempt_grace_s).
    preempt_grace_s: float = 30.0
    # Nodes Ray's autoscaler may add (node_demand.possible_nodes): what could run counts them.
    may_add: list[NodeInfo] = field(default_factory=list)
    # The room serving needs kept free (the pool controller's ``reserved``: replicas Ray has
    # not placed and endpoints' headroom for their next replicas); no job is started into it.
    reserved: Callable[[], Mapping[str, float]] | None = None
    loop: ControlLoop = field(init=False)

    def __post_init__(self) -> None:
        self.loop = ControlLoop("gureum-jobs", self.tick, self.tick_s)
        self.loop.on_term = self.take_over

    # -- lifecycle ------------------------------------------------------------------------------

    def take_over(self) -> None:
        """At the start of each term (this server started, or was elected): forget what an
        earlier term knew (another leader may have run meanwhile) and re-read the cluster."""
        self._stopping.clear()
        self._launched.clear()
        self.reconcile()

    def nodes(self) -> list[NodeInfo] | None:
        """The cluster's nodes as last seen, and those the autoscaler may add (submission
        refuses what none could hold)."""
        if self._nodes is None or time.monotonic() - self._nodes_at > CLUSTER_REFRESH_S:
            try:
                self._nodes, self._nodes_at = self.backend.nodes(), time.monotonic()
            except Exception:
                log.warning("cannot list the cluster's nodes", exc_info=True)
        return None if self._nodes is None else [*self._nodes, *self.may_add]

    # -- the loop ----------------------------------------------------------------------------

    def reconcile(self) -> None:
        """At start: release attempts the cluster holds that no active job owns."""
        with self.db.read() as s:
            active = {
                (j.id, j.attempt)
                for j in s.scalars(select(Job).where(Job.state.in_(ACTIVE_STATES)))
            }
        for key in self.backend.attempts():
            if key not in active:
                log.info("releasing leftover attempt %s/%s", *key)
                self.backend.release(*key)

    def tick(self) -> None:
        self._poll()
        self._schedule()

    def _poll(self) -> None:
        with self.db.read() as s:
            active = [
                (j.id, j.attempt, j.report_seq, j.stop_state, j.started_at, j.timeout_s)
                for j in s.scalars(select(Job).where(Job.state.in_(ACTIVE_STATES)))
            ]
            placing = {
                (j.id, j.attempt): j
                for j in s.scalars(
                    select(Job).where(Job.state == "starting", Job.wait_reason.is_(None))
                )
            }
            s.expunge_all()
        if time.monotonic() - self._swept_at > SWEEP_S:
            self._swept_at = time.monotonic()
            self.backend.sweep({a[0] for a in active})
        if not active:
            return
        reports = self.backend.poll([(jid, att, seq) for jid, att, seq, *_ in active])
        now = time.monotonic()

        def follow(job: tuple[Any, ...]) -> None:
            self._follow(job, reports.get((job[0], job[1])), placing, now)

        each(active, follow, "following job")

    def _follow(
        self,
        job: tuple[Any, ...],
        report: Any,
        placing: dict[tuple[str, int], Job],
        now: float,
    ) -> None:
        """One active job's report: its items stored, its end, a lost worker, a timeout or
        a stop carried out (a failure here is this job's alone)."""
        jid, att, _, stop_state, started, timeout_s = job
        if report is None:
            return
        end = next((i for i in report.items if i["type"] == "end"), None)
        if report.items:
            self._store(jid, att, report.items)
        elif (jid, att) in placing:
            self._note_placement(placing[(jid, att)], now)
        if end is not None:
            self._finish(jid, att, end)
        elif not report.alive:
            self._finish(jid, att, {"type": "end", "outcome": "lost", "error": None})
        elif stop_state is None and timeout_s and started is not None:
            if (utcnow() - started).total_seconds() > timeout_s:
                self._request_stop(jid, "failed", f"timed out after {timeout_s:g}s")
        elif stop_state is not None:
            sent = self._stopping.get((jid, att))
            grace = self.preempt_grace_s if stop_state == PREEMPT else 0.0  # checkpoint first
            if sent is None:
                self.backend.stop(jid, att, grace)
                self._stopping[(jid, att)] = now
            elif now - sent > STOP_GRACE_S + grace:
                end_item = {"type": "end", "outcome": "cancelled", "error": None}
                self._finish(jid, att, end_item)

    def _note_placement(self, job: Job, now: float) -> None:
        """A launched job Ray has not started yet waits for a node that can hold a worker
        (free resources are summed over the cluster; Ray places per node): say so."""
        since = self._launched.setdefault((job.id, job.attempt), now)
        if now - since < PLACE_WAIT_S:
            return
        need = describe(demand(Resources.model_validate(job.resources)))
        self._set_wait(job.id, f"waiting for Ray to place it: a node with {need} free per worker")

    def _request_stop(self, job_id: str, state: str, reason: str) -> None:
        with self.db.write() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None or job.state not in ACTIVE_STATES or job.stop_state is not None:
                return
            job.stop_state, job.stop_reason = state, reason
            add_event(s, job, "info", reason)
        self.wake()

    # -- storing reports -----------------------------------------------------------------------

    def _store(self, job_id: str, attempt: int, items: list[Item]) -> None:
        with self.db.write() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None or job.attempt != attempt or job.state not in ACTIVE_STATES:
                return
            fresh = [i for i in items if i["seq"] > job.report_seq and i["type"] != "end"]
            if not fresh:
                return
            job_results.apply(s, job, fresh, self.max_log_bytes)
            job.report_seq = max(i["seq"] for i in fresh)

    def _finish(self, job_id: str, attempt: int, end: Item) -> None:
        """Settle an attempt that ended, then free what is left of it on the cluster."""
        outcome = end["outcome"]
        if outcome == "succeeded":
            job_results.register_outputs(
                self.db, self.store, job_id, attempt, end.get("result") or {}
            )
        # Released first: the attempt is refused on the cluster before a retry can exist.
        self.backend.release(job_id, attempt)
        with self.db.write() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is not None and job.attempt == attempt and job.state in ACTIVE_STATES:
                self._settle_attempt(s, job, outcome, end)
                costs.record_job(s, job)  # resource-seconds, once the job is terminal
        self._stopping.pop((job_id, attempt), None)
        self._launched.pop((job_id, attempt), None)
        self.wake()

    def _settle_attempt(self, s: Any, job: Job, outcome: str, end: Item) -> None:
        if "seq" in end:
            job.report_seq = max(job.report_seq, int(end["seq"]))
        error = end.get("error")
        if job.stop_state == budget_enforce.PAUSE and outcome != "succeeded":
            budget_enforce.requeue(s, job)  # stopped by its budget: queued, checkpoint kept
        elif job.stop_state == PREEMPT and outcome != "succeeded":
            preemption.requeue(s, job, self.preempt_hold_s)  # for serving: queued, checkpoint kept
        elif job.stop_state is not None and outcome != "succeeded":
            state = "failed" if job.stop_state == "failed" else "cancelled"
            settle(s, job, state, job.stop_reason)  # type: ignore[arg-type]
        elif outcome == "succeeded":
            job_results.apply_success(s, job, end.get("result") or {})
            settle(s, job, "succeeded", None)
        elif outcome == "lost":
            reason = error or "its Ray work is gone (the worker, its node or its supervisor died)"
            if job.attempt <= job.max_retries:
                costs.end_span(s, job, utcnow())
                job.state, job.wait_reason, job.report_seq = "queued", None, 0
                add_event(
                    s,
                    job,
                    "retry",
                    f"attempt {job.attempt} lost: {reason}; retry {job.attempt} of "
                    f"{job.max_retries} will resume from the last checkpoint",
                    attempt=job.attempt,
                )
            else:
                retries = f"after {job.max_retries} retries" if job.max_retries else "(no retries)"
                settle(s, job, "failed", f"{reason}; gave up {retries}")
        elif outcome == "cancelled":
            settle(s, job, "cancelled", job.stop_reason or "stopped")
        else:
            settle(s, job, "failed", error or "failed")

    # -- scheduling ----------------------------------------------------------------------------

    def _schedule(self) -> None:
        with self.db.read() as s:
            queued = list(
                s.scalars(
                    select(Job)
                    .where(Job.state == "queued")
                    .order_by(Job.priority.desc(), Job.created_at, Job.id)
                )
            )
            if not queued:
                return
            active = list(s.scalars(select(Job).where(Job.state.in_(ACTIVE_STATES))))
            quotas = {
                w.id: w
                for w in s.scalars(
                    select(Workspace).where(Workspace.id.in_({j.workspace_id for j in queued}))
                )
            }
            held = budget_enforce.held_reasons(s, set(quotas))
            shares = preemption.shares(s)
            s.expunge_all()
        usage: dict[int, _Usage] = defaultdict(_Usage)
        free = dict(self.backend.available())
        kept = dict(self.reserved()) if self.reserved is not None else {}
        _take(free, kept)
        if shares:  # a job within its workspace's guaranteed share before borrowers
            queued = share_reclaim.within_share_first(
                queued, _held_by(active), shares, preemption.held
            )
        now = utcnow()
        just_started = now - timedelta(seconds=self.backend.view_lag_s)
        for j in active:
            r = Resources.model_validate(j.resources)
            u = usage[j.workspace_id]
            u.cpus += r.cpus * j.workers
            u.gpus += r.gpus * j.workers
            u.jobs += 1
            # Starting: Ray has not given it its resources yet. Just started: Ray's view of
            # what is free may not show it yet (``view_lag_s``; a second job was launched into
            # its CPU, on a shared pool into serving's headroom). Being preempted: what it
            # frees is the waiting replica's, not the next queued job's (its end may reach Ray
            # before it reaches us). Counted twice until Ray's view catches up, which only
            # delays the queue.
            at = j.started_at
            recent = j.state == "running" and at is not None and at > just_started
            if j.state == "starting" or j.stop_state == PREEMPT or recent:
                _take(free, scaled(demand(r), j.workers))
        for job in queued:
            r = Resources.model_validate(job.resources)
            need = scaled(demand(r), job.workers)
            if job.not_before is not None and job.not_before > now:
                # Preempted: the replica it made room for takes the room first (held for
                # it all the same: lower priorities do not jump the queue).
                _take(free, need)
                continue
            reason = held.get(job.workspace_id) or _quota_reason(
                quotas.get(job.workspace_id), usage[job.workspace_id], r, job.workers
            )
            if reason is None:
                missing = shortfall(need, free)
                if missing:
                    reason = "waiting for " + ", ".join(missing)
                    if kept and not shortfall(need, preemption.plus(free, kept)):
                        reason += f" ({describe(kept)} kept free for serving's next replicas)"
                    _take(free, need)  # held for it: lower priorities do not jump the queue
            if reason is not None:
                if reason != job.wait_reason:
                    self._set_wait(job.id, reason)
                continue
            _take(free, need)
            u = usage[job.workspace_id]
            u.cpus, u.gpus, u.jobs = (
                u.cpus + r.cpus * job.workers,
                u.gpus + r.gpus * job.workers,
                u.jobs + 1,
            )
            self._launch(job.id)

    def _set_wait(self, job_id: str, reason: str) -> None:
        with self.db.write() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None or job.wait_reason == reason:
                return
            if job.state == "queued" or (job.state == "starting" and job.report_seq == 0):
                job.wait_reason = reason
                add_event(s, job, "wait", reason)

    def _launch(self, job_id: str) -> None:
        with self.db.write() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None or job.state != "queued":
                return
            job.attempt += 1
            job.state, job.wait_reason, job.report_seq = "starting", None, 0
            job.progress = {k: v for k, v in (job.progress or {}).items() if k not in ("t0", "s0")}
            add_event(s, job, "state", f"starting (attempt {job.attempt})", attempt=job.attempt)
            spec = self._spec(s, job)
        if not self.loop.current():
            # Deposed since the (fenced) commit: the new leader finds the attempt missing on
            # the cluster and retries it; launching it here too would run the job twice.
            log.warning("not launching %s: this server no longer leads", job_id)
            return
        self._launched[(job_id, spec.attempt)] = time.monotonic()
        try:
            self.backend.launch(spec)
        except Exception as exc:
            log.exception("launching %s failed", job_id)
            self._finish(
                job_id, spec.attempt, {"type": "end", "outcome": "lost", "error": str(exc)}
            )

    def _spec(self, s: Any, job: Job) -> JobSpec:
        dataset = None
        if job.dataset_version_id is not None:
            dv = s.get(DatasetVersion, job.dataset_version_id)
            name = s.scalar(select(Dataset.name).where(Dataset.id == dv.dataset_id))
            dataset = dataset_manifest(s, dv, name)
        code = job.code or {}
        return JobSpec(
            job_id=job.id,
            attempt=job.attempt,
            workspace_id=job.workspace_id,
            artifacts=self.store.url,
            kind=job.kind,
            recipe=job.recipe,
            params=job.params,
            dataset=dataset,
            code_files=[BlobFile.model_validate(f) for f in code.get("files", [])],
            entrypoint=code.get("entrypoint"),
            args=code.get("args", []),
            model_files=[
                BlobFile.model_validate(f)
                for f in (
                    model_files(s, job.model_version_id)
                    if job.model_version_id and job.kind != "train"
                    else []
                )
            ],
            models=base_models.job_models(s, job),
            resources=Resources.model_validate(job.resources),
            workers=job.workers,
            unsandboxed_ok=job.recipe == "script" and allow_unsandboxed(s),
            secrets=secret_values(s, self.home, job.workspace_id)
            if job.recipe == "script" and self.home is not None
            else {},
        )


def _held_by(active: list[Job]) -> dict[int, dict[str, float]]:
    """What each workspace's active jobs hold."""
    out: dict[int, dict[str, float]] = {}
    for j in active:
        out[j.workspace_id] = preemption.plus(out.get(j.workspace_id, {}), preemption.held(j))
    return out


def _take(free: dict[str, float], need: Mapping[str, float]) -> None:
    for k, v in need.items():
        free[k] = free.get(k, 0.0) - v


def _quota_reason(ws: Workspace | None, used: _Usage, r: Resources, workers: int) -> str | None:
    if ws is None:
        return None
    if ws.max_concurrent_jobs is not None and used.jobs + 1 > ws.max_concurrent_jobs:
        return f"workspace quota: {used.jobs} of {ws.max_concurrent_jobs} concurrent jobs running"
    if ws.max_cpus is not None and used.cpus + r.cpus * workers > ws.max_cpus + 1e-9:
        return f"workspace quota: {used.cpus:g} CPUs in use of {ws.max_cpus:g}"
    if ws.max_gpus is not None and used.gpus + r.gpus * workers > ws.max_gpus + 1e-9:
        return f"workspace quota: {used.gpus:g} GPUs in use of {ws.max_gpus:g}"
    return None
