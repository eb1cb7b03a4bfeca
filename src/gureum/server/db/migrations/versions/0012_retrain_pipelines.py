"""retrain pipelines (issue 12): pipelines, their runs, steps and events

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gureum.server.db.base import UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def _time(name: str, nullable: bool = True) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, UTCDateTime(timezone=True), nullable=nullable)


def _user(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.Integer(), sa.ForeignKey("users.id", ondelete="SET NULL"))


def _run_id() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        "run_id",
        sa.Integer(),
        sa.ForeignKey("pipeline_runs.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    )


def upgrade() -> None:
    op.create_table(
        "pipelines",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "workspace_id",
            sa.Integer(),
            sa.ForeignKey("workspaces.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("endpoint_name", sa.String(63), nullable=False),
        sa.Column("dataset_name", sa.String(64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        _time("next_run_at"),
        _time("labels_since", nullable=False),
        _time("last_run_at"),
        sa.Column("run_count", sa.Integer(), nullable=False),
        _user("created_by"),
        _time("created_at", nullable=False),
        sa.UniqueConstraint("workspace_id", "name"),
    )
    op.create_table(
        "pipeline_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "pipeline_id",
            sa.Integer(),
            sa.ForeignKey("pipelines.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(24), nullable=False, index=True),
        sa.Column("trigger", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("step", sa.String(16), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("request", sa.JSON(), nullable=True),
        sa.Column("event_seq", sa.Integer(), nullable=False),
        _user("created_by"),
        _time("created_at", nullable=False),
        _time("finished_at"),
        sa.UniqueConstraint("pipeline_id", "number"),
    )
    op.create_table(
        "pipeline_steps",
        sa.Column("id", sa.Integer(), primary_key=True),
        _run_id(),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        _time("started_at"),
        _time("finished_at"),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.UniqueConstraint("run_id", "name"),
    )
    op.create_table(
        "pipeline_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        _run_id(),
        sa.Column("seq", sa.Integer(), nullable=False),
        _time("time", nullable=False),
        sa.Column("step", sa.String(16), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.UniqueConstraint("run_id", "seq"),
    )


def downgrade() -> None:
    for table in ("pipeline_events", "pipeline_steps", "pipeline_runs", "pipelines"):
        op.drop_table(table)
