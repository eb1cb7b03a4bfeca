"""A member's "try it" call of an endpoint from the dashboard: the inputs sent and the answer.

The control plane forwards the call to the data plane with a short-lived key it holds for the
member (never shown to anyone), so the call is checked, rate-limited and metered as the
member's own (``member:<user>`` in usage), like any call of a team member's data-plane key.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_TRY_INPUTS = 8  # a try is a look, not a batch job


class TryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[Any] = Field(
        min_length=1,
        max_length=MAX_TRY_INPUTS,
        description="one item per prediction, as the endpoint's predict route takes them",
    )


class TryOut(BaseModel):
    endpoint: str
    model: str | None = Field(None, description="the version that answered (NAME:V)")
    outputs: list[Any]
    units: float | None = None
    unit: str | None = None
    latency_ms: float = Field(description="the whole call as the control plane timed it")
    metered_as: str = Field(description='who the call is metered as ("member:<user>")')
