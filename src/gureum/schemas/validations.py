"""Validation reports of model versions: a load and a smoke test before a version serves."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gureum.schemas.common import Out

DEFAULT_SAMPLES = 16
MAX_SAMPLES = 64
# What the sample inputs of one validation may weigh in JSON: they travel in Ray Serve's
# user_config and are stored with the report.
MAX_SAMPLE_BYTES = 1024 * 1024

CheckName = Literal["load", "predict", "outputs", "output_schema", "units", "latency", "memory"]


class ValidationLimits(BaseModel):
    """What one request may take: wall time and growth of the process's resident memory."""

    model_config = ConfigDict(extra="forbid")

    max_latency_ms: float = Field(default=10_000.0, gt=0, le=600_000)
    max_memory_mb: float = Field(default=1024.0, gt=0, le=1_048_576)


class Check(BaseModel):
    """One check of a validation: what passed, or why it failed."""

    name: CheckName
    passed: bool
    detail: str = ""


ValidationState = Literal["pending", "running", "passed", "failed"]
ValidationKind = Literal["deploy", "manual"]


class ValidationRequest(BaseModel):
    """``gureum models validate``: sample inputs given (a JSON list), or ``count`` picked from
    the validation split of the dataset the version was trained on."""

    model_config = ConfigDict(extra="forbid")

    sample_inputs: list[Any] | None = Field(
        default=None, min_length=1, max_length=MAX_SAMPLES, description="inputs to predict"
    )
    count: int = Field(default=DEFAULT_SAMPLES, ge=1, le=MAX_SAMPLES)
    limits: ValidationLimits = Field(default_factory=ValidationLimits)


class ValidationOut(Out):
    id: int
    model: str
    version: int
    kind: ValidationKind = Field(description='"deploy": a deploy\'s first replica; "manual"')
    endpoint: str | None = Field(description="the endpoint whose deploy ran it")
    state: ValidationState
    passed: bool | None
    source: str = Field(description="where the sample inputs came from")
    samples: int
    checks: list[Check]
    load_ms: float | None
    latency_p50_ms: float | None
    latency_max_ms: float | None
    memory_max_mb: float | None
    limits: ValidationLimits
    message: str
    created_at: datetime
    finished_at: datetime | None
