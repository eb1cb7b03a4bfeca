"""SDK for usage reports, invoices and compute cost."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from gureum.client.base import Transport
from gureum.schemas.consumers import CostReport, InvoiceList, UsageReport


def _when(value: date | datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.isoformat()


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class _API:
    def __init__(self, t: Transport) -> None:
        self._t = t


class UsageAPI(_API):
    def report(
        self,
        *,
        consumer: str | None = None,
        endpoint: str | None = None,
        since: date | datetime | str | None = None,
        until: date | datetime | str | None = None,
        group_by: str | list[str] | None = None,
    ) -> UsageReport:
        """Usage grouped by any of consumer, endpoint, day (default all three); without
        ``since``, the 30 days before ``until`` (default now). Times are UTC."""
        groups = ",".join(group_by) if isinstance(group_by, list) else group_by
        params = _params(
            consumer=consumer,
            endpoint=endpoint,
            since=_when(since),
            until=_when(until),
            group_by=groups,
        )
        return UsageReport.model_validate(self._t.json("GET", "/v1/usage", params=params))


class InvoicesAPI(_API):
    def list(self, period: str | None = None, consumer: str | None = None) -> InvoiceList:
        """One invoice per consumer for ``period`` (YYYY-MM, default this month, UTC)."""
        params = _params(period=period, consumer=consumer)
        return InvoiceList.model_validate(self._t.json("GET", "/v1/invoices", params=params))

    def csv(self, period: str | None = None, consumer: str | None = None) -> str:
        """The same invoices as CSV: one row per invoice line, with the invoice's totals."""
        params = _params(period=period, consumer=consumer, format="csv")
        return self._t.request("GET", "/v1/invoices", params=params).text


class CostsAPI(_API):
    def report(self, period: str | None = None) -> CostReport:
        """Cost of jobs, endpoints (with revenue and margin) and storage for a month."""
        params = _params(period=period)
        return CostReport.model_validate(self._t.json("GET", "/v1/costs", params=params))
