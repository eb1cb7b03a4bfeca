"""`gureum jobs ...`: list, inspect, follow, cancel jobs and fetch what they produced.

Also how a job is shown anywhere in the CLI (state, progress line, facts), so that
`gureum train --wait` and `gureum jobs show` speak the same way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gureum.cli.datasets import human_bytes
from gureum.cli.output import (
    Format,
    OutputOpt,
    api_errors,
    console,
    emit,
    err_console,
    kv_table,
    print_json,
    table,
    write_clean,
)
from gureum.client import Client
from gureum.client.jobs import JobEnded, LogChunk, StateChange
from gureum.schemas.jobs import JobEventOut, JobMetricOut, JobOut, Resources

app = typer.Typer(
    help="Jobs: training, evaluation and batch prediction runs.", no_args_is_help=True
)

INTERRUPTED = 130  # the shell's exit status for Ctrl-C
# From these many columns on, `jobs list` also shows data and time, then why jobs wait.
MEDIUM_TERMINAL = 110
WIDE_TERMINAL = 150

IdArg = Annotated[str, typer.Argument(help="the job id")]

# -- rendering ---------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_text(job: JobOut) -> str:
    """epoch, step/total, loss and ETA, as much of it as the job has reported."""
    p = job.progress
    parts: list[str] = []
    if p.epoch is not None:
        parts.append(f"epoch {p.epoch}")
    if p.step or p.total_steps:
        parts.append(f"step {p.step}/{p.total_steps if p.total_steps else '?'}")
    if p.loss is not None:
        parts.append(f"loss {p.loss:.4g}")
    if p.eta_s is not None and job.state == "running":
        parts.append(f"ETA {_duration(p.eta_s)}")
    return "  ".join(parts)


def state_text(job: JobOut) -> str:
    """The state and why it is not moving on (queued behind a quota, no cluster, ...)."""
    text: str = job.state
    if job.state in ("queued", "starting") and job.wait_reason:
        text += f": {job.wait_reason}"
    if job.state == "running" and job.attempt > 1:
        text += f" (attempt {job.attempt})"
    return text


def resources_text(r: Resources) -> str:
    parts = [f"{r.cpus:g} CPU"]
    if r.gpus:
        parts.append(f"{r.gpus:g} GPU" + (f" ({r.accelerator_type})" if r.accelerator_type else ""))
    if r.memory_gb:
        parts.append(f"{r.memory_gb:g} GB")
    parts.extend(f"{k}={v:g}" for k, v in r.custom.items())
    return ", ".join(parts)


def _when(value: Any) -> str | None:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else None


class StateLines:
    """For logs and pipes: one line on stderr each time the state text changes."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self.last = ""

    def update(self, job: JobOut) -> None:
        text = f"{job.id} {state_text(job)}"
        if text != self.last:
            self.out.print(escape(text), highlight=False, soft_wrap=True)
            self.last = text


def _jobs_table(items: list[JobOut], width: int) -> Table:
    """Ids never wrap (people copy them); wider terminals also get data, time and why a job
    waits or failed."""
    cols = ["id", "kind", "state", "recipe", "model", "progress"]
    cols += ["data", "created"] if width >= MEDIUM_TERMINAL else []
    cols += ["note"] if width >= WIDE_TERMINAL else []
    t = Table(*cols, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    t.columns[0].no_wrap = True
    for j in items:
        cells = {
            "id": j.id,
            "kind": j.kind,
            "state": j.state,
            "recipe": j.recipe,
            "model": j.model_version or j.model or "-",
            "progress": progress_text(j) or "-",
            "data": j.dataset or "-",
            "created": j.created_at.strftime("%m-%d %H:%M"),
            "note": escape(j.error or j.wait_reason or ""),
        }
        t.add_row(*(cells[c] for c in cols))
    if "note" in cols:
        t.columns[-1].overflow = "ellipsis"
        t.columns[-1].max_width = 50
    return t


def _render_list(items: list[JobOut]) -> None:
    if not items:
        console.print("no jobs: start one with `gureum train --recipe R --dataset NAME`")
        return
    console.print(_jobs_table(items, console.width))


def _job_facts(j: JobOut) -> dict[str, Any]:
    return {
        "id": j.id,
        "kind": j.kind,
        "state": j.state,
        "wait reason": j.wait_reason,
        "recipe": j.recipe,
        "dataset": j.dataset,
        "model": j.model,
        "model version": j.model_version,
        "params": j.params or None,
        "resources": f"{resources_text(j.resources)} x {j.workers} worker(s)",
        "priority": j.priority,
        "preemptible": "yes" if j.preemptible else "no (endpoints may not preempt it)",
        "attempt": f"{j.attempt} of {j.max_retries + 1}" if j.attempt else None,
        "max retries": j.max_retries,
        "timeout": _duration(j.timeout_s) if j.timeout_s else None,
        "progress": progress_text(j) or None,
        "metrics": j.metrics or None,
        "error": j.error,
        "code": j.code_hash,
        "created": f"{_when(j.created_at)} by {j.created_by or '-'}",
        "started": _when(j.started_at),
        "finished": _when(j.finished_at),
    }


def _events_table(events: list[JobEventOut]) -> Table:
    rows = [{"time": _when(e.time), "kind": e.kind, "message": e.message} for e in events]
    return table(rows, ["time", "kind", "message"])


def _metrics_table(points: list[JobMetricOut]) -> Table:
    names = list(dict.fromkeys(k for p in points for k in p.values))
    rows = [
        {"step": p.step, "epoch": p.epoch, "time": _when(p.time)}
        | {k: f"{p.values[k]:.6g}" if k in p.values else None for k in names}
        for p in points
    ]
    return table(rows, ["step", "epoch", "time", *names])


def _render_job(j: JobOut, events: list[JobEventOut] | None = None) -> None:
    console.print(kv_table({k: v for k, v in _job_facts(j).items() if v is not None}))
    if events:
        console.print(_events_table(events))


# -- gureum jobs ... ---------------------------------------------------------------------------


@app.command("list")
def list_cmd(
    state: Annotated[str | None, typer.Option("--state", help="only jobs in this state")] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="only train, evaluate or predict")
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """The workspace's jobs, newest first."""
    with api_errors(output), Client() as client:
        items = client.jobs.list(state=state, kind=kind)
    emit([j.model_dump(mode="json") for j in items], output, lambda _: _render_list(items))


@app.command("show")
def show_cmd(job_id: IdArg, output: OutputOpt = Format.table) -> None:
    """A job's settings, state, progress, metrics and its timeline of events."""
    with api_errors(output), Client() as client:
        job = client.jobs.get(job_id)
        events = client.jobs.events(job_id)
    data = job.model_dump(mode="json") | {"events": [e.model_dump(mode="json") for e in events]}
    emit(data, output, lambda _: _render_job(job, events))


@app.command("cancel")
def cancel_cmd(job_id: IdArg, output: OutputOpt = Format.table) -> None:
    """Stop a job: a queued one at once, a running one at its next check."""
    with api_errors(output), Client() as client:
        job = client.jobs.cancel(job_id)
    emit(
        job.model_dump(mode="json"),
        output,
        lambda _: console.print(f"job [bold]{job.id}[/bold]: {escape(state_text(job))}"),
    )


@app.command("events")
def events_cmd(job_id: IdArg, output: OutputOpt = Format.table) -> None:
    """The job's timeline, oldest first: states, waits, retries, checkpoints."""
    with api_errors(output), Client() as client:
        events = client.jobs.events(job_id)
    emit(
        [e.model_dump(mode="json") for e in events],
        output,
        lambda _: console.print(_events_table(events)),
    )


@app.command("metrics")
def metrics_cmd(job_id: IdArg, output: OutputOpt = Format.table) -> None:
    """Every metric point the job reported, oldest first."""
    with api_errors(output), Client() as client:
        points = client.jobs.metrics(job_id)
    emit(
        [p.model_dump(mode="json") for p in points],
        output,
        lambda _: console.print(_metrics_table(points) if points else "no metrics yet"),
    )


@app.command("logs")
def logs_cmd(
    job_id: IdArg,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing until the job ends")
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Print the job's log; with -f follow it live and exit 1 if the job fails."""
    with api_errors(output), Client() as client:
        if follow:
            _follow(client, job_id, output)
            return
        offset, texts = 0, []
        while True:
            text, nxt = client.jobs.logs(job_id, offset)
            if not text or nxt <= offset:
                break
            offset = nxt
            if output is Format.json:
                texts.append(text)
            else:
                write_clean(text)
    if output is Format.json:
        print_json({"id": job_id, "text": "".join(texts), "next_offset": offset})


def _follow(client: Client, job_id: str, output: Format) -> None:
    """Print log text as it arrives; -o json writes one JSON object per event."""
    lines = StateLines(err_console)
    final: JobOut | None = None
    try:
        for event in client.jobs.stream(job_id):
            if output is Format.json:
                sys.stdout.write(json.dumps(_event_json(event)) + "\n")
                sys.stdout.flush()
            elif isinstance(event, LogChunk):
                write_clean(event.text)
            else:
                lines.update(event.job)
            if isinstance(event, JobEnded):
                final = event.job
    except KeyboardInterrupt:
        raise typer.Exit(INTERRUPTED) from None
    if final is not None and final.state != "succeeded":
        if output is not Format.json and final.error:
            err_console.print(f"[red]error:[/red] {escape(final.error)}")
        raise typer.Exit(1)


def _event_json(event: LogChunk | StateChange | JobEnded) -> dict[str, Any]:
    if isinstance(event, LogChunk):
        return {"event": "log", "offset": event.offset, "text": event.text}
    name = "end" if isinstance(event, JobEnded) else "state"
    return {"event": name, "job": event.job.model_dump(mode="json")}


@app.command("outputs")
def outputs_cmd(
    job_id: IdArg,
    download: Annotated[
        Path | None, typer.Option("--download", help="write every output into this folder")
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Files the job produced; --download DIR writes them there."""
    with api_errors(output), Client() as client:
        items = client.jobs.outputs(job_id)
        rows = [o.model_dump(mode="json") for o in items]
        if download is not None:
            for row, o in zip(rows, items, strict=True):
                where = client.jobs.download_output(job_id, o.path, download, sha256=o.sha256)
                row["local_path"] = str(where)
    if output is Format.json:
        print_json(rows)
        return
    if not rows:
        console.print(f"job {job_id} has no outputs (yet)")
        return
    shown = [
        {"path": r["path"], "size": human_bytes(r["size"]), "sha256": r["sha256"][:12]}
        | ({"saved to": r["local_path"]} if "local_path" in r else {})
        for r in rows
    ]
    console.print(table(shown))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="jobs")
