"""Turning what a running attempt reports into rows: log chunks, metrics, progress, events,
and at the end its outputs and the model version it trained (with lineage)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.compute.spec import Item
from gureum.recipes.predictor import NAME as PREDICTOR
from gureum.schemas.datasets import FileEntry
from gureum.schemas.jobs import SCRIPT_RECIPE
from gureum.schemas.models import VersionCreate
from gureum.server.auth import SYSTEM_USER_ID, Principal
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import (
    Job,
    JobLog,
    JobMetric,
    JobOutput,
    Model,
    ModelVersion,
    User,
    Workspace,
)
from gureum.server.services import models as model_svc
from gureum.server.services.jobs import add_event
from gureum.storage.store import ArtifactStore

TRUNCATED = "\n[gureum: log truncated here; the job printed more than {limit} MiB]\n"
LOSS_KEYS = ("loss", "train_loss")


def apply(s: Session, job: Job, items: list[Item], max_log_bytes: int) -> None:
    texts: list[str] = []
    for item in items:
        kind = item["type"]
        if kind == "log":
            texts.append(str(item.get("text", "")))
        elif kind == "metrics":
            _metrics(s, job, item)
        elif kind == "progress":
            _progress(job, item)
        elif kind == "event":
            add_event(
                s,
                job,
                str(item.get("kind", "info")),
                str(item.get("message", "")),
                **dict(item.get("data") or {}),
            )
        elif kind == "output":  # a sample grid published while training (compute/samples.py)
            _output(s, job, item)
        elif kind == "started" and job.state == "starting":
            job.state, job.wait_reason = "running", None
            if job.started_at is None:
                job.started_at = utcnow()
            node = str(item.get("node_id", ""))[:12]
            add_event(
                s,
                job,
                "state",
                f"running (attempt {job.attempt}, node {node})",
                attempt=job.attempt,
                node_id=item.get("node_id"),
                pid=item.get("pid"),
            )
    if texts:
        _append_log(s, job, "".join(texts), max_log_bytes)


def _output(s: Session, job: Job, f: Item) -> None:
    """Record (or update, when the file was written again) one output of the running job."""
    path, sha256, size = str(f["path"]), str(f["sha256"]), int(f["size"])
    row = s.scalar(select(JobOutput).where(JobOutput.job_id == job.id, JobOutput.path == path))
    if row is None:
        s.add(JobOutput(job_id=job.id, path=path, sha256=sha256, size=size))
    else:
        row.sha256, row.size = sha256, size


def _append_log(s: Session, job: Job, text: str, limit: int) -> None:
    if job.log_bytes >= limit:
        return
    data = text.encode()
    room = limit - job.log_bytes
    if len(data) > room:
        # Cut on a character boundary, so offsets count exactly the bytes stored.
        kept = data[:room].decode(errors="ignore").encode()
        data = kept + TRUNCATED.format(limit=limit >> 20).encode()
    s.add(JobLog(job_id=job.id, offset=job.log_bytes, text=data.decode()))
    job.log_bytes += len(data)


def _metrics(s: Session, job: Job, item: Item) -> None:
    values = {k: float(v) for k, v in dict(item.get("values") or {}).items()}
    job.metric_seq += 1
    s.add(
        JobMetric(
            job_id=job.id,
            seq=job.metric_seq,
            step=int(item.get("step") or 0),
            epoch=item.get("epoch"),
            values=values,
        )
    )
    loss = next((values[k] for k in LOSS_KEYS if k in values), None)
    if loss is not None:
        job.progress = {**(job.progress or {}), "loss": loss}


def _progress(job: Job, item: Item) -> None:
    p = dict(job.progress or {})
    step, total = int(item.get("step") or 0), item.get("total_steps")
    now = time.time()
    if "t0" not in p:  # the first report of this attempt: the rate is measured from here
        p["t0"], p["s0"] = now, step
    done = step - int(p["s0"])
    eta = None
    if total and done > 0:
        eta = (now - float(p["t0"])) / done * max(0, int(total) - step)
    p.update(epoch=item.get("epoch"), step=step, total_steps=total, eta_s=eta)
    job.progress = p


def _principal(s: Session, job: Job) -> Principal:
    """Who registers a job's model: the job's submitter, as a developer of its workspace; the
    system (``SYSTEM_USER_ID``, stored as no user) when that user was deleted meanwhile."""
    ws = s.get(Workspace, job.workspace_id)
    user = s.get(User, job.created_by) if job.created_by else None
    return Principal(
        user_id=user.id if user else SYSTEM_USER_ID,
        user_name=user.name if user else "gureum",
        workspace_id=job.workspace_id,
        workspace_name=ws.name if ws else "",
        role="developer",
        key_id=f"job:{job.id}",
    )


def register_outputs(
    db: Database, store: ArtifactStore, job_id: str, attempt: int, result: dict[str, Any]
) -> None:
    """Register a train job's model version (once, even if the ending is delivered twice)."""
    with db.read() as s:
        job = s.get(Job, job_id)
        if job is None or job.attempt != attempt or job.kind != "train":
            return
        if not result.get("register") or not result.get("model_files"):
            return
        # Only a version the server registered for this job counts: a caller may name any
        # job_id at import, and that must neither block the real one nor be taken for it.
        mine = select(ModelVersion.id).where(
            ModelVersion.job_id == job_id, ModelVersion.registered_by_job.is_(True)
        )
        if s.scalar(mine) is not None:
            return
        principal = _principal(s, job)
        base = (job.params or {}).get("base_model") if job.recipe != SCRIPT_RECIPE else None
        # A script whose code folder holds a predictor: its worker exported the predictor
        # (in the sandbox) and added its code; the version is served as a "predictor".
        served_by = PREDICTOR if job.recipe == SCRIPT_RECIPE and result.get("predictor") else None
        body = VersionCreate(
            files=[FileEntry.model_validate(f) for f in result["model_files"]],
            format="gureum",
            recipe=served_by or job.recipe,
            params=result.get("params") or job.params,
            metrics=result.get("metrics") or {},
            dataset=job.dataset_label,
            job_id=job.id,
            code_hash=job.code_hash,
            message=f"trained by job {job.id}" + (f" from base model {base}" if base else ""),
        )
        name = str(job.model_label)
        # Files and metrics of a built-in recipe are the platform's own; a script's are not.
        built_in = job.recipe != SCRIPT_RECIPE and job.code is None
    model_svc.register_version(
        db, store, principal, name, body, job=job_id, platform_job=job_id if built_in else None
    )


def apply_success(s: Session, job: Job, result: dict[str, Any]) -> None:
    job.metrics = dict(result.get("metrics") or {})
    job.details = dict(result.get("details") or {})
    known = {o.path: o for o in s.scalars(select(JobOutput).where(JobOutput.job_id == job.id))}
    for f in result.get("outputs") or []:
        existing = known.get(f["path"])
        if existing is None:
            s.add(JobOutput(job_id=job.id, path=f["path"], sha256=f["sha256"], size=f["size"]))
        else:  # a grid published while training: its last bytes
            existing.sha256, existing.size = f["sha256"], f["size"]
    row = s.execute(
        select(Model.name, ModelVersion.version)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(ModelVersion.job_id == job.id, ModelVersion.registered_by_job.is_(True))
    ).first()
    if row is not None:
        job.output_version = f"{row.name}:{row.version}"
        add_event(s, job, "info", f"registered model version {job.output_version}")
    resumed = result.get("resumed_from_epoch")
    if resumed is not None:
        job.details = {**job.details, "resumed_from_epoch": resumed}
