"""What the control plane hands a replica: which version to load and where to report."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from gureum.compute.spec import BlobFile
from gureum.serving.validation import ValidationSpec

Role = Literal["primary", "canary", "shadow"]


class ModelRef(BaseModel):
    """The version a replica serves. Part of the live configuration, not of the replica's
    identity: a new version is loaded into the running replicas (no restart, no request
    sent to a replica that is going away)."""

    version_id: int
    label: str
    recipe: str | None
    files: list[BlobFile]


class ReplicaSpec(BaseModel):
    endpoint: str
    endpoint_id: int
    workspace_id: int
    role: Role
    artifacts: str
    control_url: str
    # The endpoint's token: replicas fetch keys and ship usage with it.
    token: str
    spool_dir: str
    max_request_bytes: int
    # Only a replica of an endpoint that scales to zero can have kept its first request waiting.
    scales_to_zero: bool = False
    threads: int = 1


class TrafficConfig(BaseModel):
    """Ray Serve ``user_config``: changed on live replicas without restarting them.

    ``endpoint_id`` and ``owner`` record whose application this is; Ray Serve reports them back,
    and the controller adopts or deletes an application only when they match its endpoint."""

    model: ModelRef
    endpoint_id: int | None = None
    owner: str | None = None
    canary_percent: float = Field(default=0.0, ge=0, le=100)
    canary_app: str | None = None
    shadow_app: str | None = None
    max_batch_size: int = 8
    max_wait_ms: float = 5.0
    # Open server-sent-event streams one key may hold on one replica.
    max_streams_per_key: int = 4
    # Set while a deploy of ``model`` is being validated: a replica that loads it runs this
    # smoke test first, and does not start (or keeps its loaded version) when it fails.
    validation: ValidationSpec | None = None
