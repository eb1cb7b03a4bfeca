"""one pool (issue 13): each workspace's guaranteed share of the pool; what its jobs hold
beyond it is borrowed and preempted first

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.add_column(sa.Column("share_cpus", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("share_gpus", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.drop_column("share_gpus")
        batch_op.drop_column("share_cpus")
