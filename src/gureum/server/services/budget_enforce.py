"""Budget enforcement: the state a workspace's spend puts its budget in, and what that state
does to its work.

At 80% of the monthly budget a warning is recorded once a month. At 100% new jobs are refused
(admission, ``budget_ledger``), running jobs are stopped with their checkpoints kept and queued
again (``requeue``, called by the job controller when the stopped attempt ends), queued jobs
wait, and endpoints are held at their minimum replicas (``held_autoscaling``, read by the
endpoint controller when it applies an endpoint). Raising the budget (or a new month) lifts all
of it: paused jobs start again from their last checkpoint and endpoints scale as configured.
Nothing here talks to Ray: it writes the desired state; the controllers carry it out.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.schemas.consumers import Prices
from gureum.schemas.endpoints import Autoscaling, EndpointConfig
from gureum.schemas.jobs import ACTIVE_STATES, BUDGET_PAUSE
from gureum.server.db.base import utcnow
from gureum.server.db.tables import Job
from gureum.server.db.tables_budgets import BudgetEvent, JobBudget, WorkspaceBudget
from gureum.server.db.tables_serving import Endpoint
from gureum.server.services import costs
from gureum.server.services import endpoints as endpoint_svc
from gureum.server.services.budget_ledger import Spend, budget_state, classify, lock, measure
from gureum.server.services.jobs import add_event

# ``Job.stop_state`` of an attempt the budget stops: when it ends, the job is queued again.
PAUSE = BUDGET_PAUSE


def reconcile(s: Session, workspace_id: int, prices: Prices, now: datetime | None = None) -> bool:
    """Bring one workspace's budget state in line with its spend; True when anything changed
    that a controller must act on (jobs to stop, jobs to start, endpoints to re-apply)."""
    budget = lock(s, workspace_id)
    if budget is None:
        return False
    now = now or utcnow()
    m = measure(s, workspace_id, prices, now)
    state = classify(m.spend, budget.monthly_limit)
    old = budget.state
    budget.spend, budget.period = m.spend, m.period
    if state != "ok" and budget.warned_period != m.period:
        budget.warned_period = m.period
        _event(s, budget, m, "warning", f"compute spend reached {_share(budget, m)}")
    changed = False
    if state != old:
        changed = True
        budget.state, budget.state_changed_at = state, now
        if state == "exceeded":
            _event(
                s,
                budget,
                m,
                "exceeded",
                f"compute spend reached {_share(budget, m)}: new jobs are refused, running jobs "
                "stop with their checkpoints kept and resume when the budget is raised, "
                "endpoints are held at their minimum replicas",
            )
            _hold_endpoints(s, workspace_id, True)
        elif old == "exceeded":
            resumed = _resume(s, workspace_id)
            _event(
                s,
                budget,
                m,
                "resumed",
                f"compute spend is {_share(budget, m)}: {resumed} paused job(s) resume, "
                "endpoints scale as configured again",
            )
            _hold_endpoints(s, workspace_id, False)
    if state == "exceeded":
        changed = _pause_running(s, workspace_id, exceeded_reason(budget)) > 0 or changed
    return changed


def exceeded_reason(budget: WorkspaceBudget) -> str:
    """Why work waits; it names no spend, which grows: a queued job's reason stays put."""
    limit = budget.monthly_limit or 0.0
    return (
        f"the workspace's budget is exceeded ({limit:.4g} a month, {budget.period}); "
        "it resumes when the budget is raised"
    )


def _share(budget: WorkspaceBudget, m: Spend) -> str:
    limit = budget.monthly_limit or 0.0
    percent = f" ({m.spend / limit:.0%})" if limit > 0 else ""
    return f"{m.spend:.4g} of the monthly budget of {limit:.4g}{percent} in {m.period}"


def _event(s: Session, budget: WorkspaceBudget, m: Spend, kind: str, message: str) -> None:
    s.add(
        BudgetEvent(
            workspace_id=budget.workspace_id,
            period=m.period,
            kind=kind,
            spend=round(m.spend, 6),
            monthly_limit=budget.monthly_limit,
            message=message,
        )
    )


# -- jobs -----------------------------------------------------------------------------------------


def _pause_running(s: Session, workspace_id: int, reason: str) -> int:
    """Ask the job controller to stop the workspace's running jobs (it queues them again)."""
    jobs = s.scalars(
        select(Job)
        .where(
            Job.workspace_id == workspace_id,
            Job.state.in_(ACTIVE_STATES),
            Job.stop_state.is_(None),
        )
        .with_for_update()
    ).all()
    for job in jobs:
        job.stop_state, job.stop_reason = PAUSE, reason
        add_event(s, job, "info", f"stopping: {reason}")
    return len(jobs)


def requeue(s: Session, job: Job) -> None:
    """A budget-stopped attempt ended: the job goes back to the queue and waits for the budget.
    The span it ran is recorded now (its cost stays counted), its time limit keeps only what it
    has left, and its next attempt resumes from its last checkpoint."""
    now = utcnow()
    costs.end_span(s, job, now)
    reason = job.stop_reason or "the workspace's monthly budget is exceeded"
    job.state, job.stop_state, job.stop_reason = "queued", None, None
    job.wait_reason, job.report_seq = reason, 0
    mark = s.get(JobBudget, job.id)
    if mark is None:  # admitted before the workspace had a budget: nothing was reserved
        mark = JobBudget(
            job_id=job.id,
            workspace_id=job.workspace_id,
            period=now.strftime("%Y-%m"),
            reserved=0.0,
            hourly_price=0.0,
        )
        s.add(mark)
    mark.paused_at = now
    add_event(
        s,
        job,
        "state",
        f"queued: paused by the budget after attempt {job.attempt}; "
        "it resumes from its last checkpoint when the budget allows",
        attempt=job.attempt,
    )


def _resume(s: Session, workspace_id: int) -> int:
    marks = s.scalars(
        select(JobBudget).where(
            JobBudget.workspace_id == workspace_id, JobBudget.paused_at.is_not(None)
        )
    ).all()
    for mark in marks:
        mark.paused_at = None
    return len(marks)


def held_reasons(s: Session, workspace_ids: set[int]) -> dict[int, str]:
    """Why queued jobs of these workspaces may not start: their budgets are exceeded."""
    if not workspace_ids:
        return {}
    rows = s.scalars(
        select(WorkspaceBudget).where(
            WorkspaceBudget.workspace_id.in_(workspace_ids), WorkspaceBudget.state == "exceeded"
        )
    ).all()
    return {b.workspace_id: exceeded_reason(b) for b in rows}


# -- endpoints ------------------------------------------------------------------------------------


def capped(autoscaling: Autoscaling) -> Autoscaling:
    """At most the minimum (one for an endpoint that scales to zero: Ray Serve needs one)."""
    return autoscaling.model_copy(update={"max_replicas": max(autoscaling.min_replicas, 1)})


def held_autoscaling(s: Session, workspace_id: int, autoscaling: Autoscaling) -> Autoscaling:
    """The autoscaling an endpoint is applied with: its own, or held at its minimum while its
    workspace's budget is exceeded."""
    if budget_state(s, workspace_id) == "exceeded":
        return capped(autoscaling)
    return autoscaling


def _hold_endpoints(s: Session, workspace_id: int, hold: bool) -> None:
    """Re-apply the endpoints whose replicas the hold changes (the endpoint controller reads
    ``held_autoscaling`` when it applies them)."""
    for ep in s.scalars(
        select(Endpoint)
        .where(Endpoint.workspace_id == workspace_id, Endpoint.state != "deleting")
        .with_for_update()
    ):
        scaling = EndpointConfig.model_validate(ep.config).autoscaling
        if capped(scaling) == scaling:
            continue
        endpoint_svc.changed(ep)
        if hold:
            message = f"held at {scaling.min_replicas} replica(s) minimum: the budget is exceeded"
        else:
            message = f"released: up to {scaling.max_replicas} replicas again"
        endpoint_svc.add_event(s, ep, "budget", message)
