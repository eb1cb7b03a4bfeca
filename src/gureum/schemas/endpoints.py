"""Request and response shapes of endpoints: model versions served on Ray Serve."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gureum.schemas.common import Out

EndpointState = Literal["deploying", "ready", "updating", "failed", "deleting"]
ENDPOINT_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
MiB = 1024 * 1024


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReplicaResources(In):
    """What one replica gets from Ray (``ray_actor_options``)."""

    cpus: float = Field(default=1.0, ge=0, le=256)
    gpus: float = Field(default=0.0, ge=0, le=16)
    memory_gb: float | None = Field(default=None, gt=0, le=4096)
    accelerator_type: str | None = Field(default=None, min_length=1, max_length=64)


class Autoscaling(In):
    """Ray Serve's autoscaling: replicas follow in-flight requests per replica.
    ``min_replicas`` 0 scales to zero after ``idle_timeout_s`` without traffic."""

    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(default=1, ge=1, le=1000)
    target_ongoing_requests: float = Field(default=2.0, gt=0, le=10_000)
    upscale_delay_s: float = Field(default=3.0, ge=0, le=3600)
    downscale_delay_s: float = Field(default=60.0, ge=0, le=86_400)
    idle_timeout_s: float = Field(default=300.0, ge=0, le=86_400)

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class Batching(In):
    """Dynamic batching: requests arriving within ``max_wait_ms`` share one model call."""

    max_batch_size: int = Field(default=8, ge=1, le=1024)
    max_wait_ms: float = Field(default=5.0, ge=0, le=10_000)


class CanaryLimits(In):
    """A canary is rolled back when, over at least ``min_requests`` of its own, its error rate
    exceeds the primary's by more than ``max_error_rate_increase`` or its p95 latency exceeds
    ``max_latency_ratio`` times the primary's."""

    min_requests: int = Field(default=20, ge=1, le=1_000_000)
    max_error_rate_increase: float = Field(default=0.05, ge=0, le=1)
    max_latency_ratio: float = Field(default=2.0, ge=1, le=1000)


class EndpointConfig(In):
    resources: ReplicaResources = Field(default_factory=ReplicaResources)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    batching: Batching = Field(default_factory=Batching)
    canary_limits: CanaryLimits = Field(default_factory=CanaryLimits)
    # A request to an endpoint at zero replicas waits this long for one to start.
    cold_start_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    # Largest request body a replica reads; bigger ones get 413.
    max_request_bytes: int = Field(default=8 * MiB, ge=1024, le=1024 * MiB)


class EndpointCreate(In):
    """Deploy ``model`` ("NAME" for its production version, else the latest; or "NAME:V") as
    endpoint ``name``. On an existing endpoint: a new version rolls over with no failed request,
    or goes to ``canary_percent`` of the traffic, or is mirrored as a ``shadow``."""

    name: str = Field(pattern=ENDPOINT_NAME)
    model: str = Field(min_length=1, max_length=200)
    config: EndpointConfig | None = None
    canary_percent: float | None = Field(default=None, gt=0, lt=100)
    shadow: bool = False

    @model_validator(mode="after")
    def _one_mode(self) -> Self:
        if self.shadow and self.canary_percent is not None:
            raise ValueError("a version is deployed either as a canary or as a shadow, not both")
        return self


class EndpointUpdate(In):
    """Change the configuration or the canary's share without changing versions."""

    config: EndpointConfig | None = None
    canary_percent: float | None = Field(default=None, gt=0, lt=100)


class VersionRef(Out):
    version: int
    label: str


class CanaryOut(VersionRef):
    percent: float


class ReplicaCounts(Out):
    primary: int = 0
    canary: int = 0
    shadow: int = 0


class EndpointOut(Out):
    name: str
    workspace: str
    model: str
    version: int
    model_label: str
    recipe: str | None
    canary: CanaryOut | None
    shadow: VersionRef | None
    previous: VersionRef | None
    config: EndpointConfig
    state: EndpointState
    message: str
    url: str | None = Field(description="where consumers send requests (the data plane)")
    replicas: ReplicaCounts
    created_at: datetime
    updated_at: datetime


class EndpointEventOut(Out):
    seq: int
    time: datetime
    kind: str
    message: str
    data: dict[str, Any]


class VersionStats(Out):
    label: str
    role: Literal["primary", "canary", "shadow"]
    requests: int
    errors: int
    error_rate: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class EndpointStats(Out):
    """Over the window: requests per version, cold starts, replicas and live replica gauges."""

    window_s: float
    versions: list[VersionStats]
    cold_starts: int
    last_cold_start_ms: float | None
    replicas: ReplicaCounts
    queue_depth: int
    batch_size_avg: float | None


class ShadowRecordOut(Out):
    id: str
    time: datetime
    model_label: str
    status: int
    latency_ms: float
    primary_status: int
    primary_latency_ms: float
    output: str
    primary_output: str
