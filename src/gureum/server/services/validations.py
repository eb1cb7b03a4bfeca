"""Validation before deploy: the reports of a version's load and smoke test.

A deploy opens a ``pending`` report with its sample inputs (given, or picked from the version's
lineage dataset); the endpoint controller hands it to the new replica in ``TrafficConfig``; the
replica tests the version before it takes traffic and posts its report here (internal API).
A failed report of the endpoint's current deploy drops that deploy under the endpoint's row
lock: the old version keeps serving (a new endpoint is ``failed``), and the event and message
list the failed checks. ``gureum models validate`` runs the same as a Ray task.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.compute.spec import BlobFile
from gureum.schemas.validations import ValidationOut, ValidationRequest
from gureum.server.auth import Principal
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import Model, ModelVersion
from gureum.server.db.tables_serving import Endpoint
from gureum.server.db.tables_validation import ModelValidation
from gureum.server.errors import Conflict, NotFound, Unavailable
from gureum.server.services import endpoints as eps
from gureum.server.services import validation_samples
from gureum.server.services.audit import record
from gureum.server.services.jobs import model_files
from gureum.server.services.models import find_model, require_loadable, resolve_version_row
from gureum.serving.spec import ModelRef
from gureum.serving.validation import (
    DEFAULT_SAMPLES,
    Check,
    ValidationLimits,
    ValidationReport,
    ValidationSpec,
)
from gureum.storage.store import ArtifactStore

log = logging.getLogger(__name__)
# Runs a manual validation to its report (a Ray task in the product).
Runner = Callable[[int, ModelRef, ValidationSpec], ValidationReport]


def open_for_deploy(
    s: Session,
    store: ArtifactStore,
    ep: Endpoint,
    version: ModelVersion,
    sample_inputs: list[Any] | None,
    user_id: int | None,
) -> ModelValidation:
    """The pending report of a deploy of ``version`` to ``ep``: the endpoint's newest report,
    which makes it the one its replicas' reports may act on."""
    if sample_inputs is not None:
        inputs = validation_samples.bounded(sample_inputs)
        source = f"{len(inputs)} inputs given with the deploy"
    else:
        inputs, source = validation_samples.pick(
            s, store, ep.workspace_id, version, DEFAULT_SAMPLES
        )
    row = ModelValidation(
        version_id=version.id,
        kind="deploy",
        endpoint_id=ep.id,
        endpoint_name=ep.name,
        state="pending",
        source=source,
        inputs=inputs,
        limits=ValidationLimits().model_dump(),
        checks=[],
        message="",
        created_by=user_id,
        created_at=utcnow(),
    )
    s.add(row)
    s.flush()
    return row


def _newest_deploy(s: Session, endpoint_id: int) -> ModelValidation | None:
    return s.scalar(
        select(ModelValidation)
        .where(ModelValidation.endpoint_id == endpoint_id, ModelValidation.kind == "deploy")
        .order_by(ModelValidation.id.desc())
        .limit(1)
    )


def spec_for(s: Session, ep: Endpoint, version_id: int) -> ValidationSpec | None:
    """What a replica of ``ep`` loading ``version_id`` must check first: the endpoint's current
    deploy's test while it has not passed (None once it has: a config change, a scale-out or
    the promotion after it then does not test again)."""
    row = _newest_deploy(s, ep.id)
    if row is None or row.version_id != version_id or row.state != "pending":
        return None
    return _spec(row)


def _spec(row: ModelValidation) -> ValidationSpec:
    return ValidationSpec(
        id=row.id,
        version_id=row.version_id,
        inputs=row.inputs,
        source=row.source,
        limits=ValidationLimits.model_validate(row.limits),
    )


def _fill(row: ModelValidation, report: ValidationReport) -> None:
    row.state = "passed" if report.passed else "failed"
    row.passed = report.passed
    row.checks = [c.model_dump() for c in report.checks]
    row.load_ms = report.load_ms
    row.latency_p50_ms = report.latency_p50_ms
    row.latency_max_ms = report.latency_max_ms
    row.memory_max_mb = report.memory_max_mb
    row.message = report.summary()[:4000]
    row.finished_at = utcnow()


def record_report(s: Session, ep: Endpoint, report: ValidationReport) -> None:
    """A replica's report (``ep`` is locked by the caller). The first report of a test counts;
    a failed one of the endpoint's current deploy drops that deploy."""
    row = s.scalar(select(ModelValidation).where(ModelValidation.id == report.id).with_for_update())
    if row is None or row.endpoint_id != ep.id or row.version_id != report.version_id:
        raise NotFound(f"no validation {report.id} of a deploy to endpoint {ep.name!r}")
    if row.state != "pending":
        return  # another replica reported first; a test is decided once
    _fill(row, report)
    newest = _newest_deploy(s, ep.id)
    if report.passed or newest is None or newest.id != row.id:
        return
    number = _label(s, row.version_id).rsplit(":", 1)[1]
    why = f"version {number} failed validation before taking traffic: {report.summary()}"
    checks = [c.model_dump() for c in report.failed()]
    if ep.canary_version_id == row.version_id:
        current = _label(s, ep.version_id).rsplit(":", 1)[1]
        what = "deploy" if ep.rollout == "promote" else "canary"
        eps.drop_canary(ep)
        ep.message = f"{what} of {why}; version {current} keeps serving"[:4000]
        eps.add_event(s, ep, "failed", ep.message, validation=row.id, checks=checks)
        eps.changed(ep)
    elif ep.version_id == row.version_id and ep.state == "deploying":
        ep.state = "failed"
        ep.message = why[:4000]
        eps.add_event(s, ep, "failed", ep.message, validation=row.id, checks=checks)


def _label(s: Session, version_id: int) -> str:
    row = s.execute(
        select(Model.name, ModelVersion.version)
        .join(ModelVersion, ModelVersion.model_id == Model.id)
        .where(ModelVersion.id == version_id)
    ).one()
    return f"{row.name}:{row.version}"


def out(s: Session, row: ModelValidation) -> ValidationOut:
    label = _label(s, row.version_id)
    return ValidationOut.model_validate(
        {
            "id": row.id,
            "model": label.rsplit(":", 1)[0],
            "version": int(label.rsplit(":", 1)[1]),
            "kind": row.kind,
            "endpoint": row.endpoint_name,
            "state": row.state,
            "passed": row.passed,
            "source": row.source,
            "samples": len(row.inputs),
            "checks": row.checks,
            "load_ms": row.load_ms,
            "latency_p50_ms": row.latency_p50_ms,
            "latency_max_ms": row.latency_max_ms,
            "memory_max_mb": row.memory_max_mb,
            "limits": row.limits,
            "message": row.message,
            "created_at": row.created_at,
            "finished_at": row.finished_at,
        }
    )


# -- gureum models validate ----------------------------------------------------------------------


def start_manual(
    db: Database,
    store: ArtifactStore,
    principal: Principal,
    name: str,
    ref: str,
    body: ValidationRequest,
    runner: Runner | None,
) -> ValidationOut:
    """Record a ``running`` report and run the test in the background; poll ``latest``."""
    principal.require("developer")
    with db.write() as s:
        model = find_model(s, principal.workspace_id, name)
        version = resolve_version_row(s, model, ref)
        label = f"{name}:{version.version}"
        require_loadable(version.recipe, version.platform_written, label)
        if runner is None:
            raise Unavailable("validation runs on the compute cluster, and this server has none")
        busy = s.scalar(
            select(ModelValidation.id).where(
                ModelValidation.version_id == version.id,
                ModelValidation.kind == "manual",
                ModelValidation.state == "running",
            )
        )
        if busy is not None:
            raise Conflict(f"{label} is being validated already (report {busy}); wait for it")
        if body.sample_inputs is not None:
            inputs = validation_samples.bounded(body.sample_inputs)
            source = f"{len(inputs)} inputs given"
        else:
            inputs, source = validation_samples.pick(
                s, store, principal.workspace_id, version, body.count
            )
        row = ModelValidation(
            version_id=version.id,
            kind="manual",
            state="running",
            source=source,
            inputs=inputs,
            limits=body.limits.model_dump(),
            checks=[],
            message="",
            created_by=principal.user_id,
            created_at=utcnow(),
        )
        s.add(row)
        s.flush()
        model_ref = ModelRef(
            version_id=version.id,
            label=label,
            recipe=version.recipe,
            files=[BlobFile(**f) for f in model_files(s, version.id)],
        )
        spec = _spec(row)
        record(s, principal, "model.validate", "model", label, {"validation": row.id})
        result = out(s, row)
    workspace_id = principal.workspace_id
    threading.Thread(
        target=_run_manual,
        args=(db, runner, workspace_id, model_ref, spec),
        name=f"validate-{spec.id}",
        daemon=True,
    ).start()
    return result


def _run_manual(
    db: Database, runner: Runner, workspace_id: int, model: ModelRef, spec: ValidationSpec
) -> None:
    try:
        report = runner(workspace_id, model, spec)
    except Exception as e:  # the runner's own failure (the cluster went away): still recorded
        log.exception("validation %s could not run", spec.id)
        check = Check(name="load", passed=False, detail=f"could not run: {type(e).__name__}")
        report = ValidationReport(
            id=spec.id, version_id=spec.version_id, passed=False, checks=[check]
        )
    with db.write() as s:
        row = s.get(ModelValidation, spec.id)
        if row is not None and row.state == "running":
            _fill(row, report)


def latest(db: Database, principal: Principal, name: str, ref: str) -> ValidationOut:
    """The version's newest report, of a deploy or of ``gureum models validate``."""
    with db.read() as s:
        model = find_model(s, principal.workspace_id, name)
        version = resolve_version_row(s, model, ref)
        row = s.scalar(
            select(ModelValidation)
            .where(ModelValidation.version_id == version.id)
            .order_by(ModelValidation.id.desc())
            .limit(1)
        )
        if row is None:
            raise NotFound(
                f"{name}:{version.version} has no validation report yet; run "
                f"`gureum models validate {name}:{version.version}` or deploy it"
            )
        return out(s, row)
