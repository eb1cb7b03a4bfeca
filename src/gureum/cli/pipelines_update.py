"""`gureum pipelines update | pause | resume`: change a pipeline's settings in place.

Mirrors `pipelines create`'s options; only the options given change, `--clear FIELD` empties
an optional one, and `--pause`/`--resume` stop and restart its triggers (a run by hand still
starts). Kept apart from ``cli/pipelines.py`` so each module stays short.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape

from gureum.cli import pipelines as base
from gureum.cli.jobs_submit import ParamOpt, parse_params
from gureum.cli.output import Format, OutputOpt, api_errors, console, emit, fail, kv_table
from gureum.cli.pipeline_options import (
    AfterLabelsOpt,
    ApproveOpt,
    CanaryMinutesOpt,
    CanaryOpt,
    CooldownOpt,
    HigherIsBetterOpt,
    MaxRatingDropOpt,
    MetricOpt,
    MinFeedbackOpt,
    MinRatingOpt,
    MinRequestsOpt,
    OnDriftOpt,
    ScheduleOpt,
)
from gureum.client import Client
from gureum.schemas.pipelines import PipelineOut, PipelineUpdate


class Clearable(StrEnum):
    """Optional settings `--clear` empties (the server's ``null``)."""

    schedule = "schedule"
    after_labels = "after-labels"
    on_drift = "on-drift"
    min_rating = "min-rating"
    metric = "metric"
    params = "params"


def _check(changes: dict[str, Any], output: Format) -> None:
    """Refuse bad options before sending, naming the flag rather than the request's field."""
    try:
        PipelineUpdate(**changes)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        flag = base.FLAGS.get(field) or "--" + field.replace("_", "-")
        msg = str(first["msg"]).removeprefix("Value error, ")
        fail(f"{flag}: {msg}" if field else msg, output, "invalid_request")


def _changed(p: PipelineOut, changes: dict[str, Any], output: Format) -> None:
    def render(_: Any) -> None:
        said = ", ".join(sorted(changes)) or "nothing"
        console.print(f"updated pipeline {escape(p.name)}: {escape(said)}", highlight=False)
        console.print(kv_table({k: v for k, v in base.pipeline_facts(p).items() if v}))

    emit(p.model_dump(mode="json"), output, render)


def update_cmd(
    name: base.NameArg,
    model: Annotated[str | None, typer.Option("--model", help="the model to retrain")] = None,
    endpoint: Annotated[str | None, typer.Option("--endpoint", help="the endpoint")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="the dataset")] = None,
    schedule: ScheduleOpt = None,
    after_labels: AfterLabelsOpt = None,
    on_drift: OnDriftOpt = None,
    cooldown_minutes: CooldownOpt = None,
    canary: CanaryOpt = None,
    canary_minutes: CanaryMinutesOpt = None,
    approve: ApproveOpt = None,
    min_requests: MinRequestsOpt = None,
    min_feedback: MinFeedbackOpt = None,
    max_rating_drop: MaxRatingDropOpt = None,
    min_rating: MinRatingOpt = None,
    labelled_only: Annotated[
        bool | None,
        typer.Option("--labelled-only/--all-calls", help="curate only calls with a label, or all"),
    ] = None,
    metric: MetricOpt = None,
    higher_is_better: HigherIsBetterOpt = None,
    param: ParamOpt = None,
    enabled: Annotated[
        bool | None,
        typer.Option("--resume/--pause", help="start or stop the triggers (runs by hand go on)"),
    ] = None,
    clear: Annotated[
        list[Clearable] | None,
        typer.Option("--clear", help="empty an optional setting (repeat for more)"),
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Change some of pipeline NAME's settings: only the options given change.

    --param replaces all the training parameters; --clear empties a setting. While a run is
    in progress only the triggers (schedule, labels, drift, cooldown, pause) may change."""
    given = {
        "model": model,
        "endpoint": endpoint,
        "dataset": dataset,
        "schedule": schedule,
        "after_labels": after_labels,
        "on_drift": on_drift,
        "cooldown_minutes": cooldown_minutes,
        "canary_percent": canary,
        "canary_minutes": canary_minutes,
        "approve": approve.value if approve is not None else None,
        "min_requests": min_requests,
        "min_feedback": min_feedback,
        "max_rating_drop": max_rating_drop,
        "min_rating": min_rating,
        "labelled_only": labelled_only,
        "metric": metric,
        "higher_is_better": higher_is_better,
        "params": parse_params(param, output) or None,
        "enabled": enabled,
    }
    changes: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    for item in clear or []:
        field = item.name
        if field in changes:
            fail(f"--clear {item.value} and --{item.value} contradict", output, "invalid_request")
        changes[field] = {} if field == "params" else None
        if field == "metric" and "higher_is_better" not in changes:
            changes["higher_is_better"] = None  # a direction goes with its metric
    if not changes:
        fail("say what to change (see --help)", output, "invalid_request")
    _check(changes, output)
    with api_errors(output), Client() as client:
        p = client.pipelines.update(name, **changes)
    _changed(p, changes, output)


def pause_cmd(name: base.NameArg, output: OutputOpt = Format.table) -> None:
    """Stop the pipeline's triggers (schedule, labels, drift); runs by hand still start."""
    with api_errors(output), Client() as client:
        p = client.pipelines.pause(name)
    _changed(p, {"enabled": False}, output)


def resume_cmd(name: base.NameArg, output: OutputOpt = Format.table) -> None:
    """Start the pipeline's triggers again (a schedule counts from now)."""
    with api_errors(output), Client() as client:
        p = client.pipelines.resume(name)
    _changed(p, {"enabled": True}, output)


def register(app: typer.Typer) -> None:
    app.command("update")(update_cmd)
    app.command("pause")(pause_cmd)
    app.command("resume")(resume_cmd)
