"""Table models of the control plane. Request/response shapes live in gureum.schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from gureum.server.db.base import Base, UTCDateTime, utcnow


class Workspace(Base):
    __tablename__ = "workspaces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # Ceilings the job queue holds this workspace's jobs against; None is no limit.
    max_cpus: Mapped[float | None] = mapped_column(Float, default=None)
    max_gpus: Mapped[float | None] = mapped_column(Float, default=None)
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer, default=None)
    # Bytes the workspace's datasets, models and job outputs may hold (None: no limit).
    max_storage_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # Its guaranteed share of the pool (services.preemption.Share); what its running jobs hold
    # beyond it is borrowed, and preempted first. None: no guarantee.
    share_cpus: Mapped[float | None] = mapped_column(Float, default=None)
    share_gpus: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(256), default=None)
    # Site admins create workspaces; everything else is per-workspace roles.
    is_site_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "workspace_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    workspace_id: Mapped[int] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Public half of the key (shown in lists); the secret half is stored only as a hash.
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(128), default="")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    workspace_id: Mapped[int] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # May call the workspace's endpoints (rate-limited and metered like a consumer); off unless
    # asked for at creation (developer keys and above only).
    data_plane: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workspace_id: Mapped[int | None] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True, default=None
    )
    actor_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    actor_key_id: Mapped[str | None] = mapped_column(String(32), default=None)
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(256))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workspace_id: Mapped[int] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="")
    # Counter bumped atomically (UPDATE ... RETURNING) so concurrent pushes get distinct versions.
    version_counter: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DatasetVersion(Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    file_count: Mapped[int] = mapped_column(Integer)
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    schema_: Mapped[dict[str, Any]] = mapped_column("schema", JSON, default=dict)
    split: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    preview: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    message: Mapped[str] = mapped_column(Text, default="")
    # Lineage of a version the platform made (a curation); None for a push.
    source: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None, nullable=True)
    pushed_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DatasetFile(Base):
    __tablename__ = "dataset_files"
    __table_args__ = (UniqueConstraint("version_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="CASCADE"), index=True
    )
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(String(256), default=None)
    split: Mapped[str] = mapped_column(String(16))


class DatasetReference(Base):
    """Something (a job, a model) that uses a dataset version; while one exists it can't go."""

    __tablename__ = "dataset_references"
    __table_args__ = (UniqueConstraint("version_id", "referrer_type", "referrer_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="RESTRICT"), index=True
    )
    referrer_type: Mapped[str] = mapped_column(String(32))
    referrer_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Model(Base):
    """A registered model: its versions, and the gates a version must pass to reach production."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workspace_id: Mapped[int] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="")
    # [{metric, op, threshold}, ...] every production candidate must pass.
    gates: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # {metric, higher_is_better} when a candidate must beat the production version; else None.
    must_beat_production: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Bumped atomically (UPDATE ... RETURNING), as for datasets.
    version_counter: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(16), default="none", index=True)
    format: Mapped[str] = mapped_column(String(16))
    recipe: Mapped[str | None] = mapped_column(String(64), default=None)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Lineage: what it was trained on and by what.
    dataset_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="RESTRICT"), index=True, default=None
    )
    job_id: Mapped[str | None] = mapped_column(String(64), default=None)
    code_hash: Mapped[str | None] = mapped_column(String(128), default=None)
    # Set by the server only when a job registers the version (never by a caller); only the
    # files of a built-in recipe's job may be unpickled, and only its metrics are "measured".
    registered_by_job: Mapped[bool] = mapped_column(Boolean, default=False)
    platform_written: Mapped[bool] = mapped_column(Boolean, default=False)
    metrics_source: Mapped[str] = mapped_column(String(16), default="reported")
    file_count: Mapped[int] = mapped_column(Integer)
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    message: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    stage_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class ModelFile(Base):
    __tablename__ = "model_files"
    __table_args__ = (UniqueConstraint("version_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)


class Job(Base):
    """A train, evaluate or batch-predict run; its Ray work is found again by ``id``/``attempt``."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_queue", "state", "priority", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    workspace_id: Mapped[int] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    recipe: Mapped[str] = mapped_column(String(64))
    dataset_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="SET NULL"), default=None
    )
    dataset_label: Mapped[str | None] = mapped_column(String(200), default=None)
    # train: the model name to register under; evaluate/predict: the "NAME:V" used.
    model_label: Mapped[str | None] = mapped_column(String(200), default=None)
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), default=None
    )
    # train: the "NAME:V" registered from this job.
    output_version: Mapped[str | None] = mapped_column(String(200), default=None)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    code: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    code_hash: Mapped[str | None] = mapped_column(String(128), default=None)
    resources: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    workers: Mapped[int] = mapped_column(Integer, default=1)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer, default=0)
    timeout_s: Mapped[float | None] = mapped_column(Float, default=None)
    # An endpoint short of room may stop it (queued again, checkpoint kept); false: admins.
    preemptible: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # A preempted job waits until then: the room it left is the replica's to take first.
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    wait_reason: Mapped[str | None] = mapped_column(Text, default=None)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # Set by a cancel or a timeout; the controller stops the Ray work and settles the state.
    stop_state: Mapped[str | None] = mapped_column(String(16), default=None)
    stop_reason: Mapped[str | None] = mapped_column(Text, default=None)
    # Last report of the running attempt already stored (reports are delivered at least once).
    report_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    event_seq: Mapped[int] = mapped_column(Integer, default=0)
    metric_seq: Mapped[int] = mapped_column(Integer, default=0)
    log_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (UniqueConstraint("job_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class JobMetric(Base):
    __tablename__ = "job_metrics"
    __table_args__ = (UniqueConstraint("job_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int | None] = mapped_column(Integer, default=None)
    time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    values: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)


class JobLog(Base):
    """A chunk of a job's log; ``offset`` is its first byte in the whole log (UTF-8)."""

    __tablename__ = "job_logs"
    __table_args__ = (UniqueConstraint("job_id", "offset"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    offset: Mapped[int] = mapped_column(BigInteger)
    text: Mapped[str] = mapped_column(Text)


class JobOutput(Base):
    """A file a job produced, stored as a blob of the workspace (kept from garbage collection)."""

    __tablename__ = "job_outputs"
    __table_args__ = (UniqueConstraint("job_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)


# The serving side's tables (captured calls and feedback in tables_capture, retrain pipelines
# in tables_pipelines) live in their own modules; importing them here registers them with
# Base.metadata wherever the tables are imported (migrations, tests, the server).
from gureum.server.db import tables_budgets as tables_budgets  # noqa: E402
from gureum.server.db import tables_capture as tables_capture  # noqa: E402
from gureum.server.db import tables_leases as tables_leases  # noqa: E402
from gureum.server.db import tables_pipelines as tables_pipelines  # noqa: E402
from gureum.server.db import tables_serving as tables_serving  # noqa: E402
from gureum.server.db import tables_web as tables_web  # noqa: E402
