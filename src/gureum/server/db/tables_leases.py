"""Leader election (issue 13): one row per lease, the controllers' among them.

``epoch`` grows by one at every change of holder; the leader's controller writes check it
(``server.leader.Leadership.fence``), so a deposed leader's late write is refused. Times are
seconds since the Unix epoch by the database's clock, so servers with skewed clocks agree.
"""

from __future__ import annotations

from sqlalchemy import Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from gureum.server.db.base import Base


class ControllerLease(Base):
    __tablename__ = "controller_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128), default=None)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    renewed_at: Mapped[float] = mapped_column(Float, default=0.0)
    expires_at: Mapped[float] = mapped_column(Float, default=0.0)
