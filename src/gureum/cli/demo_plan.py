"""The demo's money: the workspace's budget (set early, as `gureum budgets set WS --monthly 50
--per-job 5` would, unless the team set one) and, closing the story, the month's spend against
it and what the story's CPU and GPU hours would have cost on hardware bought for their peak,
against the elastic cloud it ran on (`gureum plan`, in a few lines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gureum.cli.output import Format, console
from gureum.cli.plan import draw_chart
from gureum.client import Client
from gureum.schemas.budgets import BudgetOut

CHART = "plan.png"
# A small team's month of compute and the most one job may cost (the example).
MONTHLY_BUDGET = 50.0
PER_JOB_BUDGET = 5.0


def ensure_budget(client: Client, output: Format) -> BudgetOut:
    """The workspace's budget: a team's own is kept; without one the demo sets its own, so
    every job it starts is admitted against a reservation and enforced by its time limit."""
    workspace = str(client.whoami()["workspace"])
    budget = client.budgets.get(workspace)
    kept = budget.monthly is not None or budget.per_job is not None
    if not kept:
        budget = client.budgets.set(workspace, monthly=MONTHLY_BUDGET, per_job=PER_JOB_BUDGET)
    if output is Format.table:
        console.print(
            f"workspace [bold]{workspace}[/bold]: {_limit(budget.monthly)} {budget.currency} a "
            f"month, {_limit(budget.per_job)} {budget.currency} at most per job "
            f"({'already set: kept' if kept else 'set by the demo'}); warned at 80%, "
            "new jobs refused and running ones paused at 100% (`gureum budgets`)",
            soft_wrap=True,
        )
    return budget


def budget_summary(client: Client, output: Format) -> dict[str, Any]:
    """This month's spend against the budget, now that the story ran."""
    workspace = str(client.whoami()["workspace"])
    b = client.budgets.get(workspace)
    if output is Format.table:
        share = f" ({b.percent:.2f}% of it)" if b.percent is not None else ""
        console.print(
            f"budget {b.period}: spent {b.spend:.4g} {b.currency}{share} of "
            f"{_limit(b.monthly)}; reserved for unfinished jobs {b.reserved:.4g}; state "
            f"[bold]{b.state}[/bold]",
            soft_wrap=True,
        )
    return {
        "workspace": b.workspace,
        "monthly": b.monthly,
        "per_job": b.per_job,
        "spend": b.spend,
        "percent": b.percent,
        "state": b.state,
    }


def _limit(value: float | None) -> str:
    return "no limit" if value is None else f"{value:g}"


def plan_summary(client: Client, workdir: Path, output: Format) -> dict[str, Any]:
    """Replay the workspace's recorded usage, print the verdict, draw the chart."""
    report = client.planner.replay()
    chart = draw_chart(report, workdir / CHART)
    c, cur = report.comparison, report.prices.currency
    fleet = c.fleet
    if output is Format.table:
        break_even = c.break_even_utilisation
        console.print(
            f"{c.hours} hours replayed: the cloud cost {c.cloud.total:.4g} {cur}; a fleet for "
            f"the peak ({fleet.cpus} CPUs, {fleet.gpus} GPUs, {fleet.purchase:,.0f} {cur}, "
            f"{report.prices.lead_time_months:g} months to arrive) {fleet.total:.4g} {cur}: "
            f"{c.cheaper} is cheaper",
            soft_wrap=True,
        )
        console.print(
            f"a year at this load: cloud {c.cloud.per_year:,.2f} {cur}, fleet "
            f"{fleet.per_year:,.2f} {cur}; utilisation {c.utilisation:.1%}, break-even "
            + (f"{break_even:.1%}" if break_even is not None else "-")
            + f": [bold]{c.cheaper_per_year}[/bold] is cheaper",
            soft_wrap=True,
        )
        console.print(f"chart: {chart}; `gureum plan --help` for prices", soft_wrap=True)
    return {
        "hours": c.hours,
        "cheaper": c.cheaper,
        "cheaper_per_year": c.cheaper_per_year,
        "utilisation": c.utilisation,
        "break_even_utilisation": c.break_even_utilisation,
        "cloud": c.cloud.model_dump(mode="json"),
        "fleet": fleet.model_dump(mode="json"),
        "chart": str(chart),
    }
