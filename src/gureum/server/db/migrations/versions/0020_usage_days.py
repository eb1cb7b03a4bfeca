"""dashboard at scale (issue 14): per-day usage totals kept at ingestion, filled from the
records already stored, and an index for one endpoint's records

Revision ID: 0020
Revises: 0018
Create Date: 2026-12-04 17:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_days",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("endpoint_name", sa.String(length=63), nullable=False),
        sa.Column("unit", sa.String(length=16), nullable=False),
        sa.Column("currency", sa.String(length=8), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("units", sa.Float(), nullable=False),
        sa.Column("amount", sa.Float(), nullable=False),
        sa.Column("cold_starts", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_usage_days_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_days")),
        sa.UniqueConstraint(
            "workspace_id",
            "day",
            "endpoint_name",
            "unit",
            "currency",
            name=op.f("uq_usage_days_workspace_id"),
        ),
    )
    op.create_index(
        "ix_usage_ws_endpoint_time",
        "usage_records",
        ["workspace_id", "endpoint_name", "time"],
        unique=False,
    )
    # The records already stored: SQLite keeps UTC timestamps as text whose first ten
    # characters are the day; PostgreSQL converts.
    columns = "workspace_id time endpoint_name unit currency status units amount cold_start"
    records = sa.table("usage_records", *[sa.column(name) for name in columns.split()])
    r = records.c
    postgres = op.get_bind().dialect.name == "postgresql"
    day = (
        sa.func.date(sa.func.timezone("UTC", r.time)) if postgres else sa.func.substr(r.time, 1, 10)
    )
    keys = [r.workspace_id, day, r.endpoint_name, r.unit, r.currency]
    totals = sa.select(
        *keys,
        sa.func.count(),
        sa.func.sum(sa.case((r.status >= 400, 1), else_=0)),
        sa.func.sum(r.units),
        sa.func.sum(r.amount),
        sa.func.sum(sa.case((r.cold_start, 1), else_=0)),
    ).group_by(*keys)
    names = ["workspace_id", "day", "endpoint_name", "unit", "currency", "requests", "errors"]
    names += ["units", "amount", "cold_starts"]
    days = sa.table("usage_days", *[sa.column(name) for name in names])
    op.execute(days.insert().from_select(names, totals))


def downgrade() -> None:
    op.drop_index("ix_usage_ws_endpoint_time", table_name="usage_records")
    op.drop_table("usage_days")
