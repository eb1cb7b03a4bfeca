"""The last step of a retrain run: judge the canary against production over its window, then
promote it (the registry's production stage and all of the endpoint's traffic) or roll it back.

The decision is recorded before it is carried out, and carrying it out is idempotent (a stage
already set, a canary already gone are left as they are), so a restart in between finishes the
same decision.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from gureum.schemas.endpoints import EndpointConfig
from gureum.schemas.models import PromoteRequest
from gureum.schemas.pipelines import RunState
from gureum.server.db.tables import ModelVersion
from gureum.server.db.tables_capture import CapturedRequest, Feedback
from gureum.server.db.tables_serving import Endpoint
from gureum.server.services import endpoints, models_gates
from gureum.server.services.endpoint_stats import percentile, role_stats, verdict
from gureum.server.services.models import PRODUCTION
from gureum.server.services.pipeline_steps import Ctx, Env, Outcome, endpoint_of, stop, wait, when


def _ratings(env: Env, ep: Endpoint, since: datetime) -> dict[int, tuple[int, float]]:
    """version id -> (ratings, mean) of answers captured since ``since``."""
    with env.db.read() as s:
        rows = s.execute(
            select(
                CapturedRequest.model_version_id,
                func.count(Feedback.id),
                func.avg(Feedback.rating),
            )
            .join(CapturedRequest, CapturedRequest.request_id == Feedback.request_id)
            .where(Feedback.endpoint_id == ep.id, Feedback.rating.is_not(None))
            .where(CapturedRequest.time >= since)
            .group_by(CapturedRequest.model_version_id)
        ).all()
    return {int(v): (int(n), float(mean or 0.0)) for v, n, mean in rows}


def judge(env: Env, ctx: Ctx, ep: Endpoint) -> dict[str, Any]:
    """The canary against the primary over the window: promote, and why (or why not)."""
    since = when(ctx.run["canary_window"][0])
    with env.db.read() as s:
        by_role = role_stats(s, ep, since)
    canary, primary = by_role.get("canary", ([], 0)), by_role.get("primary", ([], 0))
    ratings = _ratings(env, ep, since)
    c_rated = ratings.get(int(ctx.run["candidate_id"]), (0, 0.0))
    p_rated = ratings.get(int(ctx.run["production_id"]), (0, 0.0))
    numbers = {
        "canary": _summary(canary, c_rated),
        "primary": _summary(primary, p_rated),
    }
    need_requests = int(ctx.config.get("min_requests", 20))
    need_ratings = int(ctx.config.get("min_feedback", 0))
    if len(canary[0]) < need_requests:
        why = (
            f"too little canary traffic to judge: {len(canary[0])} requests in the window "
            f"(needs {need_requests}); no promotion"
        )
        return {"promote": False, "reason": why, "numbers": numbers}
    if c_rated[0] < need_ratings:
        why = (
            f"too few ratings of canary answers to judge: {c_rated[0]} (needs {need_ratings}); "
            "no promotion"
        )
        return {"promote": False, "reason": why, "numbers": numbers}
    limits = EndpointConfig.model_validate(ep.config).canary_limits.model_copy(
        update={"min_requests": need_requests}
    )
    worse = verdict(canary, primary, limits)
    if worse is not None:
        return {"promote": False, "reason": f"the canary is worse: {worse}", "numbers": numbers}
    drop = float(ctx.config.get("max_rating_drop", 0.0))
    if need_ratings and p_rated[0] and c_rated[1] < p_rated[1] - drop:
        why = (
            f"the canary is rated worse: {c_rated[1]:.2f} over {c_rated[0]} ratings vs "
            f"{p_rated[1]:.2f} over {p_rated[0]} for production"
        )
        return {"promote": False, "reason": why, "numbers": numbers}
    c_rate = canary[1] / len(canary[0])
    p_rate = primary[1] / len(primary[0]) if primary[0] else 0.0
    why = (
        f"the canary is no worse over {len(canary[0])} requests: error rate {c_rate:.1%} vs "
        f"{p_rate:.1%}"
    )
    c95, p95 = numbers["canary"]["p95_ms"], numbers["primary"]["p95_ms"]
    if c95 is not None and p95 is not None:
        why += f", p95 {c95:.0f} ms vs {p95:.0f} ms"
    if c_rated[0]:
        why += f", rating {c_rated[1]:.2f} vs {p_rated[1]:.2f}"
    return {"promote": True, "reason": why, "numbers": numbers}


def _summary(traffic: tuple[list[float], int], rated: tuple[int, float]) -> dict[str, Any]:
    lat, errors = traffic
    return {
        "requests": len(lat),
        "errors": errors,
        "p50_ms": percentile(lat, 0.5),
        "p95_ms": percentile(lat, 0.95),
        "ratings": rated[0],
        "mean_rating": round(rated[1], 3) if rated[0] else None,
    }


def drop_canary(env: Env, ctx: Ctx, why: str) -> bool:
    """Roll the run's canary back (only if the endpoint still tries the candidate)."""
    candidate = ctx.run.get("candidate_id")
    if candidate is None:
        return False
    with env.db.write() as s:
        ep = endpoints.find_endpoint(s, ctx.principal.workspace_id, ctx.endpoint, lock=True)
        if ep.canary_version_id != int(candidate):
            return False
        endpoints.drop_canary(ep)
        endpoints.add_event(s, ep, "rollback", f"canary {ctx.run['candidate']} rolled back: {why}")
        endpoints.changed(ep)
    env.wake()
    return True


def _to_production(env: Env, ctx: Ctx) -> str | None:
    """The candidate becomes the model's production version; the registry's refusal, if any."""
    with env.db.read() as s:
        stage = s.scalar(
            select(ModelVersion.stage).where(ModelVersion.id == int(ctx.run["candidate_id"]))
        )
    if stage == PRODUCTION:
        return None
    name, _, number = str(ctx.run["candidate"]).partition(":")
    try:
        models_gates.promote(env.db, ctx.principal, name, number, PromoteRequest(stage=PRODUCTION))
    except models_gates.GateFailed as e:
        return e.message
    return None


def _serve_all(env: Env, ctx: Ctx, why: str) -> None:
    with env.db.write() as s:
        ep = endpoints.find_endpoint(s, ctx.principal.workspace_id, ctx.endpoint, lock=True)
        if ep.canary_version_id == int(ctx.run["candidate_id"]):
            endpoints.promote_canary(s, ep, "promote", f"pipeline {ctx.pipeline}: {why}")
    env.wake()


def decide_step(env: Env, ctx: Ctx) -> Outcome:
    if "decision" not in ctx.step:
        if ctx.run.get("by_hand"):
            decision: dict[str, Any] = {
                "promote": True,
                "reason": "the candidate was promoted by hand",
            }
        else:
            decision = judge(env, ctx, endpoint_of(env, ctx))
        return wait(str(decision["reason"]), decision=decision)
    decision = ctx.step["decision"]
    reason = str(decision["reason"])
    if not decision["promote"]:
        drop_canary(env, ctx, reason)
        return stop(RunState.not_promoted, f"{reason}; the canary was rolled back", "succeeded")
    refused = _to_production(env, ctx)
    if refused is not None:
        drop_canary(env, ctx, refused)
        return stop(
            RunState.not_promoted,
            f"the registry refused production: {refused}; the canary was rolled back",
        )
    _serve_all(env, ctx, reason)
    return stop(RunState.promoted, f"{ctx.run['candidate']} promoted: {reason}")
