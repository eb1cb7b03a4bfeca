"""Request and response shapes of workspaces, users, API keys and the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gureum.schemas.common import NAME_PATTERN, Out

Role = Literal["viewer", "developer", "admin", "owner"]
Name = Annotated[str, Field(pattern=NAME_PATTERN, description="lowercase letters, digits, . _ -")]


class In(BaseModel):
    """Request bodies refuse unknown fields, so a typo is a 422 rather than silently ignored."""

    model_config = ConfigDict(extra="forbid")


class WorkspaceCreate(In):
    name: Name


class WorkspaceOut(Out):
    name: str
    created_at: datetime
    role: Role | None = Field(
        default=None, description="the caller's role in it; None for a site admin not a member"
    )


class UserCreate(In):
    name: Name
    email: str | None = Field(default=None, max_length=256)
    role: Role = "developer"


class UserRoleUpdate(In):
    role: Role


class MemberOut(Out):
    name: str
    email: str | None
    role: Role
    is_site_admin: bool
    added_at: datetime


class KeyCreate(In):
    name: str = Field(min_length=1, max_length=128)
    role: Role | None = Field(default=None, description="default: your role there")
    expires_in_days: int | None = Field(default=None, ge=1, le=36500)
    expires_at: datetime | None = None
    user: Name | None = Field(default=None, description="default: you")
    workspace: Name | None = Field(default=None, description="default: your key's workspace")
    data_plane: bool = Field(
        default=False,
        description="may also call the workspace's endpoints, rate-limited and metered like a "
        "consumer (developer role or above)",
    )

    @model_validator(mode="after")
    def _one_expiry(self) -> Self:
        if self.expires_in_days is not None and self.expires_at is not None:
            raise ValueError("give expires_in_days or expires_at, not both")
        return self


class KeyOut(Out):
    """A key as lists show it: the public key id, never the secret or its hash."""

    key_id: str
    name: str
    user: str
    workspace: str
    role: Role
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    data_plane: bool = False


class KeyCreated(KeyOut):
    token: str = Field(description="the whole key; shown once, store it now")


class AuditEventOut(Out):
    id: int
    created_at: datetime
    user: str | None = Field(description="who: the acting user's name (None for the system)")
    key_id: str | None
    action: str
    target_type: str
    target: str
    details: dict[str, Any]
