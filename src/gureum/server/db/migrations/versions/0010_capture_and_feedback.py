"""data flywheel (issue 12): captured calls, consumers' feedback, capture settings

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 10:00:00

Existing endpoints get no capture settings (nothing captured) and existing consumers stay
capturable: capture is off until a team turns it on per endpoint.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gureum.server.db.base import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("capture", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column("capture_dropped", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("consumers") as batch:
        batch.add_column(
            sa.Column("no_capture", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "captured_requests",
        sa.Column("request_id", sa.String(120), primary_key=True),
        sa.Column(
            "workspace_id",
            sa.Integer(),
            sa.ForeignKey("workspaces.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "endpoint_id",
            sa.Integer(),
            sa.ForeignKey("endpoints.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "consumer_id",
            sa.Integer(),
            sa.ForeignKey("consumers.id", ondelete="CASCADE"),
            nullable=True,
        ),
        sa.Column("consumer_name", sa.String(128), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("model_label", sa.String(200), nullable=False),
        sa.Column("route", sa.String(32), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("time", UTCDateTime(timezone=True), nullable=False),
        sa.Column("object", sa.String(64), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("has_inputs", sa.Boolean(), nullable=False),
        sa.Column("has_outputs", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_captured_requests_endpoint_id", "captured_requests", ["endpoint_id"])
    op.create_index("ix_captured_requests_consumer_id", "captured_requests", ["consumer_id"])
    op.create_index("ix_captured_requests_time", "captured_requests", ["time"])
    op.create_index("ix_captured_requests_object", "captured_requests", ["object"])
    op.create_table(
        "captured_blobs",
        sa.Column(
            "request_id",
            sa.String(120),
            sa.ForeignKey("captured_requests.request_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("sha256", sa.String(64), primary_key=True),
    )
    op.create_index("ix_captured_blobs_sha256", "captured_blobs", ["sha256"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "endpoint_id",
            sa.Integer(),
            sa.ForeignKey("endpoints.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("request_id", sa.String(120), nullable=False),
        sa.Column(
            "consumer_id",
            sa.Integer(),
            sa.ForeignKey("consumers.id", ondelete="CASCADE"),
            nullable=True,
        ),
        sa.Column("consumer_name", sa.String(128), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=True),
        sa.Column("label", sa.JSON(), nullable=True),
        sa.Column("target", sa.JSON(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("time", UTCDateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_feedback_endpoint_id", "feedback", ["endpoint_id"])
    op.create_index("ix_feedback_request_id", "feedback", ["request_id"])


def downgrade() -> None:
    op.drop_index("ix_feedback_request_id", table_name="feedback")
    op.drop_index("ix_feedback_endpoint_id", table_name="feedback")
    op.drop_table("feedback")
    op.drop_index("ix_captured_blobs_sha256", table_name="captured_blobs")
    op.drop_table("captured_blobs")
    op.drop_index("ix_captured_requests_object", table_name="captured_requests")
    op.drop_index("ix_captured_requests_time", table_name="captured_requests")
    op.drop_index("ix_captured_requests_consumer_id", table_name="captured_requests")
    op.drop_index("ix_captured_requests_endpoint_id", table_name="captured_requests")
    op.drop_table("captured_requests")
    with op.batch_alter_table("consumers") as batch:
        batch.drop_column("no_capture")
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("capture_dropped")
        batch.drop_column("capture")
