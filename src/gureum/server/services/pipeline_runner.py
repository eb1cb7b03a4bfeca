"""Moves a retrain run along its steps: one handler call at a time, its outcome written back
under a lock on the run, so that the run's record is always what was done (see
``pipeline_steps`` for why a restart never repeats a step)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.schemas.pipelines import STEPS, RunState, StepName, StepState
from gureum.server.db.base import utcnow
from gureum.server.db.tables_pipelines import Pipeline, PipelineRun, PipelineStep
from gureum.server.errors import ApiError, NotFound
from gureum.server.services import jobs
from gureum.server.services.pipeline_decide import decide_step, drop_canary
from gureum.server.services.pipeline_steps import (
    Ctx,
    Env,
    Outcome,
    approval_step,
    canary_step,
    curate_step,
    evaluate_step,
    gate_step,
    train_step,
)
from gureum.server.services.pipelines import ACTIVE, acting_principal, add_event

Handler = Callable[[Env, Ctx], Outcome]
HANDLERS: dict[StepName, Handler] = {
    StepName.curate: curate_step,
    StepName.train: train_step,
    StepName.evaluate: evaluate_step,
    StepName.gate: gate_step,
    StepName.approval: approval_step,
    StepName.canary: canary_step,
    StepName.decide: decide_step,
}
# A step that raises this many times in a row (a bug, a database gone bad) fails its run.
MAX_ERRORS = 5
ENDED = {RunState.promoted, RunState.not_promoted, RunState.failed, RunState.cancelled}


def advance(env: Env, run_id: int) -> None:
    """As far as the run can go now: steps that finish at once are followed by the next."""
    for _ in range(3 * len(STEPS)):
        if not _move(env, run_id):
            return


def _step(s: Session, run: PipelineRun) -> PipelineStep:
    step = s.scalar(
        select(PipelineStep).where(PipelineStep.run_id == run.id, PipelineStep.name == run.step)
    )
    assert step is not None, f"run {run.id} has no step {run.step}"
    return step


def _previous_until(s: Session, p: Pipeline, run: PipelineRun) -> str | None:
    """Where the last promoted run stopped reading: calls after it are new to production."""
    data = s.scalar(
        select(PipelineStep.data)
        .join(PipelineRun, PipelineRun.id == PipelineStep.run_id)
        .where(PipelineRun.pipeline_id == p.id, PipelineRun.number < run.number)
        .where(PipelineRun.state == RunState.promoted.value)
        .where(PipelineStep.name == StepName.curate.value)
        .order_by(PipelineRun.number.desc())
        .limit(1)
    )
    return (data or {}).get("until")


def _move(env: Env, run_id: int) -> bool:
    """One handler call (or a step's start); True when the run may move again right away."""
    with env.db.write() as s:
        run = s.get(PipelineRun, run_id, with_for_update=True)
        if run is None or run.state not in ACTIVE:
            return False
        p = s.get(Pipeline, run.pipeline_id)
        assert p is not None
        step = _step(s, run)
        if step.state == StepState.pending:
            step.state, step.started_at = StepState.running.value, utcnow()
            add_event(s, run, "step", f"{step.name} started", step.name)
            return True
        try:
            principal = acting_principal(s, p)
        except ApiError as e:
            _end(s, run, step, Outcome(e.message, StepState.failed, RunState.failed))
            return False
        ctx = Ctx(
            principal=principal,
            pipeline=p.name,
            model=p.model_name,
            endpoint=p.endpoint_name,
            dataset=p.dataset_name,
            config=dict(p.config),
            run=dict(run.data or {}),
            step=dict(step.data or {}),
            tag=f"{p.id}/{run.id}",
            request=dict(run.request or {}),
            previous_until=_previous_until(s, p, run),
        )
        name = StepName(step.name)
    cancelled_by = ctx.request.get("cancel")
    if cancelled_by and not (name == StepName.decide and "decision" in ctx.step):
        _cancel(env, run_id, ctx, str(cancelled_by))
        return False
    try:
        outcome = HANDLERS[name](env, ctx)
    except ApiError as e:  # a service refused what the step asked: the run cannot go on
        outcome = Outcome(f"{name}: {e.message}", StepState.failed, RunState.failed)
    return _apply(env, run_id, name, outcome)


def _apply(env: Env, run_id: int, name: StepName, outcome: Outcome) -> bool:
    with env.db.write() as s:
        run = s.get(PipelineRun, run_id, with_for_update=True)
        if run is None or run.state not in ACTIVE or run.step != name:
            return False  # cancelled or moved on meanwhile
        step = _step(s, run)
        step.data = {**(step.data or {}), **outcome.data, "errors": 0}
        run.data = {**(run.data or {}), **outcome.run}
        if outcome.message:
            step.message = outcome.message
        resumed = outcome.run_state in (RunState.running, RunState.awaiting_approval)
        if resumed and outcome.run_state is not None and run.state != outcome.run_state:
            run.state = outcome.run_state.value
            add_event(s, run, "state", f"{run.state}: {outcome.message}", name)
        if outcome.state is None:
            if outcome.data:  # it recorded a key or a decision: act on it now
                add_event(s, run, "step", outcome.message, name)
                return True
            return False
        if outcome.run_state in ENDED:
            _end(s, run, step, outcome)
            return False
        step.state, step.finished_at = outcome.state, utcnow()
        add_event(s, run, "step", f"{name} {outcome.state}: {outcome.message}", name)
        following = STEPS.index(name) + 1
        if following >= len(STEPS):
            _end(s, run, None, Outcome(outcome.message, None, RunState.failed))
            return False
        run.step = STEPS[following].value
        return True


def _end(s: Session, run: PipelineRun, step: PipelineStep | None, outcome: Outcome) -> None:
    assert outcome.run_state is not None
    now = utcnow()
    if step is not None:
        step.state = outcome.state or StepState.failed.value
        step.finished_at = now
        step.message = outcome.message or step.message
    for later in s.scalars(
        select(PipelineStep).where(
            PipelineStep.run_id == run.id, PipelineStep.state == StepState.pending.value
        )
    ):
        later.state, later.message = StepState.skipped.value, "not reached"
    run.state, run.reason, run.finished_at, run.step = (
        outcome.run_state.value,
        outcome.message,
        now,
        None,
    )
    add_event(s, run, "state", f"{run.state}: {outcome.message}")


def _cancel(env: Env, run_id: int, ctx: Ctx, by: str) -> None:
    """Stop what the run started (its jobs, its canary); production stays as it was."""
    with env.db.read() as s:
        run = s.get(PipelineRun, run_id)
        assert run is not None
        recorded = [
            step.data or {}
            for step in s.scalars(select(PipelineStep).where(PipelineStep.run_id == run_id))
        ]
    started = [d["job"] for d in recorded if "job" in d]
    started += [j for d in recorded for j in (d.get("jobs") or {}).values()]
    for job_id in started:
        with contextlib.suppress(NotFound):  # chosen but never submitted
            jobs.cancel(env.db, ctx.principal, job_id)
    dropped = drop_canary(env, ctx, f"run cancelled by {by}")
    env.wake()
    with env.db.write() as s:
        run = s.get(PipelineRun, run_id, with_for_update=True)
        if run is None or run.state not in ACTIVE:
            return
        step = _step(s, run) if run.step else None
        what = " and its canary rolled back" if dropped else ""
        message = f"cancelled by {by}{what}; production untouched"
        _end(s, run, step, Outcome(message, StepState.failed, RunState.cancelled))


def record_error(env: Env, run_id: int, exc: Exception) -> None:
    """A handler raised: counted on its step; past MAX_ERRORS in a row the run fails."""
    with env.db.write() as s:
        run = s.get(PipelineRun, run_id, with_for_update=True)
        if run is None or run.state not in ACTIVE or run.step is None:
            return
        step = _step(s, run)
        errors = int((step.data or {}).get("errors", 0)) + 1
        step.data = {**(step.data or {}), "errors": errors}
        text = f"{type(exc).__name__}: {str(exc).splitlines()[0][:500] if str(exc) else ''}"
        add_event(s, run, "error", f"{step.name} raised ({errors}/{MAX_ERRORS}): {text}", step.name)
        if errors >= MAX_ERRORS:
            why = f"{step.name} failed {errors} times in a row: {text}"
            _end(s, run, step, Outcome(why, StepState.failed, RunState.failed))
