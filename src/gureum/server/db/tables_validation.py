"""Validation reports of model versions (issue 11): one row per run, kept with the version.

A deploy's row is made with the deploy (state ``pending``) and carries its sample inputs to the
endpoint controller, which hands them to the new replica; the replica's report fills it in.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gureum.server.db.base import Base, UTCDateTime, utcnow


class ModelValidation(Base):
    __tablename__ = "model_validations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    # "deploy" (a deploy's first replica) or "manual" (gureum models validate).
    kind: Mapped[str] = mapped_column(String(16))
    endpoint_id: Mapped[int | None] = mapped_column(
        ForeignKey("endpoints.id", ondelete="SET NULL"), index=True, default=None
    )
    endpoint_name: Mapped[str | None] = mapped_column(String(63), default=None)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    passed: Mapped[bool | None] = mapped_column(Boolean, default=None)
    source: Mapped[str] = mapped_column(Text, default="")
    inputs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    checks: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    load_ms: Mapped[float | None] = mapped_column(Float, default=None)
    latency_p50_ms: Mapped[float | None] = mapped_column(Float, default=None)
    latency_max_ms: Mapped[float | None] = mapped_column(Float, default=None)
    memory_max_mb: Mapped[float | None] = mapped_column(Float, default=None)
    message: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
