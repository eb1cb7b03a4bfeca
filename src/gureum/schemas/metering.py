"""What replicas and the control plane exchange: usage batches in, consumer access out.

Replicas spool every served request locally and ship it in batches (at least once: ``id`` makes
a re-shipped record count once); they verify keys against the hashes in an access snapshot.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gureum.schemas.capture import CaptureSettings, FeedbackIn
from gureum.schemas.common import Out

MAX_BATCH = 5000
OUTPUT_CHARS = 2000


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UsageIn(In):
    id: str = Field(min_length=8, max_length=40)
    time: datetime
    # None for a team member's own call (a workspace API key): metered, never charged.
    consumer_id: int | None
    consumer_name: str = Field(max_length=128)
    model_version_id: int
    model_label: str = Field(max_length=200)
    role: Literal["primary", "canary"] = "primary"
    route: str = Field(max_length=32)
    status: int = Field(ge=100, le=599)
    units: float = Field(default=0.0, ge=0)
    unit: str = Field(default="request", max_length=16)
    latency_ms: float = Field(ge=0)
    cold_start: bool = False


class ShadowIn(In):
    id: str = Field(min_length=8, max_length=40)
    time: datetime
    model_label: str = Field(max_length=200)
    status: int = Field(ge=100, le=599)
    latency_ms: float = Field(ge=0)
    primary_status: int = Field(ge=100, le=599)
    primary_latency_ms: float = Field(ge=0)
    output: str = Field(default="", max_length=OUTPUT_CHARS)
    primary_output: str = Field(default="", max_length=OUTPUT_CHARS)


class ReplicaGauges(In):
    """A replica's live numbers at shipping time (for /metrics and `endpoints show`)."""

    replica: str = Field(max_length=128)
    role: Literal["primary", "canary", "shadow"]
    in_flight: int = Field(ge=0)
    # batch size -> number of model calls of that size since the last shipment
    batch_sizes: dict[int, int] = Field(default_factory=dict)
    cold_start_ms: float | None = None
    # What runs the model, where a recipe has a choice (imported HF text generation:
    # "vllm", "transformers-cuda", "transformers-cpu").
    engine: str | None = Field(default=None, max_length=64)
    # Captured calls dropped since the last shipment (the capture spool was full), and how
    # many wait in the spool for the artifact store.
    capture_dropped: int = Field(default=0, ge=0)
    capture_pending: int = Field(default=0, ge=0)


class UsageBatch(In):
    records: list[UsageIn] = Field(default_factory=list, max_length=MAX_BATCH)
    shadow: list[ShadowIn] = Field(default_factory=list, max_length=MAX_BATCH)
    feedback: list[FeedbackIn] = Field(default_factory=list, max_length=MAX_BATCH)
    gauges: list[ReplicaGauges] = Field(default_factory=list, max_length=64)


class UsageAccepted(Out):
    accepted: int
    duplicates: int


class AccessKey(Out):
    """One key allowed to call the endpoint. ``kind`` member: a workspace API key (team use)."""

    key_id: str
    secret_hash: str
    kind: Literal["consumer", "member"]
    consumer_id: int | None
    consumer_name: str
    rate_limit: float | None = None
    monthly_quota: int | None = None
    used_this_month: int = 0
    # False for a consumer who opted out of capture: none of its calls is ever kept.
    capture: bool = True


class AccessSnapshot(Out):
    endpoint: str
    keys: list[AccessKey]
    # Running primary replicas: each enforces its share of a consumer's rate limit.
    replicas: int = 1
    generated_at: datetime
    # A replica whose last snapshot is older than this refuses every call (fails closed).
    max_staleness_s: float = 300.0
    capture: CaptureSettings | None = None


class LeaseRequest(In):
    """A replica asks for the next block of a consumer's monthly quota, and gives back what
    it holds unused (``release``: at shutdown)."""

    consumer_id: int
    release: int = Field(default=0, ge=0, le=1_000_000)


class LeaseGranted(Out):
    consumer_id: int
    # Calls this replica may serve now; 0: the quota is used up (or the consumer is gone).
    granted: int
    monthly_quota: int | None
    period: str
