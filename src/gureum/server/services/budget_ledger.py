"""Budget arithmetic and admission: what a workspace spent this month, what its admitted jobs
may still cost, and the reservation a new job takes under a lock of the budget row.

Spend is finished work (the resource ledger, priced as cost reports price it) plus what
unfinished jobs have run so far. A job's reservation is its maximum cost, taken at admission as
min(per-job limit, what the month has left after spend and the other reservations), and enforced
as its time limit; what a job has not used of it counts as committed until the job ends. The
budget row is locked (``SELECT ... FOR UPDATE``) while a job is admitted, so submissions racing
for the last of a budget are admitted one at a time and each sees the reservations before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.schemas.budgets import WARN_RATIO, BudgetState
from gureum.schemas.consumers import Prices
from gureum.schemas.jobs import TERMINAL_STATES, Resources
from gureum.server.db.base import utcnow
from gureum.server.db.tables import Job, JobEvent
from gureum.server.db.tables_budgets import JobBudget, WorkspaceBudget
from gureum.server.errors import ApiError
from gureum.server.services import costs
from gureum.server.services.usage import period_bounds

HOUR = 3600.0
# Admission needs at least this much of the month left: a sliver would be a job that can
# run for no time at all.
MIN_RESERVATION = 1e-9


class BudgetExceeded(ApiError):
    status, code = 409, "budget_exceeded"


@dataclass
class Spend:
    """One workspace's month, in the prices' currency."""

    period: str
    recorded: float = 0.0  # the ledger: finished jobs, budget-stopped spans, endpoints
    running: float = 0.0  # unfinished jobs since their (latest) start, not yet recorded
    reserved: float = 0.0  # what admitted, unfinished jobs may still cost at most
    endpoints: dict[str, float] = field(default_factory=dict)

    @property
    def spend(self) -> float:
        return self.recorded + self.running

    @property
    def committed(self) -> float:
        return self.spend + self.reserved


def period_of(now: datetime) -> str:
    return now.strftime("%Y-%m")


def job_hourly(job: Job, prices: Prices) -> float:
    return costs.hourly(Resources.model_validate(job.resources), job.workers, prices)


def classify(spend: float, monthly: float | None) -> BudgetState:
    if monthly is None:
        return "ok"
    if spend >= monthly:
        return "exceeded"
    return "warning" if spend >= WARN_RATIO * monthly else "ok"


def remaining(monthly: float | None, committed: float) -> float | None:
    return None if monthly is None else max(0.0, monthly - committed)


def measure(s: Session, workspace_id: int, prices: Prices, now: datetime | None = None) -> Spend:
    """Spend, running cost and outstanding reservations of ``workspace_id`` this month."""
    now = now or utcnow()
    period = period_of(now)
    start, end = period_bounds(period)
    priced = costs.priced(s, workspace_id, start, end, prices)
    by_job, by_endpoint = priced["job"], priced["endpoint"]
    out = Spend(
        period=period,
        recorded=sum(by_job.values()) + sum(by_endpoint.values()),
        endpoints=dict(by_endpoint),
    )
    rows = s.execute(
        select(Job, JobBudget.reserved)
        .outerjoin(JobBudget, JobBudget.job_id == Job.id)
        .where(Job.workspace_id == workspace_id, Job.state.not_in(TERMINAL_STATES))
    ).all()
    for job, reserved in rows:
        so_far = 0.0
        if job.started_at is not None:
            seconds = max(0.0, (now - max(job.started_at, start)).total_seconds())
            so_far = job_hourly(job, prices) * seconds / HOUR
        out.running += so_far
        if reserved is not None:
            out.reserved += max(0.0, reserved - by_job.get(job.id, 0.0) - so_far)
    return out


def lock(s: Session, workspace_id: int) -> WorkspaceBudget | None:
    """The workspace's budget row, locked until the transaction ends (PostgreSQL; SQLite
    writers are serialised by ``BEGIN IMMEDIATE`` already)."""
    return s.get(WorkspaceBudget, workspace_id, with_for_update=True, populate_existing=True)


@dataclass(frozen=True)
class Reservation:
    amount: float  # the job's maximum cost
    seconds: float | None  # its time limit (None: free at these prices, and no limit asked)


def reservation(
    monthly: float | None,
    per_job: float | None,
    committed: float,
    rate: float,
    timeout_s: float | None,
) -> Reservation | None:
    """A new job's reservation: min(per-job limit, what the month has left), as a time limit at
    ``rate`` per hour (a shorter limit of the job's own reserves less); None: refused, the
    month is committed. At least one of the limits is set."""
    cap = per_job
    if monthly is not None:
        left = monthly - committed
        if left < MIN_RESERVATION:
            return None
        cap = left if cap is None else min(cap, left)
    if cap is None:
        raise ValueError("a reservation needs a monthly or a per-job limit")
    if rate <= 0:
        return Reservation(0.0, timeout_s)
    seconds = cap / rate * HOUR
    if timeout_s is not None and timeout_s < seconds:
        return Reservation(rate * timeout_s / HOUR, timeout_s)
    return Reservation(cap, seconds)


def admit(s: Session, job: Job, prices: Prices) -> None:
    """Reserve a new job's maximum cost and make it the job's time limit, or refuse the job
    (409 ``budget_exceeded``) when the month's budget is committed. Called in the transaction
    that inserts the job, after it is flushed; a refusal rolls the job back."""
    budget = lock(s, job.workspace_id)
    if budget is None or (budget.monthly_limit is None and budget.per_job_limit is None):
        return
    m = measure(s, job.workspace_id, prices)
    rate = job_hourly(job, prices)
    cur = prices.currency
    r = reservation(budget.monthly_limit, budget.per_job_limit, m.committed, rate, job.timeout_s)
    if r is None:
        raise BudgetExceeded(
            f"refused: the workspace's monthly budget is used up: {m.spend:.4g} {cur} spent "
            f"and {m.reserved:.4g} {cur} reserved by running and queued jobs, of a limit of "
            f"{budget.monthly_limit:.4g} {cur} in {m.period}; raise it "
            "(gureum budgets set WS --monthly N) to run more",
            details={
                "period": m.period,
                "currency": cur,
                "spend": round(m.spend, 6),
                "reserved": round(m.reserved, 6),
                "monthly": budget.monthly_limit,
                "per_job": budget.per_job_limit,
            },
        )
    job.timeout_s = r.seconds
    if rate > 0:
        note = (
            f"budget: {r.amount:.4g} {cur} reserved, its maximum cost at {rate:.4g} {cur}/hour: "
            f"a time limit of {r.seconds:.6g}s"
        )
    else:
        note = "budget: the job's resources are free at the current prices; nothing reserved"
    s.add(
        JobBudget(
            job_id=job.id,
            workspace_id=job.workspace_id,
            period=m.period,
            reserved=r.amount,
            hourly_price=rate,
        )
    )
    job.event_seq += 1
    s.add(JobEvent(job_id=job.id, seq=job.event_seq, kind="info", message=note, data={}))


def budget_state(s: Session, workspace_id: int) -> BudgetState:
    state = s.scalar(
        select(WorkspaceBudget.state).where(WorkspaceBudget.workspace_id == workspace_id)
    )
    return "exceeded" if state == "exceeded" else "ok"


def refuse_more_serving(s: Session, workspace_id: int, what: str) -> None:
    """409 while the workspace's budget is exceeded: its endpoints are held at their minimum,
    so nothing may add serving capacity (a new endpoint, a higher minimum, a canary or a
    shadow). Changes that cost no more stay allowed: a new version, a lower minimum."""
    if budget_state(s, workspace_id) != "exceeded":
        return
    budget = s.get(WorkspaceBudget, workspace_id)
    assert budget is not None
    raise BudgetExceeded(
        f"{what} is refused: the workspace's budget is exceeded (spend {budget.spend:.4g} of "
        f"{budget.monthly_limit or 0.0:.4g} a month, {budget.period}); its endpoints are held "
        "at their minimum until the budget is raised"
    )
