"""`gureum plan`: what the recorded usage (or a CSV trace) costs on elastic cloud and on a
fleet bought for its peak, the break-even utilisation, and a chart of both.

Bad input (a malformed trace, a bad period or price, no recorded usage) exits 2, as a usage
error does; a server that cannot be reached exits 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gureum.cli.output import Format, OutputOpt, api_errors, console, emit, fail, kv_table, table
from gureum.client import Client
from gureum.client.errors import BadRequestError, NotFoundError
from gureum.client.planner import TraceError
from gureum.schemas.planner import MAX_MONTHS, PlanReport, PriceOverrides

BAD_INPUT = 2


def _price(*flags: str, help: str, low: float = 0, high: float = 1e9) -> Any:
    """A price option, bounded as the API bounds it (so a bad one is a usage error, exit 2)."""
    return typer.Option(*flags, help=help, min=low, max=high, rich_help_panel="Prices")


def _pct(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if value <= 1 else f"{value:.0%} (owning never pays)"


def _money(value: float, currency: str) -> str:
    return f"{value:,.2f} {currency}"


def render(report: PlanReport, chart: Path | None) -> None:
    c, cur, p = report.comparison, report.prices.currency, report.prices
    what = "recorded usage" if report.source == "recorded" else "the trace"
    console.print(
        f"[bold]{report.workspace}[/bold]: {what} from {report.start:%Y-%m-%d %H:%M} to "
        f"{report.end:%Y-%m-%d %H:%M} UTC ({c.hours} hours); demand peaks at {c.peak_cpus:g} "
        f"CPUs and {c.peak_gpus:g} GPUs, mean {c.mean_cpus:.3g} CPUs and {c.mean_gpus:.3g} GPUs",
        soft_wrap=True,
    )
    fleet = c.fleet
    usable = f"{fleet.usable_from:%Y-%m-%d}" if fleet.usable_from else "after the replay"
    rows = [
        ("size", "follows demand", f"{fleet.cpus} CPUs, {fleet.gpus} GPUs"),
        ("purchase", "-", _money(fleet.purchase, cur)),
        ("serves from", report.start.strftime("%Y-%m-%d"), usable),
        ("on-demand", _money(c.cloud.on_demand, cur), "-"),
        ("spot (jobs)", _money(c.cloud.spot, cur), "-"),
        (
            f"cloud, first {p.lead_time_months:g} months",
            "-",
            _money(fleet.cloud_during_lead_time, cur),
        ),
        (f"amortised over {p.amortisation_years:g} years", "-", _money(fleet.amortisation, cur)),
        ("power", "-", _money(fleet.power, cur)),
        ("replay total", _money(c.cloud.total, cur), _money(fleet.total, cur)),
        ("a year at this load", _money(c.cloud.per_year, cur), _money(fleet.per_year, cur)),
    ]
    columns = ("", "elastic cloud", "fleet for the peak")
    console.print(table([dict(zip(columns, row, strict=True)) for row in rows], columns))
    if c.savings < 0.005:
        verdict = "neither: both cost the same over the replay"
    else:
        verdict = f"{c.cheaper}, by {_money(c.savings, cur)} over the replay"
    console.print(
        kv_table(
            {
                "utilisation": f"{_pct(c.utilisation)} (CPU {_pct(c.cpu_utilisation)}, "
                f"GPU {_pct(c.gpu_utilisation)})",
                "break-even": _pct(c.break_even_utilisation),
                "cheaper": verdict,
                "once it runs": f"{c.cheaper_per_year} is cheaper for a year at this load",
            }
        )
    )
    if chart is not None:
        console.print(f"chart: {chart}", soft_wrap=True)


def plan(
    period: Annotated[
        str | None,
        typer.Option("--period", help="the last month replayed, YYYY-MM (default: this month)"),
    ] = None,
    months: Annotated[
        int | None,
        typer.Option("--months", min=1, max=MAX_MONTHS, help="months replayed (default 12)"),
    ] = None,
    trace: Annotated[
        Path | None,
        typer.Option(
            "--trace",
            exists=True,
            dir_okay=False,
            help="replay this CSV instead (hour,cpus,gpus[,preemptible_cpus,preemptible_gpus])",
        ),
    ] = None,
    chart: Annotated[
        Path | None, typer.Option("--chart", help="write a PNG of demand against both fleets")
    ] = None,
    on_demand_cpu_hour: Annotated[
        float | None, _price("--on-demand-cpu-hour", help="cloud CPU-hour (GUREUM_PRICE_CPU_HOUR)")
    ] = None,
    on_demand_gpu_hour: Annotated[
        float | None,
        _price(
            "--gpu-hour",
            "--on-demand-gpu-hour",
            help="cloud on-demand GPU-hour (GUREUM_PRICE_GPU_HOUR)",
        ),
    ] = None,
    spot_cpu_hour: Annotated[
        float | None, _price("--spot-cpu-hour", help="spot CPU-hour for jobs (default 0.02)")
    ] = None,
    spot_gpu_hour: Annotated[
        float | None, _price("--spot-gpu-hour", help="spot GPU-hour for jobs (default 1.00)")
    ] = None,
    spot_share: Annotated[
        float | None, _price("--spot-share", help="share of job hours on spot (default 1)", high=1)
    ] = None,
    purchase_per_cpu: Annotated[
        float | None, _price("--purchase-per-cpu", help="price of a CPU's share of a server (150)")
    ] = None,
    purchase_per_gpu: Annotated[
        float | None,
        _price("--purchase-per-gpu", help="price of a GPU's share of a server (25000)"),
    ] = None,
    amortisation_years: Annotated[
        float | None,
        _price(
            "--amortisation-years", help="years the purchase is spread over (3)", low=0.1, high=50
        ),
    ] = None,
    power_per_cpu_hour: Annotated[
        float | None, _price("--power-per-cpu-hour", help="power and cooling of a CPU-hour (0.002)")
    ] = None,
    power_per_gpu_hour: Annotated[
        float | None, _price("--power-per-gpu-hour", help="power and cooling of a GPU-hour (0.10)")
    ] = None,
    lead_time_months: Annotated[
        float | None,
        _price("--lead-time-months", help="months from order to service (3)", high=120),
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Elastic cloud against a fleet bought for the peak, over the recorded usage of the last
    months (or a CSV trace): a table, the break-even utilisation and, with --chart, a PNG.
    Defaults of the prices: GUREUM_PRICE_* and GUREUM_PLAN_* on the server."""
    if trace is not None and (period is not None or months is not None):
        fail(
            "--period and --months replay recorded usage, not a --trace",
            output,
            "invalid_option",
            BAD_INPUT,
        )
    prices = PriceOverrides(
        on_demand_cpu_hour=on_demand_cpu_hour,
        on_demand_gpu_hour=on_demand_gpu_hour,
        spot_cpu_hour=spot_cpu_hour,
        spot_gpu_hour=spot_gpu_hour,
        spot_share=spot_share,
        purchase_per_cpu=purchase_per_cpu,
        purchase_per_gpu=purchase_per_gpu,
        amortisation_years=amortisation_years,
        power_per_cpu_hour=power_per_cpu_hour,
        power_per_gpu_hour=power_per_gpu_hour,
        lead_time_months=lead_time_months,
    )
    with api_errors(output), Client() as c:
        try:
            if trace is not None:
                report = c.planner.trace(trace, prices)
            else:
                report = c.planner.replay(period, months or 12, prices)
        except (TraceError, NotFoundError, BadRequestError) as e:
            fail(e.message, output, e.code, BAD_INPUT)
        if chart is not None:
            draw_chart(report, chart)
    data = report.model_dump(mode="json")
    if chart is not None:
        data["chart"] = str(chart)
    emit(data, output, lambda _: render(report, chart))


def draw_chart(report: PlanReport, path: Path) -> Path:
    """The chart module is imported here, not at the top: matplotlib takes half a second to
    import, and every other command would pay it."""
    from gureum.cli import plan_chart

    return plan_chart.draw(report, path)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
