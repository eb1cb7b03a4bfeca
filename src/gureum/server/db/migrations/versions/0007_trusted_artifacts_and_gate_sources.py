"""registry (issue 10): platform-written marks, metric sources, gate audit

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 11:45:00

Existing versions are marked platform-written (and their metrics measured) only when they name
a train job of their own workspace that succeeded and ran a built-in recipe (not a script):
before this revision the registry let a caller claim any ``job_id``, so that is the most the
rows can prove. Everything else becomes "reported" and is never unpickled.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(
            sa.Column("registered_by_job", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("platform_written", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column(
                "metrics_source", sa.String(length=16), nullable=False, server_default="reported"
            )
        )
    op.execute(
        """
        UPDATE model_versions SET registered_by_job = true
        WHERE job_id IS NOT NULL AND EXISTS (
            SELECT 1 FROM jobs, models
            WHERE jobs.id = model_versions.job_id
              AND models.id = model_versions.model_id
              AND jobs.workspace_id = models.workspace_id
              AND jobs.kind = 'train' AND jobs.state = 'succeeded'
        )
        """
    )
    op.execute(
        """
        UPDATE model_versions SET platform_written = true, metrics_source = 'measured'
        WHERE registered_by_job AND EXISTS (
            SELECT 1 FROM jobs WHERE jobs.id = model_versions.job_id AND jobs.recipe <> 'script'
        )
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("metrics_source")
        batch.drop_column("platform_written")
        batch.drop_column("registered_by_job")
