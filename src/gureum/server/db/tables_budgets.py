"""Budgets (issue 13): a workspace's monthly compute budget, each job's reservation against it,
and the budget's events (warnings, stops, resumes).

A job's reservation is its maximum cost, taken when it is admitted under a lock of the
workspace's budget row; it is kept in its own table so the jobs table stays the job's.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gureum.server.db.base import Base, UTCDateTime, utcnow


class WorkspaceBudget(Base):
    __tablename__ = "workspace_budgets"

    workspace_id: Mapped[int] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    monthly_limit: Mapped[float | None] = mapped_column(Float, default=None)
    per_job_limit: Mapped[float | None] = mapped_column(Float, default=None)
    # ok | warning | exceeded, as the budget loop last found it (``period`` is its month).
    state: Mapped[str] = mapped_column(String(16), default="ok")
    state_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    period: Mapped[str | None] = mapped_column(String(7), default=None)
    # The month whose 80% warning was emitted: one warning a month, however often it is crossed.
    warned_period: Mapped[str | None] = mapped_column(String(7), default=None)
    spend: Mapped[float] = mapped_column(Float, default=0.0)
    updated_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BudgetEvent(Base):
    __tablename__ = "budget_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workspace_id: Mapped[int] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    period: Mapped[str] = mapped_column(String(7))
    kind: Mapped[str] = mapped_column(String(16))  # set | warning | exceeded | resumed
    spend: Mapped[float] = mapped_column(Float)
    monthly_limit: Mapped[float | None] = mapped_column(Float, default=None)
    message: Mapped[str] = mapped_column(Text)


class JobBudget(Base):
    """A job's reservation: its maximum cost, enforced as its time limit."""

    __tablename__ = "job_budgets"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    workspace_id: Mapped[int] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    period: Mapped[str] = mapped_column(String(7))
    reserved: Mapped[float] = mapped_column(Float)
    hourly_price: Mapped[float] = mapped_column(Float)
    # Set while the job waits, stopped with its checkpoint kept, for the budget to be raised.
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
