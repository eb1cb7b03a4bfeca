"""Request and response shapes of endpoints: model versions served on Ray Serve."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from gureum.schemas.capture import CaptureConfig
from gureum.schemas.common import Out

EndpointState = Literal["deploying", "ready", "updating", "failed", "deleting"]
# Names of existing endpoints (references to them); new names are NewEndpointName.
ENDPOINT_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
# A new endpoint's name: DNS-label-like words joined by single hyphens ("--" once named an
# endpoint's canary and shadow applications in Ray Serve; it stays refused so that no name reads
# like one), not a reserved name, at most 63 characters (a DNS label).
NEW_ENDPOINT_NAME = r"^[a-z0-9]+(-[a-z0-9]+)*$"
ENDPOINT_NAME_MAX = 63
# gureum's own names on the data plane and in Ray Serve (the router is "gureum-router";
# endpoint applications are "ep-<id>"): no endpoint may be named like them.
RESERVED_ENDPOINT_NAMES = r"^(gureum|ep-[0-9]+($|-))"


def check_endpoint_name(name: str) -> str:
    if re.match(RESERVED_ENDPOINT_NAMES, name):
        raise ValueError(
            f"{name!r} is reserved: endpoint names may not start with 'gureum' or look like "
            "'ep-<number>'"
        )
    return name


NewEndpointName = Annotated[
    str,
    Field(
        pattern=NEW_ENDPOINT_NAME,
        min_length=1,
        max_length=ENDPOINT_NAME_MAX,
        json_schema_extra={"not": {"pattern": RESERVED_ENDPOINT_NAMES}},
        description=(
            "lowercase letters and digits in words joined by single hyphens, at most 63 "
            "characters; names starting with 'gureum' or like 'ep-<number>' are reserved"
        ),
    ),
    AfterValidator(check_endpoint_name),
]
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
    """Ray Serve's autoscaling: replicas follow the requests in flight and queued per replica.
    ``min_replicas`` 0 scales to zero after ``idle_timeout_s`` without traffic. The defaults
    follow a bursty trace: up within a second or two of a burst, down 15 s after it (see
    docs/serving.md). ``prewarm`` raises the minimum ahead of the peaks recorded in the
    endpoint's usage history (a day-of-week / time-of-day profile) and lowers it after them."""

    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(default=1, ge=1, le=1000)
    target_ongoing_requests: float = Field(default=2.0, gt=0, le=10_000)
    # Requests one replica accepts at once; the rest wait where any free replica (a new one
    # too) takes them. None: 2.5 x target_ongoing_requests, at least the batch size.
    max_ongoing_requests: int | None = Field(default=None, ge=1, le=10_000)
    upscale_delay_s: float = Field(default=1.0, ge=0, le=3600)
    downscale_delay_s: float = Field(default=15.0, ge=0, le=86_400)
    idle_timeout_s: float = Field(default=300.0, ge=0, le=86_400)
    prewarm: bool = False
    # How long before a recorded peak the minimum is raised (a replica's start and then some).
    prewarm_lead_s: float = Field(default=300.0, ge=0, le=86_400)
    # How many past weeks of usage the profile averages.
    prewarm_weeks: int = Field(default=4, ge=1, le=52)

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        if (
            self.max_ongoing_requests is not None
            and self.max_ongoing_requests < self.target_ongoing_requests
        ):
            raise ValueError("max_ongoing_requests must be at least target_ongoing_requests")
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
    # Open OpenAI streams one key may hold on one replica; more get 429.
    max_streams_per_key: int = Field(default=4, ge=1, le=1000)


class EndpointCreate(In):
    """Deploy ``model`` ("NAME" for its production version, else the latest; or "NAME:V") as
    endpoint ``name``. On an existing endpoint: a new version rolls over with no failed request,
    or goes to ``canary_percent`` of the traffic, or is mirrored as a ``shadow``."""

    name: NewEndpointName
    model: str = Field(min_length=1, max_length=200)
    config: EndpointConfig | None = None
    canary_percent: float | None = Field(default=None, gt=0, lt=100)
    shadow: bool = False
    capture: CaptureConfig | None = Field(
        default=None,
        description="keep a share of the calls for retraining; on an existing endpoint it "
        "replaces the capture settings (replicas follow within seconds, no redeploy)",
    )
    sample_inputs: list[Any] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="inputs the version's smoke test predicts before it takes traffic; "
        "by default up to 16 from the validation split of the dataset it was trained on",
    )

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
    # role -> what runs the model where a recipe has a choice (e.g. "vllm", "transformers-cpu")
    engines: dict[str, str] = Field(default_factory=dict)


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
