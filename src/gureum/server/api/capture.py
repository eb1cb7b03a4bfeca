"""An endpoint's capture settings, its consumers' feedback, the calls it captured and how far
those calls' inputs have drifted from the training data."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from gureum.schemas.capture import CapturedRecordOut, CaptureOut, CaptureUpdate, FeedbackSummary
from gureum.schemas.common import ErrorBody
from gureum.schemas.drift import DriftHistoryOut, DriftOut
from gureum.server.deps import DbDep, Developer, ServingDep, StoreDep, Viewer
from gureum.server.services import capture as svc
from gureum.server.services import drift

router = APIRouter(
    prefix="/endpoints",
    tags=["endpoints"],
    responses={403: {"model": ErrorBody}, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
Name = Annotated[str, Path(max_length=63, description="the endpoint's name")]


@router.get("/{name}/capture")
def get_capture(name: Name, db: DbDep, serving: ServingDep, principal: Viewer) -> CaptureOut:
    """The capture settings, how many calls were captured, dropped and wait in spools."""
    return svc.get_capture(db, principal, name, serving.gauges)


@router.patch("/{name}/capture")
def set_capture(
    name: Name, body: CaptureUpdate, db: DbDep, serving: ServingDep, principal: Developer
) -> CaptureOut:
    """Change some capture settings (the others stay); replicas follow within seconds."""
    return svc.set_capture(db, principal, name, body, serving.gauges)


@router.get("/{name}/feedback")
def feedback(name: Name, db: DbDep, principal: Viewer) -> FeedbackSummary:
    """Consumers' ratings and corrections of the endpoint's answers, summarised."""
    return svc.feedback_summary(db, principal, name)


@router.get("/{name}/captured")
def captured(
    name: Name,
    db: DbDep,
    store: StoreDep,
    principal: Developer,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    consumer: Annotated[str | None, Query(max_length=128)] = None,
) -> list[CapturedRecordOut]:
    """The latest captured calls with their inputs, outputs and feedback (customer data:
    developers and above)."""
    return svc.list_captured(db, store, principal, name, limit=limit, consumer=consumer)


@router.get("/{name}/drift")
def drift_of(
    name: Name,
    db: DbDep,
    store: StoreDep,
    principal: Viewer,
    window_s: Annotated[int, Query(ge=60, le=90 * 86_400)] = drift.DEFAULT_WINDOW_S,
) -> DriftOut:
    """Live inputs (the calls captured in the last ``window_s`` seconds) against the served
    model's training data: PSI per feature, data-quality checks, a verdict (numbers only)."""
    return drift.endpoint_drift(db, store, principal, name, window_s)


@router.get("/{name}/drift/history")
def drift_history(
    name: Name,
    db: DbDep,
    store: StoreDep,
    principal: Viewer,
    window_s: Annotated[int, Query(ge=60, le=90 * 86_400)] = drift.DEFAULT_WINDOW_S,
    buckets: Annotated[int, Query(ge=1, le=drift.MAX_BUCKETS)] = drift.DEFAULT_BUCKETS,
) -> DriftHistoryOut:
    """The drift score over time: ``buckets`` consecutive windows covering the last
    ``window_s`` seconds, oldest first (each at least a minute; a bounded sample of each
    window's captured calls), with the PSI of the features that drifted most."""
    return drift.endpoint_history(db, store, principal, name, window_s, buckets)
