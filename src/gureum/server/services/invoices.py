"""Invoices: per consumer and calendar month (UTC), one line per endpoint, from the ledger.

Amounts are what ingestion charged (the plan's prices when each request was served), so an
invoice of a closed month never changes when a plan does; the unit prices shown on a line are
the plan's current ones, for reference. Every enabled consumer gets an invoice (zero when it
used nothing), a disabled one only when it has usage in the period.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import select

from gureum.schemas.consumers import Invoice, InvoiceLine, InvoiceList
from gureum.server.auth import Principal
from gureum.server.db.session import Database
from gureum.server.db.tables_serving import Consumer, Plan
from gureum.server.errors import NotFound
from gureum.server.services.usage import period_bounds, scan

CSV_COLUMNS = (
    "consumer",
    "period",
    "plan",
    "currency",
    "endpoint",
    "requests",
    "errors",
    "units",
    "unit",
    "price_per_request",
    "price_per_unit",
    "amount",
    "invoice_requests",
    "invoice_total",
)


@dataclass
class _Line:
    requests: int = 0
    errors: int = 0
    units: float = 0.0
    amount: float = 0.0


def invoices(
    db: Database, principal: Principal, period: str, consumer: str | None = None
) -> InvoiceList:
    principal.require("viewer")
    start, end = period_bounds(period)
    ws = principal.workspace_id
    # (consumer, currency) -> (endpoint, unit) -> totals
    ledger: dict[tuple[str, str], dict[tuple[str, str], _Line]] = defaultdict(dict)
    with db.read() as s:
        stmt = select(Consumer.name, Consumer.disabled, Consumer.created_at, Plan).join(
            Plan, Plan.id == Consumer.plan_id
        )
        stmt = stmt.where(Consumer.workspace_id == ws)
        if consumer is not None:
            stmt = stmt.where(Consumer.name == consumer)
        plans = {
            name: (disabled, created, plan) for name, disabled, created, plan in s.execute(stmt)
        }
        for r in scan(s, ws, start, end, consumer, consumers_only=True):
            lines = ledger[(r.consumer_name, r.currency)]
            line = lines.get((r.endpoint_name, r.unit))
            if line is None:
                line = lines[(r.endpoint_name, r.unit)] = _Line()
            if r.status >= 400:
                line.errors += 1
            else:
                line.requests += 1
                line.units += r.units
            line.amount += r.amount
    if consumer is not None and consumer not in plans and not ledger:
        raise NotFound(f"consumer '{consumer}' not found")
    billed = {c for c, _ in ledger}
    for name, (disabled, created, current) in plans.items():
        if not disabled and created < end and name not in billed:
            ledger[(name, current.currency)] = {}
    out: list[Invoice] = []
    for (name, currency), lines in sorted(ledger.items()):
        plan = plans[name][2] if name in plans else None
        items = [
            InvoiceLine(
                endpoint=endpoint,
                requests=line.requests,
                errors=line.errors,
                units=line.units,
                unit=unit,
                price_per_request=plan.price_per_request if plan else 0.0,
                price_per_unit=plan.price_per_unit if plan else 0.0,
                amount=round(line.amount, 6),
            )
            for (endpoint, unit), line in sorted(lines.items())
        ]
        out.append(
            Invoice(
                consumer=name,
                period=period,
                plan=plan.name if plan else None,
                currency=currency,
                lines=items,
                requests=sum(i.requests for i in items),
                total=round(sum(line.amount for line in lines.values()), 6),
            )
        )
    return InvoiceList(period=period, invoices=out)


def to_csv(invoice_list: InvoiceList) -> str:
    """One row per invoice line, with the invoice's consumer, period and totals on each; an
    invoice without lines still has one row (no endpoint, zero amounts)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for inv in invoice_list.invoices:
        head = [inv.consumer, inv.period, inv.plan or "", inv.currency]
        tail = [inv.requests, inv.total]
        if not inv.lines:
            writer.writerow([*head, "", 0, 0, 0, "", "", "", 0, *tail])
        for line in inv.lines:
            writer.writerow(
                [
                    *head,
                    line.endpoint,
                    line.requests,
                    line.errors,
                    line.units,
                    line.unit,
                    line.price_per_request,
                    line.price_per_unit,
                    line.amount,
                    *tail,
                ]
            )
    return buf.getvalue()
