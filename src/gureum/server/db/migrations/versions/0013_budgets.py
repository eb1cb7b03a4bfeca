"""budgets (issue 13): a monthly compute budget per workspace, job reservations, events

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 09:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gureum.server.db.base import UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def _time(name: str, nullable: bool = True) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, UTCDateTime(timezone=True), nullable=nullable)


def _workspace(primary_key: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        "workspace_id",
        sa.Integer(),
        sa.ForeignKey("workspaces.id", ondelete="CASCADE"),
        nullable=False,
        primary_key=primary_key,
        index=not primary_key,
    )


def upgrade() -> None:
    op.create_table(
        "workspace_budgets",
        _workspace(primary_key=True),
        sa.Column("monthly_limit", sa.Float(), nullable=True),
        sa.Column("per_job_limit", sa.Float(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        _time("state_changed_at", nullable=False),
        sa.Column("period", sa.String(7), nullable=True),
        sa.Column("warned_period", sa.String(7), nullable=True),
        sa.Column("spend", sa.Float(), nullable=False),
        sa.Column("updated_by", sa.Integer(), sa.ForeignKey("users.id", ondelete="SET NULL")),
        _time("updated_at", nullable=False),
    )
    op.create_table(
        "budget_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        _workspace(),
        _time("time", nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("spend", sa.Float(), nullable=False),
        sa.Column("monthly_limit", sa.Float(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
    )
    op.create_table(
        "job_budgets",
        sa.Column(
            "job_id",
            sa.String(32),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        _workspace(),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("reserved", sa.Float(), nullable=False),
        sa.Column("hourly_price", sa.Float(), nullable=False),
        _time("paused_at"),
        _time("created_at", nullable=False),
    )


def downgrade() -> None:
    for table in ("job_budgets", "budget_events", "workspace_budgets"):
        op.drop_table(table)
