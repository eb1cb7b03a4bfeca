"""Tables of the serving side: endpoints, consumers and their plans, the metering ledger, cost.

Usage and cost rows keep names next to their (nullable) foreign keys so that invoices and cost
reports stay whole after an endpoint or consumer is deleted.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from gureum.server.db.base import Base, UTCDateTime, utcnow


class Endpoint(Base):
    """Desired state of an endpoint; the endpoint controller makes Ray Serve match it.

    ``generation`` is bumped on every change of the desired state and ``applied_generation``
    records what the controller last applied, so a restarted controller knows what to redo.
    """

    __tablename__ = "endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Consumers call /v1/endpoints/{name}/..., a path without workspace: names are global.
    name: Mapped[str] = mapped_column(String(63), unique=True)
    workspace_id: Mapped[int] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="RESTRICT"))
    # The version served before the last promotion: what `endpoints rollback` returns to.
    previous_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), default=None
    )
    canary_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), default=None
    )
    canary_percent: Mapped[float] = mapped_column(Float, default=0.0)
    canary_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # "promote": the canary (at 0 %) is a new version that replaces the primary once it has
    # started; it is how a plain deploy checks that a version loads before any traffic moves.
    rollout: Mapped[str | None] = mapped_column(String(16), default=None)
    shadow_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), default=None
    )
    # EndpointConfig (schemas.endpoints): resources, autoscaling, batching, canary limits.
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # CaptureConfig (schemas.capture); None: never configured (nothing captured). Replicas
    # read it from their access snapshot: a change needs no redeploy.
    capture: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), default=None)
    # Captured calls replicas dropped because their spool was full, since the endpoint began.
    capture_dropped: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # deploying | ready | updating | failed | deleting
    state: Mapped[str] = mapped_column(String(16), default="deploying")
    message: Mapped[str] = mapped_column(Text, default="")
    generation: Mapped[int] = mapped_column(Integer, default=1)
    applied_generation: Mapped[int] = mapped_column(Integer, default=0)
    event_seq: Mapped[int] = mapped_column(Integer, default=0)
    # Replicas ship usage and fetch consumer keys with this token (stored hashed).
    token_hash: Mapped[str] = mapped_column(String(128))
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EndpointEvent(Base):
    __tablename__ = "endpoint_events"
    __table_args__ = (UniqueConstraint("endpoint_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("endpoints.id", ondelete="CASCADE"), index=True
    )
    seq: Mapped[int] = mapped_column(Integer)
    time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Plan(Base):
    """What a consumer pays and may do; ``endpoints`` empty: every endpoint of the workspace."""

    __tablename__ = "plans"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workspace_id: Mapped[int] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(128))
    price_per_request: Mapped[float] = mapped_column(Float, default=0.0)
    # Price of one unit of what the endpoint returns: image, token, row (see serving.units).
    price_per_unit: Mapped[float] = mapped_column(Float, default=0.0)
    currency: Mapped[str] = mapped_column(String(8), default="USD")
    # Requests per second (None: unlimited) and requests per calendar month (None: unlimited).
    rate_limit: Mapped[float | None] = mapped_column(Float, default=None)
    monthly_quota: Mapped[int | None] = mapped_column(Integer, default=None)
    endpoints: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Consumer(Base):
    """A customer of the workspace: calls its endpoints with consumer keys, never the API."""

    __tablename__ = "consumers"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workspace_id: Mapped[int] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(128))
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id", ondelete="RESTRICT"), index=True)
    email: Mapped[str | None] = mapped_column(String(256), default=None)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Opted out of capture: none of its calls is ever kept (replicas see it per key).
    no_capture: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConsumerKey(Base):
    """``gck_<key_id>_<secret>``; only the sha256 of the secret is stored."""

    __tablename__ = "consumer_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    consumer_id: Mapped[int] = mapped_column(
        ForeignKey("consumers.id", ondelete="CASCADE"), index=True
    )
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class QuotaLease(Base):
    """Calls of a consumer's monthly quota handed out to replicas (in blocks) for ``period``
    (YYYY-MM): never more than the quota, so replicas together never serve more."""

    __tablename__ = "quota_leases"

    consumer_id: Mapped[int] = mapped_column(
        ForeignKey("consumers.id", ondelete="CASCADE"), primary_key=True
    )
    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    leased: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UsageRecord(Base):
    """One served request; ``id`` comes from the replica: a re-shipped batch counts once."""

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_ws_time", "workspace_id", "time"),
        Index("ix_usage_consumer_time", "consumer_id", "time"),
        # An endpoint's traffic (its dashboard page) without reading the others' records.
        Index("ix_usage_ws_endpoint_time", "workspace_id", "endpoint_name", "time"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    consumer_id: Mapped[int | None] = mapped_column(
        ForeignKey("consumers.id", ondelete="SET NULL"), default=None
    )
    consumer_name: Mapped[str] = mapped_column(String(128))
    endpoint_id: Mapped[int | None] = mapped_column(
        ForeignKey("endpoints.id", ondelete="SET NULL"), default=None, index=True
    )
    endpoint_name: Mapped[str] = mapped_column(String(63))
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), default=None
    )
    # "NAME:V" of the version that answered; role: primary | canary.
    model_label: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16), default="primary")
    route: Mapped[str] = mapped_column(String(32))
    status: Mapped[int] = mapped_column(Integer)
    units: Mapped[float] = mapped_column(Float, default=0.0)
    unit: Mapped[str] = mapped_column(String(16), default="request")
    latency_ms: Mapped[float] = mapped_column(Float)
    cold_start: Mapped[bool] = mapped_column(Boolean, default=False)
    # Charged at ingestion from the consumer's plan then (0 for errors): invoices sum this.
    amount: Mapped[float] = mapped_column(Float, default=0.0)
    currency: Mapped[str] = mapped_column(String(8), default="USD")


class UsageDay(Base):
    """A UTC day's totals of the usage ledger per endpoint, unit and currency, added to in the
    transaction that stores each batch: reports over months (the dashboard's charts) read a
    row per day instead of every record. No latency here: percentiles need the records."""

    __tablename__ = "usage_days"
    __table_args__ = (UniqueConstraint("workspace_id", "day", "endpoint_name", "unit", "currency"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    day: Mapped[date] = mapped_column(Date)
    endpoint_name: Mapped[str] = mapped_column(String(63))
    unit: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(8))
    requests: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    units: Mapped[float] = mapped_column(Float, default=0.0)
    amount: Mapped[float] = mapped_column(Float, default=0.0)
    cold_starts: Mapped[int] = mapped_column(Integer, default=0)


class ShadowRecord(Base):
    """A mirrored request's answer from the shadow version, next to what the primary returned."""

    __tablename__ = "shadow_records"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    endpoint_id: Mapped[int | None] = mapped_column(
        ForeignKey("endpoints.id", ondelete="CASCADE"), default=None, index=True
    )
    endpoint_name: Mapped[str] = mapped_column(String(63))
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    model_label: Mapped[str] = mapped_column(String(200))
    status: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    primary_latency_ms: Mapped[float] = mapped_column(Float)
    primary_status: Mapped[int] = mapped_column(Integer)
    # Truncated JSON texts of both answers, for comparison.
    output: Mapped[str] = mapped_column(Text, default="")
    primary_output: Mapped[str] = mapped_column(Text, default="")


class ResourceUsage(Base):
    """Resource-seconds used by a job attempt or by an endpoint's replicas over an interval."""

    __tablename__ = "resource_usage"
    __table_args__ = (Index("ix_resource_usage_ws_start", "workspace_id", "start"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # job | endpoint
    # The job id or the endpoint name.
    ref: Mapped[str] = mapped_column(String(128), index=True)
    start: Mapped[datetime] = mapped_column(UTCDateTime)
    end: Mapped[datetime] = mapped_column(UTCDateTime)
    replica_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    cpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    accelerator_type: Mapped[str | None] = mapped_column(String(64), default=None)
    memory_gb_seconds: Mapped[float] = mapped_column(Float, default=0.0)
