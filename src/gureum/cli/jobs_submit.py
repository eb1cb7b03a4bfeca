"""`gureum train | evaluate | predict-batch`: submit a job, and with `--wait` follow it.

Submitting returns the job at once; `--wait` polls it to the end with a progress bar, and
Ctrl-C only stops the waiting, never the job.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from gureum.cli.datasets import progress_bar
from gureum.cli.jobs import INTERRUPTED, StateLines, progress_text, state_text
from gureum.cli.output import (
    Format,
    OutputOpt,
    api_errors,
    console,
    emit,
    err_console,
    fail,
    kv_table,
)
from gureum.cli.refs import parse_ref
from gureum.client import Client
from gureum.schemas.jobs import JobKind, JobOut, Resources

POLL_S = 0.5
MODEL_REFS = ("latest", "production")

DatasetOpt = Annotated[
    str | None, typer.Option("--dataset", "-d", help="NAME or NAME:VERSION to read")
]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option("--param", "-p", help="recipe parameter k=v; v is JSON if it parses (repeatable)"),
]
CpusOpt = Annotated[float | None, typer.Option("--cpus", min=0, help="CPUs per worker")]
GpusOpt = Annotated[float | None, typer.Option("--gpus", min=0, help="GPUs per worker")]
MemoryOpt = Annotated[
    float | None, typer.Option("--memory-gb", min=0, help="memory per worker, GB")
]
AccelOpt = Annotated[
    str | None, typer.Option("--accelerator-type", help="GPU model Ray knows, e.g. A100")
]
ResourceOpt = Annotated[
    list[str] | None,
    typer.Option("--resource", help="custom Ray resource NAME=AMOUNT, e.g. TPU=4 (repeatable)"),
]
PriorityOpt = Annotated[int, typer.Option("--priority", help="higher runs first (-1000..1000)")]
RetriesOpt = Annotated[int, typer.Option("--max-retries", min=0, help="retries after a failure")]
TimeoutOpt = Annotated[
    float | None, typer.Option("--timeout", min=0, help="stop the job after SECONDS")
]
WaitOpt = Annotated[bool, typer.Option("--wait", help="follow the job to its end")]

# -- parsing options ---------------------------------------------------------------------------


def parse_param(text: str, output: Format = Format.table) -> tuple[str, Any]:
    """``k=v`` with v as JSON when it is valid JSON (3, 0.1, true, [1,2]), else a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        fail(f"--param {text!r} is not KEY=VALUE", output, "bad_request")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        return key, raw
    if isinstance(value, float) and not math.isfinite(value):
        return key, raw  # NaN / Infinity are not JSON the server accepts
    return key, value


def parse_params(items: list[str] | None, output: Format) -> dict[str, Any]:
    return dict(parse_param(p, output) for p in items or [])


def build_resources(
    cpus: float | None,
    gpus: float | None,
    memory_gb: float | None,
    accelerator_type: str | None,
    custom: list[str] | None,
    output: Format,
) -> Resources | None:
    """The per-worker resources the options ask for; None leaves the server's default."""
    fields: dict[str, Any] = {
        k: v
        for k, v in (
            ("cpus", cpus),
            ("gpus", gpus),
            ("memory_gb", memory_gb),
            ("accelerator_type", accelerator_type),
        )
        if v is not None
    }
    extra: dict[str, float] = {}
    for item in custom or []:
        name, _, amount = item.partition("=")
        try:
            extra[name.strip() or "?"] = float(amount)
        except ValueError:
            fail(f"--resource {item!r} is not NAME=AMOUNT", output, "bad_request")
    if extra:
        fields["custom"] = extra
    if not fields:
        return None
    try:
        return Resources.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        fail(
            f"invalid resources: {where + ': ' if where else ''}{first['msg']}",
            output,
            "invalid_request",
        )


def _checked_ref(ref: str | None, output: Format, named: tuple[str, ...] = ("latest",)) -> None:
    if ref is not None:
        parse_ref(ref, output, named)


class JobBar:
    """A Rich progress bar fed with every polled JobOut: state in the description, steps in
    the bar, epoch / loss / ETA beside it."""

    def __init__(self, out: Console) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=out,
        )
        self.task = self.progress.add_task("submitted", total=None, detail="")

    def update(self, job: JobOut) -> None:
        total = job.progress.total_steps or None
        done = job.progress.step
        if job.state == "succeeded" and total:
            done = total
        self.progress.update(
            self.task,
            description=escape(f"{job.id} {state_text(job)}"),
            completed=done,
            total=total,
            detail=escape(progress_text(job)),
        )


def _render_submitted(j: JobOut) -> None:
    console.print(f"submitted {j.kind} job [bold]{j.id}[/bold]: {escape(state_text(j))}")
    console.print(f"follow it with: gureum jobs logs {j.id} -f", highlight=False)


def _render_final(j: JobOut) -> None:
    color = "green" if j.state == "succeeded" else "red"
    console.print(f"job [bold]{j.id}[/bold] [{color}]{j.state}[/{color}]")
    if j.metrics:
        console.print(kv_table(j.metrics))
    if j.model_version:
        console.print(f"registered model version [bold]{escape(j.model_version)}[/bold]")
    if j.error:
        err_console.print(f"[red]error:[/red] {escape(j.error)}")


# -- submit and wait ---------------------------------------------------------------------------


def _wait(client: Client, job: JobOut, output: Format) -> JobOut:
    """Poll the job to a terminal state, showing progress unless output is for programs."""
    try:
        if output is Format.json:
            return client.jobs.wait(job.id, poll_s=POLL_S)
        if not err_console.is_terminal:
            return client.jobs.wait(job.id, poll_s=POLL_S, on_update=StateLines(err_console).update)
        bar = JobBar(err_console)
        bar.update(job)
        with bar.progress:
            return client.jobs.wait(job.id, poll_s=POLL_S, on_update=bar.update)
    except KeyboardInterrupt:
        err_console.print(
            f"\nstopped waiting; job {job.id} keeps running.\n"
            f"  follow it: gureum jobs logs {job.id} -f\n"
            f"  stop it:   gureum jobs cancel {job.id}",
            highlight=False,
        )
        raise typer.Exit(INTERRUPTED) from None


def _submitted(client: Client, job: JobOut, wait: bool, output: Format) -> None:
    """Print the new job, or wait for it and exit 0 only if it succeeded."""
    if not wait:
        emit(job.model_dump(mode="json"), output, lambda _: _render_submitted(job))
        return
    if output is not Format.json:
        err_console.print(f"submitted {job.kind} job {job.id}", highlight=False)
    final = _wait(client, job, output)
    emit(final.model_dump(mode="json"), output, lambda _: _render_final(final))
    if final.state != "succeeded":
        raise typer.Exit(1)


def train(
    recipe: Annotated[
        str,
        typer.Option(
            "--recipe",
            "-r",
            help="image-generator, image-classifier, text-generator, tabular, script",
        ),
    ],
    dataset: DatasetOpt = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="register the result as model NAME")
    ] = None,
    param: ParamOpt = None,
    cpus: CpusOpt = None,
    gpus: GpusOpt = None,
    memory_gb: MemoryOpt = None,
    accelerator_type: AccelOpt = None,
    resource: ResourceOpt = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="data-parallel workers")] = 1,
    priority: PriorityOpt = 0,
    max_retries: RetriesOpt = 2,
    timeout: TimeoutOpt = None,
    code: Annotated[
        Path | None, typer.Option("--code", help="script: the folder of code to upload")
    ] = None,
    entrypoint: Annotated[
        str | None, typer.Option("--entrypoint", help="script: file to run (main.py, train.py)")
    ] = None,
    arg: Annotated[
        list[str] | None, typer.Option("--arg", help="script: an argument for it (repeatable)")
    ] = None,
    no_preempt: Annotated[
        bool,
        typer.Option(
            "--no-preempt", help="endpoints short of room may not preempt it (workspace admin)"
        ),
    ] = False,
    wait: WaitOpt = False,
    output: OutputOpt = Format.table,
) -> None:
    """Train a model with a built-in recipe, or your own script, on a dataset version."""
    _checked_ref(dataset, output)
    params = parse_params(param, output)
    res = build_resources(cpus, gpus, memory_gb, accelerator_type, resource, output)
    uploading = progress_bar(output, "upload code") if code is not None else nullcontext()
    with api_errors(output), Client() as client:
        with uploading as upload:
            job = client.jobs.train(
                recipe,
                dataset,
                model=model,
                params=params,
                resources=res,
                workers=workers,
                priority=priority,
                max_retries=max_retries,
                timeout_s=timeout,
                code_dir=code,
                entrypoint=entrypoint,
                args=arg,
                progress=upload,
                preemptible=not no_preempt,
            )
        _submitted(client, job, wait, output)


def _model_job(kind: JobKind, doc: str) -> Callable[..., None]:
    """`evaluate` and `predict-batch`: the same options around a model version."""

    def command(
        ref: Annotated[
            str,
            typer.Argument(metavar="NAME[:V]", help="model version: a number, latest, production"),
        ],
        dataset: DatasetOpt = None,
        param: ParamOpt = None,
        cpus: CpusOpt = None,
        gpus: GpusOpt = None,
        memory_gb: MemoryOpt = None,
        accelerator_type: AccelOpt = None,
        resource: ResourceOpt = None,
        priority: PriorityOpt = 0,
        max_retries: RetriesOpt = 2,
        timeout: TimeoutOpt = None,
        wait: WaitOpt = False,
        output: OutputOpt = Format.table,
    ) -> None:
        _checked_ref(ref, output, MODEL_REFS)
        _checked_ref(dataset, output)
        params = parse_params(param, output)
        res = build_resources(cpus, gpus, memory_gb, accelerator_type, resource, output)
        with api_errors(output), Client() as client:
            run = client.jobs.evaluate if kind == "evaluate" else client.jobs.predict
            job = run(
                ref,
                dataset,
                params=params,
                resources=res,
                priority=priority,
                max_retries=max_retries,
                timeout_s=timeout,
            )
            _submitted(client, job, wait, output)

    command.__doc__ = doc
    return command


evaluate = _model_job("evaluate", "Score a model version on a dataset's validation split.")
predict_batch = _model_job(
    "predict", "Run a model version over a whole dataset; predictions become the job's outputs."
)


def register(root: typer.Typer) -> None:
    root.command("train")(train)
    root.command("evaluate")(evaluate)
    root.command("predict-batch")(predict_batch)
