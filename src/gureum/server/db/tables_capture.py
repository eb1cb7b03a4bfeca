"""Captured calls and consumers' feedback (issue 12): the data flywheel's index.

The captured inputs and outputs themselves are JSON-lines batch objects in the artifact store
(blobs of the endpoint's workspace); a row here says which object and line hold one call.
Both tables are keyed by ids the replicas make, so a re-shipped batch is stored once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gureum.server.db.base import Base, UTCDateTime


class CapturedRequest(Base):
    __tablename__ = "captured_requests"

    # The signed request id the call's answer carried (X-Request-Id).
    request_id: Mapped[str] = mapped_column(String(120), primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("endpoints.id", ondelete="CASCADE"), index=True
    )
    # None for a team member's own call; erasing a consumer's records goes with the consumer.
    consumer_id: Mapped[int | None] = mapped_column(
        ForeignKey("consumers.id", ondelete="CASCADE"), default=None, index=True
    )
    consumer_name: Mapped[str] = mapped_column(String(128))
    # No foreign key: a record outlives the version that answered it (the label says which).
    model_version_id: Mapped[int] = mapped_column(Integer)
    model_label: Mapped[str] = mapped_column(String(200))
    route: Mapped[str] = mapped_column(String(32))
    status: Mapped[int] = mapped_column(Integer)
    time: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # sha256 of the batch object (a blob of the workspace) and the call's line in it; indexed
    # because collecting a blob asks whether any record still points at it.
    object: Mapped[str] = mapped_column(String(64), index=True)
    line: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)
    has_inputs: Mapped[bool] = mapped_column(Boolean)
    has_outputs: Mapped[bool] = mapped_column(Boolean)


class CapturedBlob(Base):
    """A blob a captured call's line refers to (``{"$blob": sha256}``, an image say): the
    record keeps it alive, and erasing the record lets it go when nothing else uses it."""

    __tablename__ = "captured_blobs"

    request_id: Mapped[str] = mapped_column(
        ForeignKey("captured_requests.request_id", ondelete="CASCADE"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class Feedback(Base):
    """A consumer's rating, label or target for one answer; ``id`` comes from the replica."""

    __tablename__ = "feedback"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("endpoints.id", ondelete="CASCADE"), index=True
    )
    # Not a foreign key: a call that was not sampled has feedback but no captured record.
    request_id: Mapped[str] = mapped_column(String(120), index=True)
    consumer_id: Mapped[int | None] = mapped_column(
        ForeignKey("consumers.id", ondelete="CASCADE"), default=None
    )
    consumer_name: Mapped[str] = mapped_column(String(128))
    rating: Mapped[int | None] = mapped_column(Integer, default=None)
    label: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True, default=None)
    target: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True, default=None)
    note: Mapped[str | None] = mapped_column(Text, default=None)
    time: Mapped[datetime] = mapped_column(UTCDateTime)
