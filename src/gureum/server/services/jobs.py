"""Jobs: submission (everything that can be refused is refused here, before queueing), reads,
and cancellation. Running them is the controller's business (``server.controllers.jobs``).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

import gureum.recipes
from gureum.compute.resources import NodeInfo, unplaceable
from gureum.recipes import registry
from gureum.recipes.base import RecipeError
from gureum.recipes.dataset import LocalDataset
from gureum.recipes.spec import RecipeSpec
from gureum.schemas.common import NAME_PATTERN, Page
from gureum.schemas.consumers import Prices
from gureum.schemas.jobs import (
    BUDGET_PAUSE,
    SCRIPT_RECIPE,
    TERMINAL_STATES,
    JobCreate,
    JobEventOut,
    JobMetricOut,
    JobOut,
    JobOutputOut,
    JobProgress,
    Resources,
)
from gureum.server.auth import Principal, at_least
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import (
    DatasetFile,
    DatasetVersion,
    Job,
    JobEvent,
    JobLog,
    JobMetric,
    JobOutput,
    ModelFile,
    ModelVersion,
    User,
    Workspace,
)
from gureum.server.errors import ApiError, Forbidden, NotFound, Unprocessable
from gureum.server.pagination import PageParams, paginate
from gureum.server.services import audit, base_models, budget_ledger, site_settings
from gureum.server.services.blobs import MissingBlobs
from gureum.server.services.datasets import add_reference, remove_reference, resolve_version
from gureum.server.services.models import find_model, require_loadable, resolve_version_row
from gureum.storage.store import ArtifactStore

REFERRER = "job"
LOG_PAGE_BYTES = 1 << 20
NodesFn = Callable[[], list[NodeInfo] | None]


class Unschedulable(ApiError):
    status, code = 422, "unschedulable"


def new_job_id() -> str:
    """Time-ordered (sorting by id sorts by submission) and unguessable enough to share."""
    return f"j{int(time.time() * 1000):011x}{secrets.token_hex(3)}"


@lru_cache(maxsize=1)
def builtin_code_hash() -> str:
    """Lineage for built-in recipes: a digest of the recipe package's source."""
    digest = hashlib.sha256()
    root = Path(gureum.recipes.__file__).parent
    for path in sorted(root.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return "sha256:" + digest.hexdigest()


def code_hash(files: list[tuple[str, str]]) -> str:
    body = json.dumps(sorted(files), separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _split_ref(ref: str, what: str) -> tuple[str, str]:
    name, sep, version = ref.partition(":")
    if not name or (sep and not version):
        raise Unprocessable(f"{what} must be NAME or NAME:VERSION, not {ref!r}")
    return name, version or "latest"


def dataset_manifest(s: Session, dv: DatasetVersion, name: str) -> dict[str, Any]:
    """A version as a recipe sees it, with each file's blob (what the job fetches)."""
    rows = s.execute(
        select(DatasetFile.path, DatasetFile.sha256, DatasetFile.size, DatasetFile.kind)
        .add_columns(DatasetFile.label, DatasetFile.split)
        .where(DatasetFile.version_id == dv.id)
        .order_by(DatasetFile.path)
    ).all()
    return {
        "name": name,
        "kind": dv.kind,
        "schema": dv.schema_,
        "split": dv.split,
        "files": [r._asdict() for r in rows],
    }


def model_files(s: Session, version_id: int) -> list[dict[str, Any]]:
    rows = s.execute(
        select(ModelFile.path, ModelFile.sha256, ModelFile.size).where(
            ModelFile.version_id == version_id
        )
    ).all()
    return [r._asdict() for r in rows]


def _recipe(name: str) -> RecipeSpec:
    """The recipe's spec: what the server checks a job against, without its implementation."""
    try:
        return registry.spec(name)
    except RecipeError as exc:
        raise Unprocessable(str(exc)) from None


def _check(recipe: RecipeSpec, raw: dict[str, Any], manifest: dict[str, Any] | None) -> Any:
    """Validated parameters; the dataset checked against them from its manifest alone."""
    try:
        params = registry.check_params(recipe.name, raw)
        # The job stores these with defaults filled in, and the worker validates that form:
        # refuse here what it would refuse there.
        registry.check_params(recipe.name, params.model_dump())
        if manifest is not None:
            _check_dataset(recipe, manifest, params)
    except RecipeError as exc:
        raise Unprocessable(str(exc)) from None
    return params


def _check_dataset(recipe: RecipeSpec, manifest: dict[str, Any], params: Any = None) -> None:
    if recipe.check_dataset is not None:
        recipe.check_dataset(LocalDataset.from_manifest(Path("."), manifest), params)


def submit(
    db: Database,
    store: ArtifactStore,
    principal: Principal,
    body: JobCreate,
    nodes: NodesFn,
    *,
    prices: Prices,
    job_id: str | None = None,
) -> JobOut:
    """``job_id``: an id the caller chose and recorded first (a pipeline step), so that after a
    crash it can tell whether the job was submitted. ``prices``: what the job's maximum cost is
    reserved at against its workspace's budget."""
    principal.require("developer")
    if not body.preemptible and not (at_least(principal.role, "admin") or principal.is_site_admin):
        raise Forbidden(
            "only a workspace admin (or a site admin) may submit a job endpoints cannot "
            f"preempt (preemptible: false); your key has {principal.role}"
        )
    ws = principal.workspace_id
    with db.read() as s:
        dv, dataset_label, manifest = None, None, None
        if body.dataset:
            name, ref = _split_ref(body.dataset, "dataset")
            dv = resolve_version(s, ws, name, ref)
            dataset_label = f"{name}:{dv.version}"
            manifest = dataset_manifest(s, dv, name)
        mv: ModelVersion | None = None
        if body.kind == "train":
            model_label = body.model or (
                f"{dataset_label.split(':')[0]}-{body.recipe}"
                if dataset_label
                else f"{body.recipe}-model"
            )
            _valid_model_name(model_label)
            recipe_name = str(body.recipe)
        else:
            name, ref = _split_ref(str(body.model), "model")
            mv = resolve_version_row(s, find_model(s, ws, name), ref)
            model_label = f"{name}:{mv.version}"
            recipe_name = body.recipe or mv.recipe or ""
            if not recipe_name:
                raise Unprocessable(f"model {model_label} has no recipe; say which (recipe: ...)")
            if mv.recipe and recipe_name != mv.recipe:
                raise Unprocessable(
                    f"model {model_label} is a {mv.recipe!r} model, not {recipe_name!r}"
                )
            require_loadable(recipe_name, mv.platform_written, f"model {model_label}")
            base_models.check_loadable(s, store, mv, recipe_name, f"model {model_label}")
            if body.dataset is None and body.kind == "evaluate":
                raise Unprocessable("an evaluate job needs a dataset (dataset: NAME[:V])")
    recipe = _recipe(recipe_name)
    raw = dict(body.params)
    if body.code is not None:
        raw.update(entrypoint=body.code.entrypoint, args=body.code.args)
    if body.kind == "train":
        if not recipe.trainable or recipe.params is None:
            raise Unprocessable(f"recipe {recipe_name} only serves models; it does not train")
        if manifest is None and not recipe.needs_code:
            raise Unprocessable(f"recipe {recipe_name} trains on a dataset (dataset: NAME[:V])")
        params = _check(recipe, raw, manifest).model_dump()
        with db.read() as s:  # a base model: a version of this workspace's registry, pinned
            base = base_models.resolve(s, ws, recipe_name, params)
        if base is not None and recipe.base_model is not None:
            params[recipe.base_model.param] = base
    else:
        params = raw  # the model's own parameters stand; these are prediction options
        if body.kind == "evaluate" and manifest is not None:
            try:  # a serving-only recipe's check sees the job's params (a truth column)
                _check_dataset(recipe, manifest, None if recipe.trainable else raw)
            except RecipeError as exc:
                raise Unprocessable(str(exc)) from None
    why = unplaceable(body.resources, body.workers, nodes() or []) or _over_quota(db, ws, body)
    if why is not None:
        raise Unschedulable(f"refused: {why}", details={"resources": body.resources.model_dump()})
    if recipe_name == SCRIPT_RECIPE and body.kind == "train":  # user code: sandbox or leave
        site_settings.check_script_job(db, body, nodes() or [])
    hash_ = builtin_code_hash()
    code = None
    if body.code is not None:
        missing = store.missing(ws, [f.sha256 for f in body.code.files])
        if missing:
            raise MissingBlobs(
                f"{len(missing)} code file blob(s) are not uploaded", details={"missing": missing}
            )
        code = body.code.model_dump()
        hash_ = code_hash([(f.path, f.sha256) for f in body.code.files])
    job_id = job_id or new_job_id()
    with db.write() as s:
        job = Job(
            id=job_id,
            workspace_id=ws,
            kind=body.kind,
            state="queued",
            recipe=recipe_name,
            dataset_version_id=dv.id if dv else None,
            dataset_label=dataset_label,
            model_label=model_label,
            model_version_id=mv.id if mv else None,
            params=params,
            code=code,
            code_hash=hash_,
            resources=body.resources.model_dump(),
            workers=body.workers,
            priority=body.priority,
            preemptible=body.preemptible,
            max_retries=body.max_retries,
            timeout_s=body.timeout_s,
            created_by=principal.user_id,
            progress={},
            metrics={},
            details={},
        )
        s.add(job)
        s.flush()
        add_event(s, job, "state", "queued")
        budget_ledger.admit(s, job, prices)  # 409 budget_exceeded, or its time limit set
        if dv is not None:
            add_reference(s, dv.id, REFERRER, job_id)
        audit.record(
            s, principal, "job.submit", "job", job_id, {"kind": body.kind, "recipe": recipe_name}
        )
        return job_out(s, job)


def _over_quota(db: Database, workspace_id: int, body: JobCreate) -> str | None:
    """A job bigger than its workspace's ceiling would wait forever: say so now."""
    with db.read() as s:
        ws = s.get(Workspace, workspace_id)
    if ws is None:
        return None
    cpus, gpus = body.resources.cpus * body.workers, body.resources.gpus * body.workers
    if ws.max_cpus is not None and cpus > ws.max_cpus:
        return f"the job needs {cpus:g} CPUs; the workspace quota allows {ws.max_cpus:g}"
    if ws.max_gpus is not None and gpus > ws.max_gpus:
        return f"the job needs {gpus:g} GPUs; the workspace quota allows {ws.max_gpus:g}"
    if ws.max_concurrent_jobs == 0:
        return "the workspace quota allows no jobs (max_concurrent_jobs is 0)"
    return None


def _valid_model_name(name: str) -> None:
    if not re.match(NAME_PATTERN, name):
        raise Unprocessable(f"model name {name!r} must match {NAME_PATTERN}")


def add_event(s: Session, job: Job, kind: str, message: str, **data: Any) -> None:
    job.event_seq += 1
    s.add(JobEvent(job_id=job.id, seq=job.event_seq, kind=kind, message=message, data=data))


def job_out(s: Session, job: Job) -> JobOut:
    user = s.scalar(select(User.name).where(User.id == job.created_by)) if job.created_by else None
    return JobOut(
        id=job.id,
        kind=job.kind,
        state=job.state,
        recipe=job.recipe,
        dataset=job.dataset_label,
        model=job.model_label,
        model_version=job.output_version,
        params=job.params,
        resources=Resources.model_validate(job.resources),
        workers=job.workers,
        priority=job.priority,
        max_retries=job.max_retries,
        timeout_s=job.timeout_s,
        preemptible=job.preemptible,
        attempt=job.attempt,
        wait_reason=job.wait_reason,
        progress=JobProgress.model_validate(job.progress or {}),
        metrics=job.metrics,
        error=job.error,
        code_hash=job.code_hash,
        created_by=user,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def find_job(s: Session, workspace_id: int, job_id: str, *, lock: bool = False) -> Job:
    stmt = select(Job).where(Job.id == job_id, Job.workspace_id == workspace_id)
    job = s.scalar(stmt.with_for_update() if lock else stmt)
    if job is None:
        raise NotFound(f"no job {job_id!r} in this workspace")
    return job


def list_jobs(
    db: Database,
    principal: Principal,
    params: PageParams,
    state: str | None = None,
    kind: str | None = None,
) -> Page[JobOut]:
    stmt = select(Job).where(Job.workspace_id == principal.workspace_id)
    if state:
        stmt = stmt.where(Job.state == state)
    if kind:
        stmt = stmt.where(Job.kind == kind)
    with db.read() as s:
        rows, cursor = paginate(s, stmt, Job.id, params, descending=True)
        return Page(items=[job_out(s, j) for j in rows], next_cursor=cursor)


def get_job(db: Database, principal: Principal, job_id: str) -> JobOut:
    with db.read() as s:
        return job_out(s, find_job(s, principal.workspace_id, job_id))


def cancel(db: Database, principal: Principal, job_id: str) -> JobOut:
    """A queued job is cancelled at once; a started one is stopped by the controller."""
    principal.require("developer")
    with db.write() as s:
        job = find_job(s, principal.workspace_id, job_id, lock=True)
        if job.state in TERMINAL_STATES or job.stop_state not in (None, BUDGET_PAUSE):
            return job_out(s, job)  # a budget's pause is overruled: cancelled, not queued again
        reason = f"cancelled by {principal.user_name}"
        if job.state == "queued":
            settle(s, job, "cancelled", reason)
        else:
            job.stop_state, job.stop_reason = "cancelled", reason
            add_event(s, job, "info", f"cancel requested by {principal.user_name}")
        audit.record(s, principal, "job.cancel", "job", job_id)
        return job_out(s, job)


def settle(
    s: Session, job: Job, state: Literal["succeeded", "failed", "cancelled"], error: str | None
) -> None:
    """Move a job to a final state; its dataset version is no longer held."""
    job.state = state
    job.error = error
    job.wait_reason = None
    job.finished_at = utcnow()
    message = state if not error else f"{state}: {error.splitlines()[0][:500]}"
    add_event(s, job, "state", message)
    if job.dataset_version_id is not None:
        remove_reference(s, job.dataset_version_id, REFERRER, job.id)


def list_events(
    db: Database, principal: Principal, job_id: str, params: PageParams
) -> Page[JobEventOut]:
    with db.read() as s:
        find_job(s, principal.workspace_id, job_id)
        stmt = select(JobEvent).where(JobEvent.job_id == job_id)
        rows, cursor = paginate(s, stmt, JobEvent.seq, params)
    return Page(items=[JobEventOut.model_validate(r) for r in rows], next_cursor=cursor)


def list_metrics(
    db: Database, principal: Principal, job_id: str, params: PageParams
) -> Page[JobMetricOut]:
    with db.read() as s:
        find_job(s, principal.workspace_id, job_id)
        stmt = select(JobMetric).where(JobMetric.job_id == job_id)
        rows, cursor = paginate(s, stmt, JobMetric.seq, params)
    return Page(items=[JobMetricOut.model_validate(r) for r in rows], next_cursor=cursor)


def read_logs(
    db: Database, principal: Principal, job_id: str, offset: int, limit: int = LOG_PAGE_BYTES
) -> tuple[str, int, str]:
    """Log text from byte ``offset`` (at most about ``limit`` bytes), the next offset, state."""
    with db.read() as s:
        job = find_job(s, principal.workspace_id, job_id)
        first = s.scalar(
            select(JobLog.offset)
            .where(JobLog.job_id == job_id, JobLog.offset <= offset)
            .order_by(JobLog.offset.desc())
            .limit(1)
        )
        stmt = (
            select(JobLog.offset, JobLog.text)
            .where(JobLog.job_id == job_id, JobLog.offset >= (first if first is not None else 0))
            .order_by(JobLog.offset)
        )
        parts: list[bytes] = []
        size = 0
        for row in s.execute(stmt):
            data = row.text.encode()
            if row.offset < offset:
                data = data[offset - row.offset :]
            parts.append(data)
            size += len(data)
            if size >= limit:
                break
        state = job.state
    # Chunks are contiguous, so what was read ends at offset + size.
    return b"".join(parts).decode(errors="replace"), offset + size, state


def list_outputs(
    db: Database, principal: Principal, job_id: str, params: PageParams
) -> Page[JobOutputOut]:
    with db.read() as s:
        find_job(s, principal.workspace_id, job_id)
        stmt = select(JobOutput).where(JobOutput.job_id == job_id)
        rows, cursor = paginate(s, stmt, JobOutput.path, params)
    return Page(items=[JobOutputOut.model_validate(r) for r in rows], next_cursor=cursor)


def find_output(db: Database, principal: Principal, job_id: str, path: str) -> JobOutputOut:
    with db.read() as s:
        find_job(s, principal.workspace_id, job_id)
        row = s.scalar(select(JobOutput).where(JobOutput.job_id == job_id, JobOutput.path == path))
        if row is None:
            raise NotFound(f"job {job_id} has no output {path!r}")
        return JobOutputOut.model_validate(row)


def set_wait_reason(db: Database, job_id: str, reason: str) -> JobOut:
    with db.write() as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        if job.state == "queued" and job.wait_reason != reason:
            job.wait_reason = reason
            add_event(s, job, "wait", reason)
        return job_out(s, job)
