"""Site settings and the sandbox's state, as the API shows them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SandboxState(BaseModel):
    """Whether user code can be sandboxed on this server's machine, and what happens if not."""

    available: bool
    bwrap: str = Field(description="the bubblewrap binary (GUREUM_BWRAP)")
    detail: str


class SiteSettingsOut(BaseModel):
    allow_unsandboxed_code: bool = Field(
        description="run script jobs without the sandbox where bubblewrap is unavailable"
    )
    sandbox: SandboxState


class SettingUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: bool
