"""What the control plane hands a replica: which version to load and where to report."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from gureum.compute.spec import BlobFile

Role = Literal["primary", "canary", "shadow"]


class ReplicaSpec(BaseModel):
    endpoint: str
    endpoint_id: int
    workspace_id: int
    role: Role
    version_id: int
    label: str
    recipe: str | None
    files: list[BlobFile]
    artifacts: str
    control_url: str
    # The endpoint's token: replicas fetch keys and ship usage with it.
    token: str
    spool_dir: str
    max_request_bytes: int
    # Only a replica of an endpoint that scales to zero can have kept a request waiting.
    scales_to_zero: bool = False
    threads: int = 1


class TrafficConfig(BaseModel):
    """Ray Serve ``user_config``: changed on live replicas without restarting them."""

    canary_percent: float = Field(default=0.0, ge=0, le=100)
    canary_app: str | None = None
    shadow_app: str | None = None
    max_batch_size: int = 8
    max_wait_ms: float = 5.0
