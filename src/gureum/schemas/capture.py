"""Captured traffic and consumers' feedback: what an endpoint keeps of its calls (the data
flywheel's raw material), how replicas report it, and how the team reads it back.

A replica samples calls at the endpoint's capture rate, spools the sampled ones locally, writes
them in batches to the artifact store and ships an index row per call to the control plane.
Consumers rate answers by the signed request id every data-plane answer carries.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gureum.schemas.common import Out

MAX_BATCH = 5000
REQUEST_ID_MAX = 120
NOTE_MAX = 2000
LABEL_MAX = 200

# A field to blank out of captured inputs and outputs, wherever it is: a key of a JSON object
# ("email"), or a dotted path ("card.number": a "number" inside a "card").
RedactField = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\s]+$")]


Sha256 = Annotated[str, Field(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")]


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CaptureConfig(In):
    """An endpoint's capture: a share of calls kept (0 to 1), their inputs and/or outputs,
    fields blanked out before anything leaves the replica, and how long records are kept."""

    rate: float = Field(default=0.0, ge=0, le=1)
    inputs: bool = True
    outputs: bool = True
    redact: list[RedactField] = Field(default_factory=list, max_length=32)
    retention_days: int | None = Field(default=None, ge=1, le=3650)


class CaptureUpdate(In):
    """Change some of an endpoint's capture settings (the others stay)."""

    rate: float | None = Field(default=None, ge=0, le=1)
    inputs: bool | None = None
    outputs: bool | None = None
    redact: list[RedactField] | None = Field(default=None, max_length=32)
    retention_days: int | None = Field(default=None, ge=1, le=3650)


class CaptureSettings(Out):
    """What a replica needs to capture and to sign request ids (in its access snapshot)."""

    config: CaptureConfig = Field(default_factory=CaptureConfig)
    # The endpoint's key for request ids (hex): any replica signs and verifies without a lookup.
    request_id_key: str


class CapturedIn(In):
    """One captured call, as a replica indexes it: the call's line in a batch object."""

    request_id: str = Field(min_length=8, max_length=REQUEST_ID_MAX)
    time: datetime
    consumer_id: int | None
    consumer_name: str = Field(max_length=128)
    model_version_id: int
    route: str = Field(max_length=32)
    status: int = Field(ge=100, le=599)
    # The batch object (a blob of the endpoint's workspace, JSON lines) and the call's line.
    object: str = Field(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")
    line: int = Field(ge=0, le=MAX_BATCH)
    size: int = Field(ge=0)
    has_inputs: bool
    has_outputs: bool
    # Blobs the call's line refers to ({"$blob": sha256} for large values such as images):
    # kept while the record is, removed with it when nothing else uses them.
    blobs: list[Sha256] = Field(default_factory=list, max_length=1024)


class CaptureBatch(In):
    records: list[CapturedIn] = Field(default_factory=list, max_length=MAX_BATCH)


class FeedbackBody(In):
    """What a consumer sends to ``<data plane>/v1/endpoints/E/feedback``: a rating of an
    answer (1-5), the right label or target, a note; at least one of rating, label, target."""

    request_id: str = Field(min_length=1, max_length=REQUEST_ID_MAX)
    rating: int | None = Field(default=None, ge=1, le=5)
    label: str | int | None = Field(default=None)
    target: float | str | None = Field(default=None)
    note: str | None = Field(default=None, max_length=NOTE_MAX)

    @model_validator(mode="after")
    def _something(self) -> Self:
        if self.rating is None and self.label is None and self.target is None:
            raise ValueError("give a rating (1-5), a label or a target")
        for name in ("label", "target"):
            value = getattr(self, name)
            if isinstance(value, str) and not 0 < len(value) <= LABEL_MAX:
                raise ValueError(f"{name} must be 1 to {LABEL_MAX} characters")
        return self


class FeedbackIn(In):
    """One feedback, as a replica ships it (verified: the request id is this endpoint's and
    the sender's own)."""

    id: str = Field(min_length=8, max_length=40)
    time: datetime
    request_id: str = Field(min_length=8, max_length=REQUEST_ID_MAX)
    consumer_id: int | None
    consumer_name: str = Field(max_length=128)
    rating: int | None = Field(default=None, ge=1, le=5)
    label: str | int | None = None
    target: float | str | None = None
    note: str | None = Field(default=None, max_length=NOTE_MAX)


class FeedbackOut(Out):
    request_id: str
    time: datetime
    consumer: str
    rating: int | None
    label: str | int | None
    target: float | str | None
    note: str | None
    # Whether the call it rates was captured (sampled, and its consumer not opted out).
    captured: bool


class FeedbackSummary(Out):
    endpoint: str
    count: int
    rated: int
    mean_rating: float | None
    ratings: dict[str, int]
    labelled: int
    captured: int
    recent: list[FeedbackOut]


class CaptureOut(Out):
    endpoint: str
    config: CaptureConfig
    captured: int
    last_captured_at: datetime | None
    # Records replicas dropped because their spool was full (storage unreachable too long).
    dropped: int
    # Records waiting in the replicas' spools for the artifact store, as last reported.
    pending: int = 0


class CapturedRecordOut(Out):
    request_id: str
    time: datetime
    consumer: str
    model_label: str
    route: str
    status: int
    input: Any = None
    output: Any = None
    feedback: FeedbackOut | None = None
    # False when its batch object or line could not be read back from the artifact store.
    readable: bool = True


class ForgetOut(Out):
    """What erasing a consumer's captured data removed: its captured records and feedback on
    every endpoint of the workspace, and the stored blobs nothing else used any more. The
    consumer itself stays (its keys keep working)."""

    consumer: str
    records: int
    feedback: int
    blobs_removed: int
