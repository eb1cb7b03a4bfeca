"""`gureum usage | invoices | costs`: what consumers used and paid, and what it all cost."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from gureum.cli.budgets import render_budget
from gureum.cli.output import Format, OutputOpt, api_errors, console, emit, fail, kv_table, table
from gureum.client import Client

USAGE_COLUMNS = ("requests", "errors", "units", "amount", "p50 ms", "p95 ms")
JOB_COLUMNS = ("job", "cpu_hours", "gpu_hours", "accelerator_type", "memory_gb_hours", "cost")
ENDPOINT_COLUMNS = (
    "endpoint", "replica_hours", "cpu_hours", "gpu_hours", "requests", "cost", "revenue", "margin"
)  # fmt: skip
LINE_COLUMNS = (
    "endpoint", "requests", "errors", "units", "unit", "price_per_request", "price_per_unit",
    "amount",
)  # fmt: skip

PeriodOpt = Annotated[
    str | None, typer.Option("--period", help="a month, YYYY-MM (default: this month, UTC)")
]


def _client() -> Client:
    return Client()


def _when(text: str | None, option: str, output: Format) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        fail(
            f"{option} {text!r} is not a date (YYYY-MM-DD) or ISO time", output, "invalid_option", 2
        )


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()}


def _usage_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        **row,
        "units": f"{row['units']:g} {row['unit']}",
        "amount": f"{row['amount']:.4g} {row['currency']}",
        "p50 ms": f"{row['latency_p50_ms']:.1f}",
        "p95 ms": f"{row['latency_p95_ms']:.1f}",
    }


def usage(
    consumer: Annotated[str | None, typer.Option("--consumer", help="only this consumer")] = None,
    endpoint: Annotated[str | None, typer.Option("--endpoint", help="only this endpoint")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="from this date/time, UTC (default: 30 days ago)")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="up to this date/time, UTC (default: now)")
    ] = None,
    group_by: Annotated[
        str, typer.Option("--group-by", help="any of consumer,endpoint,day, comma-separated")
    ] = "consumer,endpoint,day",
    output: OutputOpt = Format.table,
) -> None:
    """Requests, errors, units, charges and latency of your endpoints' consumers."""
    start, end = _when(since, "--since", output), _when(until, "--until", output)
    with api_errors(output), _client() as c:
        report = c.usage.report(
            consumer=consumer, endpoint=endpoint, since=start, until=end, group_by=group_by
        )
    data = report.model_dump(mode="json")

    def render(_: Any) -> None:
        columns = (*report.group_by, *USAGE_COLUMNS)
        console.print(table([_usage_row(r) for r in data["rows"]], columns))
        console.print(f"{data['since'][:19]} .. {data['until'][:19]} UTC", style="dim")

    emit(data, output, render)


def invoices(
    period: PeriodOpt = None,
    consumer: Annotated[str | None, typer.Option("--consumer", help="only this consumer")] = None,
    csv: Annotated[
        Path | None,
        typer.Option("--csv", help="also write them as CSV to this file (-: only CSV, to stdout)"),
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Per-consumer invoices for a month: one line per endpoint, and the total."""
    with api_errors(output), _client() as c:
        result = c.invoices.list(period, consumer)
        text = c.invoices.csv(result.period, consumer) if csv is not None else ""
        if csv is not None and str(csv) == "-":
            sys.stdout.write(text)
            return
        if csv is not None:
            csv.write_text(text)
    data = result.model_dump(mode="json")

    def render(_: Any) -> None:
        if not data["invoices"]:
            console.print(f"no invoices for {data['period']}")
        for inv in data["invoices"]:
            head = Table.grid(padding=(0, 2))
            head.add_row(f"[bold]{inv['consumer']}[/bold]", f"plan {inv['plan'] or '-'}")
            console.print(head)
            console.print(table([_rounded(line) for line in inv["lines"]], LINE_COLUMNS))
            console.print(
                f"  total {inv['total']:.2f} {inv['currency']} for {inv['requests']} requests"
                f" in {inv['period']}\n"
            )
        if csv is not None:
            console.print(f"wrote {csv}", style="dim")

    emit(data, output, render)


def costs(period: PeriodOpt = None, output: OutputOpt = Format.table) -> None:
    """Compute and storage cost of a month per job and endpoint, with revenue and margin;
    this month's also shows the budget (spend, percent, state, endpoints held at minimum)."""
    with api_errors(output), _client() as c:
        report = c.costs.report(period)
    data = report.model_dump(mode="json")

    def render(_: Any) -> None:
        currency = data["prices"]["currency"]
        console.print(f"[bold]{data['workspace']}[/bold] in {data['period']} ({currency})")
        if data["jobs"]:
            console.print(table([_rounded(j) for j in data["jobs"]], JOB_COLUMNS))
        if data["endpoints"]:
            console.print(table([_rounded(e) for e in data["endpoints"]], ENDPOINT_COLUMNS))
        storage = data["storage"]
        totals = {k: v for k, v in data["totals"].items() if k != "other_revenue"}
        totals["storage_gb_months"] = storage["gb_months"]
        if data["totals"]["other_revenue"]:
            totals["other_revenue"] = data["totals"]["other_revenue"]
        console.print(kv_table(_rounded(totals)))
        if data.get("budget"):
            render_budget(data["budget"])

    emit(data, output, render)


def register(app: typer.Typer) -> None:
    app.command("usage")(usage)
    app.command("invoices")(invoices)
    app.command("costs")(costs)
