"""Request and response shapes of retrain pipelines: the data flywheel's loop, run by the
control plane (curate -> train -> evaluate -> gate -> approval -> canary -> decide)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gureum.schemas.common import NAME_PATTERN, Out

MAX_CANARY_MINUTES = 7 * 24 * 60.0


class RunState(StrEnum):
    """``promoted``: the candidate serves all traffic and is the model's production version;
    ``not_promoted``: a decision kept production as it was (the run's reason says which);
    ``failed``: a step could not complete (production untouched)."""

    running = "running"
    awaiting_approval = "awaiting_approval"
    promoted = "promoted"
    not_promoted = "not_promoted"
    failed = "failed"
    cancelled = "cancelled"


ACTIVE_RUN_STATES = frozenset({RunState.running, RunState.awaiting_approval})


class StepName(StrEnum):
    curate = "curate"
    train = "train"
    evaluate = "evaluate"
    gate = "gate"
    approval = "approval"
    canary = "canary"
    decide = "decide"


STEPS: tuple[StepName, ...] = tuple(StepName)


class StepState(StrEnum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PipelineCreate(In):
    """Retrain ``model`` from what endpoint ``endpoint`` captured, into new versions of
    ``dataset``; runs start by hand, on ``schedule`` (cron, UTC), after ``after_labels`` new
    feedback items, or when the endpoint's drift score reaches ``on_drift``."""

    name: str = Field(pattern=NAME_PATTERN)
    model: str = Field(min_length=1, max_length=64, description="the model to retrain (NAME)")
    endpoint: str = Field(min_length=1, max_length=63, description="the endpoint it serves on")
    dataset: str = Field(
        pattern=NAME_PATTERN, description="the dataset the curated versions are added to"
    )
    schedule: str | None = Field(
        default=None, max_length=120, description='cron, five fields, UTC ("0 3 * * 1")'
    )
    after_labels: int | None = Field(
        default=None, ge=1, le=10_000_000, description="start after this many new feedback items"
    )
    on_drift: float | None = Field(
        default=None, gt=0, le=100, description="start when the drift score reaches this"
    )
    cooldown_minutes: float = Field(
        default=60.0,
        ge=0,
        le=MAX_CANARY_MINUTES,
        description="a trigger starts no run sooner than this after the last one began",
    )
    canary_percent: float = Field(default=10.0, gt=0, lt=100)
    canary_minutes: float = Field(default=10.0, gt=0, le=MAX_CANARY_MINUTES)
    approve: Literal["auto", "manual"] = "auto"
    min_requests: int = Field(
        default=20, ge=1, le=10_000_000, description="canary requests needed for a promotion"
    )
    min_feedback: int = Field(
        default=0, ge=0, le=10_000_000, description="ratings of canary answers needed"
    )
    max_rating_drop: float = Field(
        default=0.0, ge=0, le=4, description="how far the canary's mean rating may fall short"
    )
    min_rating: int | None = Field(
        default=None, ge=1, le=5, description="curate only calls rated at least this"
    )
    labelled_only: bool = False
    metric: str | None = Field(
        default=None,
        max_length=100,
        description="the metric the candidate must beat production on (default: the recipe's)",
    )
    higher_is_better: bool | None = None
    params: dict[str, Any] = Field(
        default_factory=dict, description="training parameters over the last good ones"
    )
    enabled: bool = Field(
        default=True,
        description="false pauses the triggers (schedule, labels, drift); a run by hand starts",
    )

    @model_validator(mode="after")
    def _metric_direction(self) -> Self:
        if self.higher_is_better is not None and self.metric is None:
            raise ValueError("higher_is_better goes with metric")
        return self


# What a run in progress does not read: these may change while one is active.
TRIGGER_FIELDS = frozenset({"schedule", "after_labels", "on_drift", "cooldown_minutes", "enabled"})


class PipelineUpdate(In):
    """Some of a pipeline's settings (PATCH): only the fields given change, with the same
    checks as at creation; ``null`` clears an optional one (``schedule``, ``on_drift``, ...).
    While a run is in progress only the triggers (TRIGGER_FIELDS) may change."""

    model: str | None = Field(default=None, min_length=1, max_length=64)
    endpoint: str | None = Field(default=None, min_length=1, max_length=63)
    dataset: str | None = Field(default=None, pattern=NAME_PATTERN)
    schedule: str | None = Field(default=None, max_length=120)
    after_labels: int | None = Field(default=None, ge=1, le=10_000_000)
    on_drift: float | None = Field(default=None, gt=0, le=100)
    cooldown_minutes: float | None = Field(default=None, ge=0, le=MAX_CANARY_MINUTES)
    canary_percent: float | None = Field(default=None, gt=0, lt=100)
    canary_minutes: float | None = Field(default=None, gt=0, le=MAX_CANARY_MINUTES)
    approve: Literal["auto", "manual"] | None = None
    min_requests: int | None = Field(default=None, ge=1, le=10_000_000)
    min_feedback: int | None = Field(default=None, ge=0, le=10_000_000)
    max_rating_drop: float | None = Field(default=None, ge=0, le=4)
    min_rating: int | None = Field(default=None, ge=1, le=5)
    labelled_only: bool | None = None
    metric: str | None = Field(default=None, max_length=100)
    higher_is_better: bool | None = None
    params: dict[str, Any] | None = None
    enabled: bool | None = None


class PipelineOut(Out):
    name: str
    model: str
    endpoint: str
    dataset: str
    config: PipelineCreate
    next_scheduled_at: datetime | None
    active_run: int | None = Field(description="the number of the run in progress, if any")
    last_run: int | None
    created_by: str | None
    created_at: datetime


class StepOut(Out):
    name: StepName
    state: StepState
    started_at: datetime | None
    finished_at: datetime | None
    message: str
    data: dict[str, Any]


class RunOut(Out):
    pipeline: str
    number: int
    state: RunState
    trigger: str = Field(description="what started it: by hand, schedule, labels, drift")
    reason: str = Field(description="why it ended as it did (or what it waits for)")
    step: StepName | None = Field(description="the step in progress")
    steps: list[StepOut]
    dataset_version: str | None = Field(description='the curated "NAME:V"')
    candidate: str | None = Field(description='the retrained "NAME:V"')
    production: str | None = Field(description='what served when the run began, "NAME:V"')
    metrics: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="candidate and production evaluated on the same held-out set, side by side",
    )
    created_at: datetime
    finished_at: datetime | None


class RunEventOut(Out):
    seq: int
    time: datetime
    step: str | None
    kind: str
    message: str


class ApprovalIn(In):
    approve: bool = True
    note: str = Field(default="", max_length=2000)
