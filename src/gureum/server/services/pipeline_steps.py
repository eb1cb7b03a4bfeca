"""What each step of a retrain run does, one reconciliation at a time.

A handler looks at what the step recorded (``Step.data``) and at the world (the dataset, the
jobs, the endpoint) and answers with an outcome. Before any side effect it first records the
key of that effect (a job id it chose, the time curation reads up to) and returns; the runner
commits that, and only the next call acts on it. So a control plane restarted anywhere finds
either nothing done, or the effect under its recorded key, and never does a step twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.config import Settings
from gureum.schemas.datasets import CurateRequest
from gureum.schemas.endpoints import EndpointCreate, ReplicaCounts
from gureum.schemas.jobs import TERMINAL_STATES, JobCreate, Resources
from gureum.schemas.pipelines import RunState
from gureum.server.auth import Principal
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import Dataset, DatasetVersion, Job, Model, ModelVersion
from gureum.server.db.tables_serving import Endpoint, EndpointEvent, UsageRecord
from gureum.server.errors import ApiError, NotFound
from gureum.server.services import curate, endpoints, jobs, models
from gureum.server.services.costs import prices_from
from gureum.server.services.models_gates import metric_gates
from gureum.server.services.pipelines import gate_metric, served_version, training_job
from gureum.storage.store import ArtifactStore

Live = Callable[[str], ReplicaCounts]
# A canary that has not started serving after this long is given up on.
CANARY_START_TIMEOUT = timedelta(minutes=30)


@dataclass
class Env:
    """What steps reach: the control plane's stores and the controllers they wake."""

    db: Database
    store: ArtifactStore
    settings: Settings
    secret: bytes
    data_url: Callable[[], str | None]
    live: Live
    nodes: jobs.NodesFn
    wake: Callable[[], None]


@dataclass
class Ctx:
    """One step's view of its run (copies; the runner writes back what the outcome says)."""

    principal: Principal
    pipeline: str
    model: str
    endpoint: str
    dataset: str
    config: dict[str, Any]
    run: dict[str, Any]
    step: dict[str, Any]
    tag: str
    request: dict[str, Any]
    previous_until: str | None


@dataclass
class Outcome:
    """``state`` None: the step waits (maybe recording ``data``); "succeeded"/"skipped": the next
    step follows; an end state ends the run with ``message`` as its reason."""

    message: str = ""
    state: str | None = None
    run_state: RunState | None = None
    data: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)


def wait(message: str = "", **data: Any) -> Outcome:
    return Outcome(message, data=data)


def done(message: str, run: dict[str, Any] | None = None, **data: Any) -> Outcome:
    return Outcome(message, "succeeded", data=data, run=run or {})


def stop(state: RunState, message: str, step: str | None = None, **data: Any) -> Outcome:
    """End the run; the step itself failed unless ``step`` says otherwise (a decision made)."""
    if step is None:
        step = "succeeded" if state == RunState.promoted else "failed"
    return Outcome(message, step, state, data=data)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


# -- curate ---------------------------------------------------------------------------------------


def _curated(env: Env, ctx: Ctx) -> str | None:
    """The version this run curated, if an earlier try got that far."""
    with env.db.read() as s:
        rows = s.execute(
            select(DatasetVersion.version, DatasetVersion.source)
            .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
            .where(
                Dataset.workspace_id == ctx.principal.workspace_id,
                Dataset.name == ctx.dataset,
            )
            .order_by(DatasetVersion.version.desc())
            .limit(50)
        ).all()
    for number, source in rows:
        if isinstance(source, dict) and (source.get("pipeline_run") or {}).get("tag") == ctx.tag:
            return f"{ctx.dataset}:{number}"
    return None


def curate_step(env: Env, ctx: Ctx) -> Outcome:
    if "until" not in ctx.step:
        with env.db.read() as s:
            version, model = served_version(s, ctx.principal.workspace_id, ctx.endpoint)
            production = {"production": f"{model}:{version.version}", "production_id": version.id}
        return Outcome(
            "reading the captured calls",
            data={"until": _iso(utcnow()), "since": ctx.previous_until},
            run=production,
        )
    made = _curated(env, ctx)
    if made is None:
        body = CurateRequest(
            from_endpoint=ctx.endpoint,
            since=when(ctx.step["since"]) if ctx.step.get("since") else None,
            until=when(ctx.step["until"]),
            min_rating=ctx.config.get("min_rating"),
            labelled_only=bool(ctx.config.get("labelled_only")),
            message=f"curated by pipeline {ctx.pipeline}",
        )
        run = {"pipeline": ctx.pipeline, "tag": ctx.tag}
        try:
            out = curate.curate(
                env.db, env.store, env.settings, ctx.principal, ctx.dataset, body, run=run
            )
        except ApiError as e:
            if e.status == 422 and "nothing was made" in e.message:
                return stop(RunState.not_promoted, f"nothing new to learn from: {e.message}")
            raise
        made = f"{out.dataset}:{out.version}"
    return done(f"curated {made}", run={"dataset_version": made}, version=made)


# -- train ----------------------------------------------------------------------------------------


def _job_state(env: Env, job_id: str) -> Job | None:
    with env.db.read() as s:
        job = s.get(Job, job_id)
        if job is not None:
            s.expunge(job)
        return job


def _submit(env: Env, ctx: Ctx, job_id: str, body: JobCreate) -> None:
    if _job_state(env, job_id) is None:
        prices = prices_from(env.settings)
        jobs.submit(env.db, env.store, ctx.principal, body, env.nodes, prices=prices, job_id=job_id)
        env.wake()


def _production(env: Env, ctx: Ctx) -> tuple[ModelVersion, Job]:
    with env.db.read() as s:
        version = s.get(ModelVersion, int(ctx.run["production_id"]))
        if version is None:
            raise NotFound(f"{ctx.run.get('production')} is gone")
        job = training_job(s, version, str(ctx.run.get("production")))
        s.expunge_all()
        return version, job


def _version(s: Session, ctx: Ctx, label: str) -> tuple[Model, ModelVersion]:
    """A version by its "name:number" label, in the run's workspace (404 if it is gone)."""
    name, _, number = label.partition(":")
    model = models.find_model(s, ctx.principal.workspace_id, name)
    return model, models.resolve_version_row(s, model, number)


def train_step(env: Env, ctx: Ctx) -> Outcome:
    if "job" not in ctx.step:
        return wait("submitting the training job", job=jobs.new_job_id())
    job_id = ctx.step["job"]
    _, last = _production(env, ctx)
    body = JobCreate(
        kind="train",
        recipe=last.recipe,
        dataset=ctx.run["dataset_version"],
        model=ctx.model,
        params={**last.params, **(ctx.config.get("params") or {})},
        resources=Resources.model_validate(last.resources),
        workers=last.workers,
        priority=last.priority,
        max_retries=last.max_retries,
        timeout_s=last.timeout_s,
    )
    _submit(env, ctx, job_id, body)
    job = _job_state(env, job_id)
    assert job is not None
    if job.state not in TERMINAL_STATES:
        return wait(f"job {job_id} {job.state} (the configuration of job {last.id})")
    if job.state != "succeeded" or not job.output_version:
        why = (job.error or job.state).splitlines()[0][:500]
        return stop(RunState.failed, f"training job {job_id} {job.state}: {why}")
    with env.db.read() as s:
        candidate_id = _version(s, ctx, job.output_version)[1].id
    return done(
        f"job {job_id} trained {job.output_version}",
        run={"candidate": job.output_version, "candidate_id": candidate_id},
        metrics=job.metrics,
    )


# -- evaluate -------------------------------------------------------------------------------------


def evaluate_step(env: Env, ctx: Ctx) -> Outcome:
    if "jobs" not in ctx.step:
        ids = {"candidate": jobs.new_job_id(), "production": jobs.new_job_id()}
        return wait("submitting the evaluations", jobs=ids)
    _, last = _production(env, ctx)
    resources = Resources.model_validate(last.resources)
    found: dict[str, Job] = {}
    for role, job_id in ctx.step["jobs"].items():
        body = JobCreate(
            kind="evaluate",
            model=ctx.run[role],
            dataset=ctx.run["dataset_version"],
            resources=resources,
            priority=last.priority,
            max_retries=last.max_retries,
        )
        _submit(env, ctx, job_id, body)
        job = _job_state(env, job_id)
        assert job is not None
        found[role] = job
    pending = [
        f"{r} ({j.id} {j.state})" for r, j in found.items() if j.state not in TERMINAL_STATES
    ]
    if pending:
        return wait(f"evaluating on {ctx.run['dataset_version']}: " + ", ".join(pending))
    for role, job in found.items():
        if job.state != "succeeded":
            why = (job.error or job.state).splitlines()[0][:500]
            return stop(
                RunState.failed, f"evaluating {ctx.run[role]} ({job.id}) {job.state}: {why}"
            )
    metrics = {role: dict(job.metrics) for role, job in found.items()}
    return done(
        f"both evaluated on the held-out side of {ctx.run['dataset_version']}",
        run={"metrics": metrics},
    )


# -- gate -----------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def gate_step(env: Env, ctx: Ctx) -> Outcome:
    metrics = ctx.run.get("metrics") or {}
    cand, prod = metrics.get("candidate", {}), metrics.get("production", {})
    with env.db.read() as s:
        recipe = s.scalar(
            select(ModelVersion.recipe).where(ModelVersion.id == int(ctx.run["production_id"]))
        )
        model, version = _version(s, ctx, str(ctx.run["candidate"]))
        failed = [c for c in metric_gates(model, version) if not c.passed]
    if failed:
        return stop(
            RunState.not_promoted,
            f"{ctx.run['candidate']} fails the model's gate: {failed[0].reason}; production "
            "untouched",
        )
    held_out = f"the held-out side of {ctx.run['dataset_version']}"
    for metric, higher in gate_metric(ctx.config, recipe or ""):
        c, p = _number(cand.get(metric)), _number(prod.get(metric))
        if c is None or p is None:
            continue
        better = c > p if higher else c < p
        word = "above" if higher else "below"
        verdict_ = f"{metric} {c:.4g} vs production's {p:.4g} on {held_out}"
        if not better:
            return stop(
                RunState.not_promoted,
                f"the candidate is not better: {verdict_} (must be {word}); production untouched",
                metric=metric,
            )
        return done(f"the candidate is better: {verdict_}", metric=metric)
    return stop(
        RunState.failed,
        f"no metric to compare: neither evaluation reported "
        f"{', '.join(m for m, _ in gate_metric(ctx.config, recipe or '')) or 'the gate metric'}",
    )


# -- approval -------------------------------------------------------------------------------------


def approval_step(env: Env, ctx: Ctx) -> Outcome:
    if ctx.config.get("approve", "auto") != "manual":
        return Outcome("automatic (the pipeline does not ask for approval)", "skipped")
    given = ctx.request.get("approval")
    if not given:
        return Outcome(
            f"waiting for approval: gureum pipelines approve {ctx.pipeline} [--reject]",
            run_state=RunState.awaiting_approval,
        )
    note = f": {given['note']}" if given.get("note") else ""
    if not given.get("approve"):
        return stop(RunState.not_promoted, f"rejected by {given.get('by')}{note}")
    return Outcome(f"approved by {given.get('by')}{note}", "succeeded", RunState.running)


# -- canary ---------------------------------------------------------------------------------------


def endpoint_of(env: Env, ctx: Ctx) -> Endpoint:
    with env.db.read() as s:
        ep = s.scalar(
            select(Endpoint).where(
                Endpoint.workspace_id == ctx.principal.workspace_id, Endpoint.name == ctx.endpoint
            )
        )
        if ep is None:
            raise NotFound(f"endpoint {ctx.endpoint!r} is gone")
        s.expunge(ep)
        return ep


def _last_word(env: Env, ep: Endpoint) -> str:
    """Why the endpoint dropped the canary (its latest rollback or failure event)."""
    with env.db.read() as s:
        message = s.scalar(
            select(EndpointEvent.message)
            .where(EndpointEvent.endpoint_id == ep.id)
            .where(EndpointEvent.kind.in_(("rollback", "failed", "canary", "error")))
            .order_by(EndpointEvent.seq.desc())
            .limit(1)
        )
    return message or "no reason recorded"


def _canary_serves(env: Env, ep: Endpoint, ctx: Ctx) -> bool:
    """A canary replica is up, or (an endpoint scaled to zero) the canary answered a call."""
    if env.live(ctx.endpoint).canary >= 1:
        return True
    with env.db.read() as s:
        answered = s.scalar(
            select(UsageRecord.id)
            .where(UsageRecord.endpoint_id == ep.id, UsageRecord.role == "canary")
            .where(UsageRecord.model_label == ctx.run["candidate"])
            .where(UsageRecord.time >= when(ctx.step["deployed"]))
            .limit(1)
        )
    return answered is not None


def canary_step(env: Env, ctx: Ctx) -> Outcome:
    candidate_id = int(ctx.run["candidate_id"])
    ep = endpoint_of(env, ctx)
    if not ctx.step.get("deployed"):
        if ep.canary_version_id not in (None, candidate_id):
            return stop(
                RunState.not_promoted,
                f"endpoint {ctx.endpoint!r} is already trying another version; try again later",
            )
        if ep.canary_version_id is None and ep.version_id != candidate_id:
            pct = float(ctx.config.get("canary_percent", 10.0))
            body = EndpointCreate(name=ctx.endpoint, model=ctx.run["candidate"], canary_percent=pct)
            endpoints.deploy(
                env.db, ctx.principal, body, env.secret, env.data_url(), env.live, store=env.store
            )
            env.wake()
        return wait(f"canary {ctx.run['candidate']} starting", deployed=_iso(utcnow()))
    if ep.canary_version_id != candidate_id:
        if ep.version_id == candidate_id:
            return done("the candidate was promoted on the endpoint by hand", {"by_hand": True})
        return stop(RunState.not_promoted, f"the canary was dropped: {_last_word(env, ep)}")
    minutes = float(ctx.config.get("canary_minutes", 10.0))
    serving = ctx.step.get("serving_since")
    now = utcnow()
    if serving is None:
        if not _canary_serves(env, ep, ctx):
            if now - when(ctx.step["deployed"]) > CANARY_START_TIMEOUT:
                return stop(RunState.failed, "the canary did not start within 30 minutes")
            return wait(f"canary {ctx.run['candidate']} starting")
        return wait(
            f"canary serves {ctx.config.get('canary_percent', 10.0):g}% for {minutes:g} min",
            serving_since=_iso(now),
        )
    ends = when(serving) + timedelta(minutes=minutes)
    if now < ends:
        left = (ends - now).total_seconds()
        return wait(f"canary window: {left:.0f} s left")
    return done(f"canary window over ({minutes:g} min)", {"canary_window": [serving, _iso(ends)]})
