"""metering (issue 10): workspace keys for the data plane, quota leases

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 11:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gureum.server.db.base

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("data_plane", sa.Boolean(), nullable=False, server_default=sa.false())
        )

    op.create_table(
        "quota_leases",
        sa.Column("consumer_id", sa.Integer(), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("leased", sa.Integer(), nullable=False),
        sa.Column("updated_at", gureum.server.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["consumer_id"],
            ["consumers.id"],
            name=op.f("fk_quota_leases_consumer_id_consumers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("consumer_id", "period", name=op.f("pk_quota_leases")),
    )


def downgrade() -> None:
    op.drop_table("quota_leases")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("data_plane")
