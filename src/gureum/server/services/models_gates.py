"""Promotion of model versions between stages, and the gates in front of production.

A version reaches production only if it passes every metric gate of its model and, when the
model asks for it, beats the current production version on the gate's metric. Otherwise the
promotion is refused (409 ``gate_failed``) with each failed check, actual against required.
An admin may force it; the forced promotion and the checks it skipped are audited. The
previous production version moves to archived in the same transaction, under a lock on the
model row, so a model never has two production versions.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from gureum.schemas.models import GateCheck, PromoteOut, PromoteRequest
from gureum.server.auth import Principal
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import Model, ModelVersion
from gureum.server.errors import Conflict
from gureum.server.services import audit
from gureum.server.services.models import (
    MEASURED,
    PRODUCTION,
    find_model,
    resolve_version_row,
    stamp,
    version_out,
)

ARCHIVED = "archived"
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


class GateFailed(Conflict):
    code = "gate_failed"


def _number(value: Any) -> float | None:
    """A metric as a finite float, or None (absent, not a number, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def metric_gates(model: Model, version: ModelVersion) -> list[GateCheck]:
    """Each gate against the version's metrics; a ``measured`` gate also wants them measured
    by the platform, so a number typed in at registration cannot pass it."""
    checks: list[GateCheck] = []
    measured = version.metrics_source == MEASURED
    for gate in model.gates:
        metric, op, threshold = gate["metric"], gate["op"], float(gate["threshold"])
        needs_measured = bool(gate.get("measured", False))
        actual = _number(version.metrics.get(metric))
        passed = actual is not None and _OPS[op](actual, threshold)
        if actual is None:
            reason = f"{metric} is not among the version's metrics (needs {op} {threshold:g})"
        elif needs_measured and not measured:
            passed = False
            reason = (
                f"{metric} = {actual:g} was reported (at import, or by a script), not "
                f"measured by the platform; this gate needs a measured {metric} {op} "
                f"{threshold:g} "
                "(a built-in recipe's train job measures it on the held-out split)"
            )
        else:
            verdict = "meets" if passed else "fails"
            reason = f"{metric} = {actual:g} {verdict} {op} {threshold:g}"
        checks.append(
            GateCheck(
                check="gate",
                metric=metric,
                op=op,
                required=threshold,
                actual=actual,
                passed=passed,
                reason=reason,
                measured=needs_measured,
            )
        )
    return checks


def beat_production(
    model: Model, candidate: ModelVersion, production: ModelVersion | None
) -> list[GateCheck]:
    """The must-beat check, or nothing when the model does not ask for it or has no production."""
    rule = model.must_beat_production
    if not rule or production is None or production.id == candidate.id:
        return []
    metric, higher = rule["metric"], bool(rule.get("higher_is_better", True))
    needs_measured = bool(rule.get("measured", False))
    op = ">" if higher else "<"
    actual = _number(candidate.metrics.get(metric))
    required = _number(production.metrics.get(metric))
    if needs_measured and candidate.metrics_source != MEASURED:
        return [
            GateCheck(
                check="must_beat_production",
                metric=metric,
                op=op,
                required=required,
                actual=actual,
                passed=False,
                reason=f"{metric} of v{candidate.version} was {candidate.metrics_source}, not "
                "measured by the platform; beating production needs a measured one",
                measured=True,
            )
        ]
    if required is None:
        # Nothing recorded to compare with: the production version can't be beaten or lost to.
        return [
            GateCheck(
                check="must_beat_production",
                metric=metric,
                op=op,
                required=None,
                actual=actual,
                passed=True,
                reason=f"production v{production.version} has no {metric}",
            )
        ]
    passed = actual is not None and _OPS[op](actual, required)
    shown = "missing" if actual is None else f"{actual:g}"
    reason = (
        f"{metric} = {shown} must be {'above' if higher else 'below'} "
        f"production v{production.version}'s {required:g}"
    )
    return [
        GateCheck(
            check="must_beat_production",
            metric=metric,
            op=op,
            required=required,
            actual=actual,
            passed=passed,
            reason=reason,
        )
    ]


def promote(
    db: Database, principal: Principal, name: str, ref: str, body: PromoteRequest
) -> PromoteOut:
    principal.require("developer")
    if body.force:
        principal.require("admin")
    with db.write() as s:
        model = find_model(s, principal.workspace_id, name, lock=True)
        v = resolve_version_row(s, model, ref)
        previous = v.stage
        checks: list[GateCheck] = []
        archived: list[int] = []
        if body.stage == PRODUCTION and previous != PRODUCTION:
            current = list(
                s.scalars(
                    select(ModelVersion)
                    .where(ModelVersion.model_id == model.id, ModelVersion.stage == PRODUCTION)
                    .order_by(ModelVersion.version.desc())
                )
            )
            checks = metric_gates(model, v) + beat_production(
                model, v, current[0] if current else None
            )
            failed = [c for c in checks if not c.passed]
            if failed and not body.force:
                raise GateFailed(
                    f"{name}:{v.version} did not pass {len(failed)} of {len(checks)} "
                    f"check(s) for production: {failed[0].reason}",
                    details={"failed": [c.model_dump() for c in failed]},
                )
            now = utcnow()
            for old in current:
                stamp(old, ARCHIVED, now)
                archived.append(old.version)
        if previous != body.stage:
            stamp(v, body.stage, utcnow())
            s.flush()
            audit.record(
                s,
                principal,
                "model.version.promote",
                "model_version",
                f"{name}:{v.version}",
                {
                    "from": previous,
                    "to": body.stage,
                    "archived": archived,
                    "forced": body.force,
                    "failed_checks": [c.reason for c in checks if not c.passed],
                },
            )
        out = version_out(s, v, name)
    return PromoteOut(
        version=out, previous_stage=previous, archived=archived, checks=checks, forced=body.force
    )
