"""Retrain pipelines: what a team asks for (create, start, cancel, approve) and what it reads.

Running a pipeline is the pipeline controller's business (``server.controllers.pipelines``
and ``server.services.pipeline_steps``): here a run is only started, or asked to stop or go on
(``request``), and the controller acts on it at its next tick.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gureum.recipes import registry
from gureum.recipes.base import RecipeError
from gureum.schemas.common import Page
from gureum.schemas.pipelines import (
    ACTIVE_RUN_STATES,
    STEPS,
    TRIGGER_FIELDS,
    ApprovalIn,
    PipelineCreate,
    PipelineOut,
    PipelineUpdate,
    RunEventOut,
    RunOut,
    RunState,
    StepName,
    StepOut,
    StepState,
)
from gureum.server.auth import Principal, role_rank
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import Job, Membership, Model, ModelVersion, User, Workspace
from gureum.server.db.tables_pipelines import Pipeline, PipelineEvent, PipelineRun, PipelineStep
from gureum.server.errors import ApiError, Conflict, NotFound, Unprocessable
from gureum.server.pagination import PageParams, paginate
from gureum.server.services import audit
from gureum.server.services.cron import Cron, CronError
from gureum.server.services.curate import RECIPES
from gureum.server.services.endpoints import find_endpoint

ACTIVE = tuple(s.value for s in ACTIVE_RUN_STATES)
MAX_EVENT_PAGE = 1000


class RunInProgress(ApiError):
    status, code = 409, "run_in_progress"


def _cron(expr: str | None) -> Cron | None:
    if expr is None:
        return None
    try:
        return Cron.parse(expr)
    except CronError as e:
        raise Unprocessable(f"schedule {expr!r}: {e}") from None


def next_schedule(config: dict[str, Any], after: datetime) -> datetime | None:
    cron = _cron(config.get("schedule"))
    return cron.next_after(after) if cron is not None else None


def served_version(s: Session, workspace_id: int, endpoint: str) -> tuple[ModelVersion, str]:
    """The version the endpoint serves to all traffic (production, for a pipeline) and its
    model's name."""
    ep = find_endpoint(s, workspace_id, endpoint)
    version = s.get(ModelVersion, ep.version_id)
    assert version is not None  # an endpoint's version cannot be deleted (RESTRICT)
    model = s.scalar(select(Model.name).where(Model.id == version.model_id))
    return version, str(model)


def training_job(s: Session, version: ModelVersion, label: str) -> Job:
    """The job whose configuration retrains ``version``'s model: the one that trained it."""
    job = s.get(Job, version.job_id) if version.job_id else None
    if job is None or job.kind != "train":
        raise Unprocessable(
            f"{label} was not trained by a job of this workspace (imported or registered by "
            "hand): a pipeline retrains with the configuration of the job that trained the "
            "served version; train one with `gureum train` and deploy it first"
        )
    return job


def gate_metric(config: dict[str, Any], recipe: str) -> list[tuple[str, bool]]:
    """The metric(s) a candidate must beat production on, in order of preference."""
    if config.get("metric"):
        higher = config.get("higher_is_better")
        return [(str(config["metric"]), True if higher is None else bool(higher))]
    try:
        return list(registry.spec(recipe).gate_metrics)
    except RecipeError:
        return []


def _check_target(s: Session, workspace_id: int, cfg: PipelineCreate) -> None:
    """What create (and an update of the model, endpoint or gate) checks: the endpoint serves
    a version of the model, of a recipe pipelines retrain, trained by a job, with a metric."""
    version, model = served_version(s, workspace_id, cfg.endpoint)
    label = f"{model}:{version.version}"
    if model != cfg.model:
        raise Unprocessable(
            f"endpoint {cfg.endpoint!r} serves {label}, not a version of {cfg.model!r}"
        )
    if version.recipe not in RECIPES:
        raise Unprocessable(
            f"{label} is a {version.recipe or 'model without a recipe'}; pipelines retrain "
            f"models of the recipes {', '.join(RECIPES)}"
        )
    training_job(s, version, label)
    if not gate_metric(cfg.model_dump(), version.recipe or ""):
        raise Unprocessable(f"say which metric a {version.recipe} candidate must beat")


def create(db: Database, principal: Principal, body: PipelineCreate) -> PipelineOut:
    principal.require("developer")
    ws = principal.workspace_id
    cron = _cron(body.schedule)
    with db.write() as s:
        _check_target(s, ws, body)
        now = utcnow()
        row = Pipeline(
            workspace_id=ws,
            name=body.name,
            model_name=body.model,
            endpoint_name=body.endpoint,
            dataset_name=body.dataset,
            config=body.model_dump(mode="json"),
            next_run_at=cron.next_after(now) if cron is not None and body.enabled else None,
            labels_since=now,
            run_count=0,
            created_by=principal.user_id,
            created_at=now,
        )
        s.add(row)
        try:
            s.flush()
        except IntegrityError:
            raise Conflict(f"a pipeline named {body.name!r} exists in this workspace") from None
        audit.record(s, principal, "pipeline.create", "pipeline", body.name, row.config)
        return pipeline_out(s, row)


def update(db: Database, principal: Principal, name: str, body: PipelineUpdate) -> PipelineOut:
    """Change the settings given (the same checks as create). A run in progress reads the
    pipeline's settings as it goes, so while one is active only its triggers may change
    (409 ``run_in_progress`` otherwise); pausing (``enabled: false``) stops the triggers."""
    principal.require("developer")
    given = body.model_dump(mode="json", exclude_unset=True)
    with db.write() as s:
        p = find_pipeline(s, principal.workspace_id, name, lock=True)
        old = PipelineCreate.model_validate(p.config).model_dump(mode="json")
        changed = {k: v for k, v in given.items() if old.get(k) != v}
        if not changed:
            return pipeline_out(s, p)
        try:
            new = PipelineCreate.model_validate({**old, **given})
        except ValidationError as exc:
            details = [
                {"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors()
            ]
            first = details[0]
            where = first["loc"][-1] if len(first["loc"]) > 1 else "body"
            msg = str(first["msg"]).removeprefix("Value error, ")
            raise Unprocessable(f"{where}: {msg}", details=details) from None
        cron = _cron(new.schedule)
        active = _active_run(s, p.id)
        held = sorted(set(changed) - TRIGGER_FIELDS)
        if active is not None and held:
            raise RunInProgress(
                f"run {active.number} of {name!r} is in progress and reads {', '.join(held)}; "
                f"change them once it ends, or cancel it (gureum pipelines cancel {name})",
                details={"run": active.number, "fields": held},
            )
        if {"model", "endpoint", "metric", "higher_is_better"} & changed.keys():
            _check_target(s, principal.workspace_id, new)
        p.model_name, p.endpoint_name, p.dataset_name = new.model, new.endpoint, new.dataset
        p.config = new.model_dump(mode="json")
        if {"schedule", "enabled"} & changed.keys():
            p.next_run_at = cron.next_after(utcnow()) if cron is not None and new.enabled else None
        audit.record(s, principal, "pipeline.update", "pipeline", name, changed)
        return pipeline_out(s, p)


def find_pipeline(s: Session, workspace_id: int, name: str, *, lock: bool = False) -> Pipeline:
    stmt = select(Pipeline).where(Pipeline.workspace_id == workspace_id, Pipeline.name == name)
    row = s.scalar(stmt.with_for_update() if lock else stmt)
    if row is None:
        raise NotFound(f"no pipeline {name!r} in this workspace")
    return row


def _active_run(s: Session, pipeline_id: int) -> PipelineRun | None:
    return s.scalar(
        select(PipelineRun).where(
            PipelineRun.pipeline_id == pipeline_id, PipelineRun.state.in_(ACTIVE)
        )
    )


def pipeline_out(s: Session, p: Pipeline) -> PipelineOut:
    active = _active_run(s, p.id)
    user = s.scalar(select(User.name).where(User.id == p.created_by)) if p.created_by else None
    return PipelineOut(
        name=p.name,
        model=p.model_name,
        endpoint=p.endpoint_name,
        dataset=p.dataset_name,
        config=PipelineCreate.model_validate(p.config),
        next_scheduled_at=p.next_run_at,
        active_run=active.number if active else None,
        last_run=p.run_count or None,
        created_by=user,
        created_at=p.created_at,
    )


def list_pipelines(db: Database, principal: Principal, params: PageParams) -> Page[PipelineOut]:
    stmt = select(Pipeline).where(Pipeline.workspace_id == principal.workspace_id)
    with db.read() as s:
        rows, cursor = paginate(s, stmt, Pipeline.id, params)
        return Page(items=[pipeline_out(s, p) for p in rows], next_cursor=cursor)


def get_pipeline(db: Database, principal: Principal, name: str) -> PipelineOut:
    with db.read() as s:
        return pipeline_out(s, find_pipeline(s, principal.workspace_id, name))


def delete(db: Database, principal: Principal, name: str) -> None:
    principal.require("developer")
    with db.write() as s:
        p = find_pipeline(s, principal.workspace_id, name, lock=True)
        active = _active_run(s, p.id)
        if active is not None:
            raise RunInProgress(
                f"run {active.number} of {name!r} is in progress; cancel it first "
                f"(gureum pipelines cancel {name})"
            )
        s.delete(p)
        audit.record(s, principal, "pipeline.delete", "pipeline", name)


# -- runs -----------------------------------------------------------------------------------------


def add_event(
    s: Session, run: PipelineRun, kind: str, message: str, step: str | None = None
) -> None:
    run.event_seq += 1
    s.add(PipelineEvent(run_id=run.id, seq=run.event_seq, step=step, kind=kind, message=message))


def start(s: Session, p: Pipeline, trigger: str, user_id: int | None) -> PipelineRun:
    """A new run of ``p`` (locked by the caller), all steps pending."""
    active = _active_run(s, p.id)
    if active is not None:
        raise RunInProgress(
            f"run {active.number} of {p.name!r} is in progress ({active.state}); one run at a time",
            details={"run": active.number},
        )
    now = utcnow()
    p.run_count += 1
    p.last_run_at = now
    p.labels_since = now
    run = PipelineRun(
        pipeline_id=p.id,
        number=p.run_count,
        state=RunState.running.value,
        trigger=trigger,
        reason="",
        step=STEPS[0].value,
        data={},
        event_seq=0,
        created_by=user_id,
        created_at=now,
    )
    s.add(run)
    s.flush()
    for i, step in enumerate(STEPS):
        s.add(
            PipelineStep(
                run_id=run.id,
                position=i,
                name=step.value,
                state=StepState.pending.value,
                message="",
                data={},
            )
        )
    add_event(s, run, "state", f"started: {trigger}")
    return run


def start_run(db: Database, principal: Principal, name: str) -> RunOut:
    principal.require("developer")
    with db.write() as s:
        p = find_pipeline(s, principal.workspace_id, name, lock=True)
        run = start(s, p, f"by hand ({principal.user_name})", principal.user_id)
        audit.record(s, principal, "pipeline.run", "pipeline", name, {"run": run.number})
        return run_out(s, p, run)


def find_run(s: Session, p: Pipeline, number: str | int, *, lock: bool = False) -> PipelineRun:
    stmt = select(PipelineRun).where(PipelineRun.pipeline_id == p.id)
    if number == "latest":
        stmt = stmt.order_by(PipelineRun.number.desc()).limit(1)
    else:
        try:
            stmt = stmt.where(PipelineRun.number == int(number))
        except ValueError:
            raise Unprocessable(f"a run is a number or 'latest', not {number!r}") from None
    run = s.scalar(stmt.with_for_update() if lock else stmt)
    if run is None:
        raise NotFound(f"pipeline {p.name!r} has no run {number}")
    return run


def steps_of(s: Session, run: PipelineRun) -> list[PipelineStep]:
    return list(
        s.scalars(
            select(PipelineStep)
            .where(PipelineStep.run_id == run.id)
            .order_by(PipelineStep.position)
        )
    )


def run_out(s: Session, p: Pipeline, run: PipelineRun) -> RunOut:
    data = run.data or {}
    return RunOut(
        pipeline=p.name,
        number=run.number,
        state=RunState(run.state),
        trigger=run.trigger,
        reason=run.reason,
        step=StepName(run.step) if run.step else None,
        steps=[StepOut.model_validate(step) for step in steps_of(s, run)],
        dataset_version=data.get("dataset_version"),
        candidate=data.get("candidate"),
        production=data.get("production"),
        metrics=data.get("metrics") or {},
        created_at=run.created_at,
        finished_at=run.finished_at,
    )


def list_runs(db: Database, principal: Principal, name: str, params: PageParams) -> Page[RunOut]:
    with db.read() as s:
        p = find_pipeline(s, principal.workspace_id, name)
        stmt = select(PipelineRun).where(PipelineRun.pipeline_id == p.id)
        rows, cursor = paginate(s, stmt, PipelineRun.number, params, descending=True)
        return Page(items=[run_out(s, p, r) for r in rows], next_cursor=cursor)


def get_run(db: Database, principal: Principal, name: str, number: str) -> RunOut:
    with db.read() as s:
        p = find_pipeline(s, principal.workspace_id, name)
        return run_out(s, p, find_run(s, p, number))


def list_events(
    db: Database, principal: Principal, name: str, number: str, after: int = 0
) -> list[RunEventOut]:
    with db.read() as s:
        p = find_pipeline(s, principal.workspace_id, name)
        run = find_run(s, p, number)
        rows = s.scalars(
            select(PipelineEvent)
            .where(PipelineEvent.run_id == run.id, PipelineEvent.seq > after)
            .order_by(PipelineEvent.seq)
            .limit(MAX_EVENT_PAGE)
        )
        return [RunEventOut.model_validate(r) for r in rows]


def cancel(db: Database, principal: Principal, name: str, number: str) -> RunOut:
    """Asks the controller to stop the run: a canary it started is rolled back, its jobs are
    cancelled, and production stays as it was."""
    principal.require("developer")
    with db.write() as s:
        p = find_pipeline(s, principal.workspace_id, name)
        run = find_run(s, p, number, lock=True)
        if run.state not in ACTIVE:
            raise Conflict(f"run {run.number} of {name!r} has ended ({run.state})")
        if not (run.request or {}).get("cancel"):
            run.request = {**(run.request or {}), "cancel": principal.user_name}
            add_event(s, run, "request", f"cancel requested by {principal.user_name}")
        audit.record(s, principal, "pipeline.cancel", "pipeline", name, {"run": run.number})
        return run_out(s, p, run)


def approve(db: Database, principal: Principal, name: str, number: str, body: ApprovalIn) -> RunOut:
    principal.require("developer")
    with db.write() as s:
        p = find_pipeline(s, principal.workspace_id, name)
        run = find_run(s, p, number, lock=True)
        if run.state != RunState.awaiting_approval.value:
            raise Conflict(
                f"run {run.number} of {name!r} is not waiting for approval ({run.state})"
            )
        verdict = "approved" if body.approve else "rejected"
        run.request = {
            **(run.request or {}),
            "approval": {"approve": body.approve, "by": principal.user_name, "note": body.note},
        }
        add_event(s, run, "request", f"{verdict} by {principal.user_name}", StepName.approval)
        audit.record(
            s, principal, f"pipeline.{verdict[:-1]}", "pipeline", name, {"run": run.number}
        )
        return run_out(s, p, run)


def acting_principal(s: Session, p: Pipeline) -> Principal:
    """Who a run acts as: the pipeline's creator, with the role they hold now but never more
    than developer (all a run needs), and not as a site admin. A creator who left the
    workspace, or lost the developer role, stops the pipeline from acting."""
    row = s.execute(
        select(User, Workspace, Membership.role)
        .select_from(User)
        .join(Workspace, Workspace.id == p.workspace_id)
        .outerjoin(
            Membership,
            (Membership.user_id == User.id) & (Membership.workspace_id == p.workspace_id),
        )
        .where(User.id == p.created_by)
    ).one_or_none()
    if row is None:
        raise Unprocessable("the pipeline's creator no longer exists; create it again")
    user, ws, role = row
    if role is None and not user.is_site_admin:
        raise Unprocessable(f"{user.name}, who created the pipeline, left the workspace")
    held = role or "owner"  # a site admin who is no member acts as owner anywhere
    return Principal(
        user_id=user.id,
        user_name=user.name,
        workspace_id=ws.id,
        workspace_name=ws.name,
        role=held if role_rank(held) < role_rank("developer") else "developer",
        key_id=f"pipeline:{p.name}",
        is_site_admin=False,
    )
