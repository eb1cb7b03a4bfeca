"""`gureum budgets set|show|events WS`: a workspace's monthly compute budget and the most one
job may cost."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gureum.cli.output import Format, OutputOpt, api_errors, console, emit, kv_table, table
from gureum.client import Client

app = typer.Typer(help="Monthly compute budgets: warn at 80%, stop new work at 100%.")
HELD_COLUMNS = ("endpoint", "min_replicas", "max_replicas", "cost_since_held")
STATE_STYLE = {"warning": "yellow", "exceeded": "red"}
NOTES = {
    "warning": "80% or more of the monthly budget is spent",
    "exceeded": "new jobs are refused, running jobs are paused with their checkpoints and "
    "endpoints held at their minimum replicas until the budget is raised",
}

Workspace = Annotated[str, typer.Argument(help="the workspace's name")]


def _client() -> Client:
    return Client()


def _money(value: float | None, currency: str) -> str:
    return "no limit" if value is None else f"{value:.4g} {currency}"


def render_budget(b: dict[str, Any]) -> None:
    """The budget as a table; shared with `gureum costs`."""
    cur = b["currency"]
    percent = "-" if b["percent"] is None else f"{b['percent']:.1f}%"
    console.print(
        kv_table(
            {
                "budget": f"{b['workspace']} in {b['period']}",
                "state": f"{b['state']} since {b['state_changed_at']}",
                "monthly": _money(b["monthly"], cur),
                "per job": _money(b["per_job"], cur),
                "spend": f"{b['spend']:.4g} {cur} ({percent})",
                "reserved": f"{b['reserved']:.4g} {cur}",
                "remaining": _money(b["remaining"], cur),
            }
        )
    )
    if b["state"] in NOTES:
        style = STATE_STYLE[b["state"]]
        console.print(f"[{style}]{b['state']}:[/{style}] {NOTES[b['state']]}")
    if b["paused_jobs"]:
        console.print(
            "paused by the budget (resume when it is raised): " + ", ".join(b["paused_jobs"])
        )
    if b["endpoints_at_minimum"]:
        console.print("endpoints held at their minimum replicas (they keep running and cost):")
        console.print(table(b["endpoints_at_minimum"], HELD_COLUMNS))


@app.command("set")
def set_(
    workspace: Workspace,
    monthly: Annotated[
        float | None, typer.Option("--monthly", help="compute spend allowed per month")
    ] = None,
    per_job: Annotated[
        float | None, typer.Option("--per-job", help="the most one job may cost")
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Set both limits (a limit left out is lifted); takes effect at once."""
    with api_errors(output), _client() as c:
        out = c.budgets.set(workspace, monthly=monthly, per_job=per_job)
    emit(out.model_dump(mode="json"), output, render_budget)


@app.command("show")
def show(workspace: Workspace, output: OutputOpt = Format.table) -> None:
    """Limits, this month's spend, percent and state."""
    with api_errors(output), _client() as c:
        out = c.budgets.get(workspace)
    emit(out.model_dump(mode="json"), output, render_budget)


@app.command("events")
def events(workspace: Workspace, output: OutputOpt = Format.table) -> None:
    """Changes, 80% warnings, stops and resumes, newest first."""
    with api_errors(output), _client() as c:
        rows = [e.model_dump(mode="json") for e in c.budgets.events(workspace)]
    emit(rows, output, lambda r: console.print(table(r, ("time", "kind", "spend", "message"))))
