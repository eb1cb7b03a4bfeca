"""`gureum pipelines ...`: retrain pipelines, the data flywheel's loop run by the server.

A pipeline says what to retrain from which endpoint's captured calls and when; each run is one
visible object (its steps, their states, timings and messages, the candidate's and production's
metrics side by side, and the reason for its decision). `run --wait` follows a run step by
step; Ctrl-C only stops the waiting, never the run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich import box
from rich.markup import escape
from rich.table import Table

from gureum.cli.jobs import INTERRUPTED
from gureum.cli.jobs_submit import ParamOpt, parse_params
from gureum.cli.output import (
    Format,
    OutputOpt,
    api_errors,
    console,
    emit,
    err_console,
    fail,
    kv_table,
    table,
)
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
from gureum.schemas.pipelines import PipelineCreate, PipelineOut, RunEventOut, RunOut, RunState

app = typer.Typer(
    help="Pipelines: captured calls and feedback retrained into the next model, by itself.",
    no_args_is_help=True,
)

# How often `run --wait` polls the run (steps take seconds to minutes).
POLL_S = 2.0
# Runs that end in these states made a decision (or wait for a person): `run --wait` exits 0.
DECIDED = frozenset({RunState.promoted, RunState.not_promoted, RunState.awaiting_approval})
# The first columns of a metrics table, when the run reports them.
ROLES = ("candidate", "production")
# `runs` cuts reasons to this many characters (`show --run N` has the whole one).
SNIPPET = 60
# Command-line flags whose name is not the request field's (for error messages).
FLAGS = {"canary_percent": "--canary", "params": "--param"}

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="the pipeline's name")]
RunOpt = Annotated[
    int | None, typer.Option("--run", min=1, help="the run's number (default: the latest)")
]


# -- rendering ---------------------------------------------------------------------------------


def _when(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else None


def _took(started: datetime | None, finished: datetime | None) -> str | None:
    """How long a step ran, or has been running so far."""
    if started is None:
        return None
    seconds = max(0, round(((finished or datetime.now(UTC)) - started).total_seconds()))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    text = f"{h} h {m} min" if h else f"{m} min {s} s" if m else f"{s} s"
    return text if finished is not None else f"{text} so far"


def _value(value: Any) -> str | None:
    if isinstance(value, float):
        return f"{value:.4g}"
    return None if value is None else str(value)


def triggers_text(p: PipelineOut) -> str:
    """What starts a run of ``p`` besides a person."""
    c = p.config
    parts = [f"cron {c.schedule}"] if c.schedule else []
    parts += [f"{c.after_labels} new labels"] if c.after_labels else []
    parts += [f"drift {c.on_drift:g}"] if c.on_drift else []
    return ", ".join(parts) or "by hand only"


def pipeline_facts(p: PipelineOut) -> dict[str, Any]:
    c = p.config
    metric = c.metric or "the recipe's own metric"
    if c.metric and c.higher_is_better is not None:
        metric += " (higher is better)" if c.higher_is_better else " (lower is better)"
    cooldown = f" (runs at least {c.cooldown_minutes:g} min apart)"
    curate = [f"rated {c.min_rating} or more"] if c.min_rating else []
    curate += ["labelled only"] if c.labelled_only else []
    promote = [f"after at least {c.min_requests} canary requests"]
    promote += [f"and {c.min_feedback} ratings of them"] if c.min_feedback else []
    promote += ["if errors and latency are no worse than production's"]
    drop = f"{c.max_rating_drop:g} below" if c.max_rating_drop else "no worse than"
    promote += [f"and the mean rating {drop} production's"]
    return {
        "name": p.name,
        "retrains": f"{p.model} from endpoint {p.endpoint}'s calls into dataset {p.dataset}",
        "triggers": ("paused (pipelines resume): " if not c.enabled else "")
        + triggers_text(p)
        + (cooldown if c.schedule or c.after_labels or c.on_drift else ""),
        "next scheduled": _when(p.next_scheduled_at),
        "curates": ", ".join(curate) or "every captured call",
        "gate": f"the candidate must beat production on {metric}",
        "approval": "by a person (pipelines approve)" if c.approve == "manual" else "automatic",
        "canary": f"{c.canary_percent:g} % of the traffic for {c.canary_minutes:g} min",
        "promotes": " ".join(promote),
        "params": c.params or None,
        "runs": f"last {p.last_run}" if p.last_run is not None else "none yet",
        "in progress": f"run {p.active_run}" if p.active_run is not None else None,
        "created": f"{_when(p.created_at)} by {p.created_by or '-'}",
    }


def _run_facts(r: RunOut) -> dict[str, Any]:
    return {
        "run": f"{r.pipeline} #{r.number}, started {r.trigger}",
        "state": run_state_text(r),
        "reason": r.reason or None,
        "curated": r.dataset_version,
        "candidate": r.candidate,
        "production": r.production,
        "started": _when(r.created_at),
        "finished": _when(r.finished_at),
    }


def steps_table(r: RunOut) -> Table:
    rows = [
        {
            "step": s.name,
            "state": s.state,
            "started": _when(s.started_at),
            "took": _took(s.started_at, s.finished_at),
            "message": s.message or None,
        }
        for s in r.steps
    ]
    return table(rows, ["step", "state", "started", "took", "message"])


def metrics_table(metrics: dict[str, dict[str, Any]]) -> Table | None:
    """One row per metric, one column each for the candidate and production (then any other
    model the run measured). Reads ``{"candidate": {m: v}, ...}`` and ``{m: {"candidate": v}}``."""
    if not metrics:
        return None
    by_model = any(k in ROLES for k in metrics)
    if by_model:
        columns, names = list(metrics), list(dict.fromkeys(m for v in metrics.values() for m in v))
        cell = {(m, col): metrics[col].get(m) for col in columns for m in metrics[col]}
    else:
        columns = list(dict.fromkeys(c for v in metrics.values() for c in v))
        names = list(metrics)
        cell = {(m, col): v for m, row in metrics.items() for col, v in row.items()}
    columns.sort(key=lambda c: ROLES.index(c) if c in ROLES else len(ROLES))
    t = Table("metric", *columns, box=box.SIMPLE_HEAD)
    for m in names:
        t.add_row(escape(m), *(escape(_value(cell.get((m, c))) or "-") for c in columns))
    return t


def _render_run(r: RunOut) -> None:
    console.print(kv_table({k: v for k, v in _run_facts(r).items() if v is not None}))
    console.print(steps_table(r))
    metrics = metrics_table(r.metrics)
    if metrics is not None:
        console.print(metrics)
    if r.state == RunState.awaiting_approval:
        console.print(escape(_approve_hint(r)), highlight=False)


def _approve_hint(r: RunOut) -> str:
    where = f"{r.pipeline} --run {r.number}"
    return f"approve it: gureum pipelines approve {where} (or reject it: add --reject)"


def _render_pipeline(p: PipelineOut, run: RunOut | None) -> None:
    console.print(kv_table({k: v for k, v in pipeline_facts(p).items() if v is not None}))
    if run is None:
        console.print(f"no runs yet: start one with `gureum pipelines run {p.name}`")
        return
    console.print()
    _render_run(run)


def _compact(rows: list[dict[str, Any]], whole: int) -> Table:
    """A list table whose first ``whole`` columns never wrap (names and numbers are copied)."""
    t = Table(*rows[0], box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for row in rows:
        t.add_row(*(escape(_value(v) or "-") for v in row.values()))
    for column in t.columns[:whole]:
        column.no_wrap = True
    return t


def _snippet(text: str) -> str:
    return text if len(text) <= SNIPPET else text[: SNIPPET - 1] + "…"


def _render_list(items: list[PipelineOut]) -> None:
    if not items:
        console.print(
            "no pipelines: create one with "
            "`gureum pipelines create NAME --model M --endpoint E --dataset D`"
        )
        return
    rows = [
        {
            "name": p.name,
            "model": p.model,
            "endpoint": p.endpoint,
            "triggers": triggers_text(p),
            "approval": p.config.approve,
            "last run": p.last_run,
            "in progress": p.active_run,
        }
        for p in items
    ]
    console.print(_compact(rows, 3))


def run_state_text(r: RunOut) -> str:
    """The state, and the step a run in progress is at."""
    active = r.state in (RunState.running, RunState.awaiting_approval)
    return f"{r.state} ({r.step})" if active and r.step is not None else str(r.state)


def _render_runs(name: str, runs: list[RunOut]) -> None:
    if not runs:
        console.print(f"pipeline {name} has no runs yet")
        return
    rows = [
        {
            "run": r.number,
            "state": run_state_text(r),
            "trigger": r.trigger,
            "candidate": r.candidate,
            "started": r.created_at.strftime("%m-%d %H:%M"),
            "reason": _snippet(r.reason) or None,
        }
        for r in runs
    ]
    console.print(_compact(rows, 2))


def _events_table(events: list[RunEventOut]) -> Table:
    rows = [
        {"seq": e.seq, "time": _when(e.time), "step": e.step, "kind": e.kind}
        | {"message": e.message}
        for e in events
    ]
    return table(rows, ["seq", "time", "step", "kind", "message"])


def _decision(r: RunOut) -> str:
    return f"run {r.number} of {r.pipeline}: [bold]{escape(r.state)}[/bold]" + (
        f": {escape(r.reason)}" if r.reason else ""
    )


class StepLines:
    """For `run --wait`: one line each time a step's state or message changes."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, str]] = {}

    def update(self, r: RunOut) -> None:
        for s in r.steps:
            now = (str(s.state), s.message)
            if s.state == "pending" or self.seen.get(s.name) == now:
                continue
            self.seen[s.name] = now
            took = _took(s.started_at, s.finished_at) if s.finished_at else None
            text = f"{s.name:<9} {s.state:<9}" + (f" {took:>10}" if took else " " * 11)
            console.print(escape(text + (f"  {s.message}" if s.message else "")), highlight=False)


# -- gureum pipelines ... ----------------------------------------------------------------------


def _run_ref(run: int | None) -> int | str:
    return "latest" if run is None else run


@app.command("create")
def create_cmd(
    name: NameArg,
    model: Annotated[str, typer.Option("--model", help="the model to retrain (NAME)")],
    endpoint: Annotated[str, typer.Option("--endpoint", help="the endpoint it serves on")],
    dataset: Annotated[str, typer.Option("--dataset", help="the dataset curated versions join")],
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
        bool, typer.Option("--labelled-only", help="curate only calls with a corrected label")
    ] = False,
    metric: MetricOpt = None,
    higher_is_better: HigherIsBetterOpt = None,
    param: ParamOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Retrain model M from endpoint E's captured calls and feedback into dataset D.

    Runs start on a schedule, after new labels, on drift, or by hand (`pipelines run`)."""
    given = {
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
        "labelled_only": labelled_only or None,
        "metric": metric,
        "higher_is_better": higher_is_better,
        "params": parse_params(param, output) or None,
    }
    options = {k: v for k, v in given.items() if v is not None}
    _check(name, model, endpoint, dataset, options, output)
    with api_errors(output), Client() as client:
        p = client.pipelines.create(
            name, model=model, endpoint=endpoint, dataset=dataset, **options
        )

    def render(_: Any) -> None:
        _render_pipeline(p, None)

    emit(p.model_dump(mode="json"), output, render)


def _check(
    name: str, model: str, endpoint: str, dataset: str, options: dict[str, Any], output: Format
) -> None:
    """Refuse bad options before sending, naming the flag rather than the request's field."""
    try:
        PipelineCreate(name=name, model=model, endpoint=endpoint, dataset=dataset, **options)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        flag = {"name": "NAME"}.get(field) or FLAGS.get(field) or "--" + field.replace("_", "-")
        msg = str(first["msg"]).removeprefix("Value error, ")
        fail(f"{flag}: {msg}" if field else msg, output, "invalid_request")


@app.command("run")
def run_cmd(
    name: NameArg,
    wait: Annotated[bool, typer.Option("--wait", help="follow the run to its decision")] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0, help="with --wait: give up after SECONDS")
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Start a run now; --wait follows it to its decision.

    --wait prints each step as it goes and exits 0 once the run is promoted, not promoted or
    awaiting approval, 1 when it failed or was cancelled."""
    with api_errors(output), Client() as client:
        run = client.pipelines.run(name)
        if wait:
            if output is not Format.json:
                console.print(_started(run), highlight=False)
            run = _follow(client, name, run, output, timeout)
    if not wait:
        hint = f"follow it: gureum pipelines show {name} --run {run.number}"
        emit(
            run.model_dump(mode="json"),
            output,
            lambda _: console.print(f"{_started(run)}; {escape(hint)}", highlight=False),
        )
        return
    emit(run.model_dump(mode="json"), output, lambda _: _end(run))
    if run.state not in DECIDED:
        raise typer.Exit(1)


def _started(r: RunOut) -> str:
    return escape(f"run {r.number} of {r.pipeline} started {r.trigger}")


def _follow(
    client: Client, name: str, run: RunOut, output: Format, timeout: float | None = None
) -> RunOut:
    lines = StepLines() if output is not Format.json else None
    try:
        return client.pipelines.wait(
            name,
            run.number,
            timeout=timeout,
            poll_s=POLL_S,
            on_update=lines.update if lines is not None else None,
        )
    except KeyboardInterrupt:
        err_console.print(
            f"\nstopped waiting; run {run.number} goes on. "
            f"Follow it: gureum pipelines show {name} --run {run.number}",
            highlight=False,
        )
        raise typer.Exit(INTERRUPTED) from None


def _end(r: RunOut) -> None:
    console.print(_decision(r), highlight=False)
    metrics = metrics_table(r.metrics)
    if metrics is not None:
        console.print(metrics)
    if r.state == RunState.awaiting_approval:
        console.print(escape(_approve_hint(r)), highlight=False)


@app.command("list")
def list_cmd(output: OutputOpt = Format.table) -> None:
    """The workspace's pipelines."""
    with api_errors(output), Client() as client:
        items = client.pipelines.list()
    emit([p.model_dump(mode="json") for p in items], output, lambda _: _render_list(items))


@app.command("show")
def show_cmd(name: NameArg, run: RunOpt = None, output: OutputOpt = Format.table) -> None:
    """The pipeline's settings and its latest run (or run N): steps, metrics, decision."""
    with api_errors(output), Client() as client:
        p = client.pipelines.get(name)
        has_runs = run is not None or p.last_run is not None or p.active_run is not None
        r = client.pipelines.get_run(name, _run_ref(run)) if has_runs else None
    data = p.model_dump(mode="json") | {"run": r.model_dump(mode="json") if r else None}
    emit(data, output, lambda _: _render_pipeline(p, r))


@app.command("runs")
def runs_cmd(
    name: NameArg,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="only the N newest")] = None,
    output: OutputOpt = Format.table,
) -> None:
    """The pipeline's runs, newest first."""
    with api_errors(output), Client() as client:
        runs = client.pipelines.runs(name, limit=limit)
    emit([r.model_dump(mode="json") for r in runs], output, lambda _: _render_runs(name, runs))


@app.command("events")
def events_cmd(
    name: NameArg,
    run: RunOpt = None,
    after: Annotated[int, typer.Option("--after", min=0, help="only events after this seq")] = 0,
    output: OutputOpt = Format.table,
) -> None:
    """A run's log, oldest first: what each step did and why the run decided as it did."""
    with api_errors(output), Client() as client:
        events = client.pipelines.events(name, _run_ref(run), after=after)
    emit(
        [e.model_dump(mode="json") for e in events],
        output,
        lambda _: console.print(_events_table(events) if events else "no events"),
    )


@app.command("cancel")
def cancel_cmd(name: NameArg, run: RunOpt = None, output: OutputOpt = Format.table) -> None:
    """Stop a run (the latest by default); production stays as it was."""
    with api_errors(output), Client() as client:
        r = client.pipelines.cancel(name, _run_ref(run))
    emit(r.model_dump(mode="json"), output, lambda _: console.print(_decision(r)))


@app.command("approve")
def approve_cmd(
    name: NameArg,
    run: RunOpt = None,
    reject: Annotated[
        bool, typer.Option("--reject", help="end the run without deploying the candidate")
    ] = False,
    note: Annotated[str, typer.Option("--note", help="why, kept with the decision")] = "",
    output: OutputOpt = Format.table,
) -> None:
    """Let a run awaiting approval canary its candidate, or --reject it."""
    with api_errors(output), Client() as client:
        r = client.pipelines.approve(name, _run_ref(run), approve=not reject, note=note)
    emit(r.model_dump(mode="json"), output, lambda _: console.print(_decision(r)))


@app.command("delete")
def delete_cmd(name: NameArg, output: OutputOpt = Format.table) -> None:
    """Remove the pipeline: no run starts from it again."""
    with api_errors(output), Client() as client:
        client.pipelines.delete(name)
    emit(
        {"name": name, "deleted": True},
        output,
        lambda _: console.print(f"deleted pipeline {escape(name)}", highlight=False),
    )


def register(root: typer.Typer) -> None:
    from gureum.cli import pipelines_update  # it builds on this module's helpers

    pipelines_update.register(app)
    root.add_typer(app, name="pipelines")
