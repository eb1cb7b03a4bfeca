"""controller leases (issue 13): one leader per database runs the controllers

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    leases = op.create_table(
        "controller_leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("renewed_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.bulk_insert(
        leases,
        [{"name": "controllers", "holder": None, "epoch": 0, "renewed_at": 0.0, "expires_at": 0.0}],
    )


def downgrade() -> None:
    op.drop_table("controller_leases")
