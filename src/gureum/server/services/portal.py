"""What a consumer sees of itself in the portal: usage, invoices and limits.

The numbers come from the same services the members' API uses (the usage report, invoices,
the quota count the data plane leases against), asked as a read-only stand-in principal of
the consumer's workspace and always filtered to that one consumer, so the portal and the
team's own reports never disagree and the portal has no reporting logic of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from gureum.schemas.consumers import InvoiceList, PlanOut, UsageReport
from gureum.server.auth import Principal
from gureum.server.db.session import Database
from gureum.server.db.tables_serving import Consumer, Plan
from gureum.server.portal_sessions import PortalConsumer
from gureum.server.services import invoices, usage
from gureum.server.services.consumers import _used_this_month, month_start, plan_out

USAGE_DAYS = 30


class Limits(BaseModel):
    consumer: str
    plan: PlanOut
    period: str
    used_this_month: int
    left_this_month: int | None
    quota_resets_at: datetime


class KeyRotated(BaseModel):
    consumer: str
    key_id: str
    token: str


def _reader(who: PortalConsumer) -> Principal:
    """A viewer of the consumer's workspace that only this module holds, and only ever asks
    about ``who`` (every call below passes ``consumer=who.name``)."""
    return Principal(
        user_id=0,
        user_name=f"consumer:{who.name}",
        workspace_id=who.workspace_id,
        workspace_name="",
        role="viewer",
        key_id=who.key_id,
    )


def usage_report(db: Database, who: PortalConsumer, days: int = USAGE_DAYS) -> UsageReport:
    """Requests, units and cost by endpoint and day over the last ``days`` days."""
    since = datetime.now(UTC) - timedelta(days=days)
    return usage.report(db, _reader(who), consumer=who.name, since=since, group_by="endpoint,day")


def invoice_list(db: Database, who: PortalConsumer, period: str | None) -> InvoiceList:
    return invoices.invoices(db, _reader(who), period or usage.current_period(), who.name)


def limits(db: Database, who: PortalConsumer) -> Limits:
    with db.read() as s:
        consumer = s.get(Consumer, who.consumer_id)
        assert consumer is not None  # the session was checked against it just now
        plan = s.get(Plan, consumer.plan_id)
        assert plan is not None  # a RESTRICT foreign key
        used = _used_this_month(s, consumer.id)
        out = plan_out(plan)
    start = month_start()
    resets = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    left = None if out.monthly_quota is None else max(0, out.monthly_quota - used)
    return Limits(
        consumer=who.name,
        plan=out,
        period=start.strftime("%Y-%m"),
        used_this_month=used,
        left_this_month=left,
        quota_resets_at=resets,
    )
