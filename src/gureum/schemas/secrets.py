"""Workspace secrets as the API shows them: names and times, never values."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

SECRET_NAME_PATTERN = r"^[A-Z][A-Z0-9_]{0,63}$"  # noqa: S105 (a name pattern)
MAX_SECRET_BYTES = 64 * 1024


class SecretSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: str = Field(min_length=1, max_length=MAX_SECRET_BYTES)


class SecretOut(BaseModel):
    name: str
    updated_at: datetime
    updated_by: str | None = None
