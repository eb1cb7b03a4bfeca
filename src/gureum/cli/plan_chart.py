"""`gureum plan --chart`: demand hour by hour (what elastic cloud provisions) against the fleet
bought for its peak (nothing until its lead time is over), one panel per resource, as a PNG."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit

from matplotlib.figure import Figure

from gureum.schemas.planner import PlanReport


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def draw(report: PlanReport, path: Path) -> Path:
    """Write the chart to ``path`` (PNG) and return it."""
    c, series = report.comparison, report.series
    # One more point at the end, so that the last hour is drawn as wide as the others.
    hours = [series.start + timedelta(hours=i) for i in range(series.hours + 1)]
    panels: list[tuple[str, list[float], int]] = [
        (name, values, size)
        for name, values, size in (
            ("CPUs", [*series.cpus, series.cpus[-1]], c.fleet.cpus),
            ("GPUs", [*series.gpus, series.gpus[-1]], c.fleet.gpus),
        )
        if size > 0
    ]
    fig = Figure(figsize=(10, 1.2 + 2.6 * len(panels)), dpi=100, layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    usable = c.fleet.usable_from
    # The months the fleet is on order: the cloud serves them.
    lead_end = usable or report.end
    for ax, (name, values, size) in zip(axes, panels, strict=True):
        ax.fill_between(
            hours, values, step="post", alpha=0.45, color="tab:blue", label="demand = cloud"
        )
        ax.step(hours, values, where="post", color="tab:blue", linewidth=0.6)
        fleet = [size if usable is not None and h >= usable else 0 for h in hours]
        ax.step(hours, fleet, where="post", color="tab:red", linewidth=1.6, label="fleet")
        if lead_end > series.start:
            ax.axvspan(series.start, lead_end, color="grey", alpha=0.15, label="fleet on order")
        ax.set_ylabel(name)
        ax.set_ylim(0, size * 1.15)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("hour (UTC)")
    cur = report.prices.currency
    fig.suptitle(
        f"{report.workspace}, {c.hours} h: cloud {c.cloud.total:,.2f} {cur}, fleet "
        f"{c.fleet.total:,.2f} {cur} ({c.cheaper} cheaper); a year at this load: "
        f"utilisation {_percent(c.utilisation)}, break-even "
        f"{_percent(c.break_even_utilisation)} ({c.cheaper_per_year} cheaper)",
        fontsize=10,
    )
    fig.savefig(path, format="png")
    return path
