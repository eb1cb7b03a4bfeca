"""Shapes every resource shares: the error body and paginated lists."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")

ROLES = ("viewer", "developer", "admin", "owner")
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Page(BaseModel, Generic[T]):
    """One page of a list; pass ``next_cursor`` back as ``cursor`` for the next one."""

    items: list[T]
    next_cursor: str | None = None


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)
