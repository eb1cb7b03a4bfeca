"""The demo's closing chapter: what the story's CPU and GPU hours would have cost on hardware
bought for their peak, against the elastic cloud it ran on (`gureum plan`, in a few lines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gureum.cli.output import Format, console
from gureum.cli.plan import draw_chart
from gureum.client import Client

CHART = "plan.png"


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
