"""`gureum demo`: the end-to-end story on built-in sample data.

It starts the local cloud (or uses the running one), and walks a new team through what works
today: sample pictures -> a versioned dataset -> its statistics and preview -> a scoped key ->
a byte-identical pull -> an image generator trained on the cluster, its sample-quality metrics,
registered model version and a grid of generated pictures. Later chapters (deploy, sell) join
as they land.
"""

from __future__ import annotations

import filecmp
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from gureum.cli.cloud import HomeOpt, render_up, settings_for
from gureum.cli.datasets import progress_bar, render_version
from gureum.cli.output import Format, OutputOpt, console, emit, fail, kv_table
from gureum.client import Client
from gureum.client.base import load_credentials
from gureum.client.errors import GureumError
from gureum.local.results import UpError
from gureum.samples import write as write_sample
from gureum.schemas.jobs import JobOut

DATASET = "garments"
RECIPE = "image-generator"
MODEL = "garment-generator"
# About half a minute of training on one CPU of a laptop (plus the evaluation), at the
# recipe's full picture size: the samples look like garments.
TRAIN_PARAMS: dict[str, Any] = {"epochs": 40, "image_size": 32}
# `--quick` (tests, smoke checks): seconds, and the pictures are noise.
QUICK_PARAMS: dict[str, Any] = {"epochs": 1, "image_size": 8, "width": 8, "latent": 8}
SAMPLES_GRID = "samples/all.png"
# Shown first, in this order, when the evaluation reports them.
METRIC_ORDER = ("mmd", "mmd_reference", "class_accuracy", "val_loss", "bits_per_dim")
TRAIN_TIMEOUT_S = 30 * 60.0
# A job no scheduler has looked at for this long means the server runs no job controller.
UNSCHEDULED_S = 120.0
POLL_S = 0.5
INTERRUPTED = 130


class Unscheduled(GureumError):
    """The job sat in the queue untouched: the server is not running jobs."""


def _step(output: Format, text: str) -> None:
    if output is Format.table:
        console.rule(f"[bold]{text}")


def _same_tree(a: Path, b: Path) -> bool:
    left = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    right = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    if left != right:
        return False
    return all(filecmp.cmp(a / rel, b / rel, shallow=False) for rel in left)


def run_demo(client: Client, workdir: Path, output: Format, quick: bool = False) -> dict[str, Any]:
    """The story itself, against any running cloud; returns what it did, for `-o json`."""
    _step(output, "1. Built-in sample data: drawn garment pictures in class folders")
    pictures = workdir / "garments"
    shutil.rmtree(pictures, ignore_errors=True)
    sample = write_sample(DATASET, pictures)
    if output is Format.table:
        console.print(f"{sample.files} pictures of {', '.join(sample.classes)} in {pictures}")

    _step(output, "2. Push them as a dataset version")
    with progress_bar(output, "pushing") as progress:
        version = client.datasets.push(
            DATASET, pictures, message="sample garments", progress=progress
        )
    if output is Format.table:
        render_version(version)

    _step(output, "3. A key for a teammate's CI: developer role, 30 days")
    key = client.keys.create(name="demo-ci", role="developer", expires_in_days=30)
    if output is Format.table:
        console.print(
            f"key [bold]{key.key_id}[/bold] (role {key.role}); the secret is shown once and "
            "stored only as a hash"
        )

    _step(output, f"4. Pull {DATASET}:{version.version} back and compare")
    pulled = workdir / "pulled"
    shutil.rmtree(pulled, ignore_errors=True)
    client.datasets.pull(DATASET, version.version, pulled)
    identical = _same_tree(pictures, pulled)
    if not identical:
        fail(f"pulled files differ from {pictures}", output)
    if output is Format.table:
        console.print(f"{pulled}: every file byte-identical to the original")

    ref = f"{DATASET}:{version.version}"
    _step(output, f"5. Train an image generator on {ref} (on the cluster, one CPU)")
    trained = train_generator(client, ref, workdir, output, quick)

    if output is Format.table:
        console.print(
            "\nNext: `gureum jobs list`, `gureum jobs show "
            f"{trained['job']}`, `gureum models list`, `gureum datasets show garments`, "
            "`gureum audit`, `gureum status`, and `gureum down` to stop the cloud.",
            soft_wrap=True,
        )
    return {
        "dataset": ref,
        "files": version.file_count,
        "bytes": version.total_bytes,
        "classes": version.schema_.get("classes", {}),
        "split": version.split,
        "key_id": key.key_id,
        "pulled_identical": identical,
        "train": trained,
        "workdir": str(workdir),
    }


# -- chapter 5: training ---------------------------------------------------------------------


def train_generator(
    client: Client, dataset: str, workdir: Path, output: Format, quick: bool = False
) -> dict[str, Any]:
    """Train, follow, report: the job, its metrics, model version and sample grid."""
    params = QUICK_PARAMS if quick else TRAIN_PARAMS
    job = client.jobs.train(RECIPE, dataset, model=MODEL, params=params, resources={"cpus": 1})
    if output is Format.table:
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        console.print(f"job [bold]{job.id}[/bold]: {RECIPE} with {shown}", soft_wrap=True)
    t0 = time.monotonic()
    try:
        with _follower(output) as follow:
            job = client.jobs.wait(
                job.id, poll_s=POLL_S, timeout_s=TRAIN_TIMEOUT_S, on_update=follow
            )
    except Unscheduled as exc:
        client.jobs.cancel(job.id)
        fail(exc.message, output, exc.code)
    except KeyboardInterrupt:
        client.jobs.cancel(job.id)
        fail(f"interrupted; job {job.id} cancelled", output, "interrupted", INTERRUPTED)
    if job.state != "succeeded":
        fail(
            f"training job {job.id} {job.state}: {job.error or 'no reason given'} "
            f"(its log: `gureum jobs logs {job.id}`)",
            output,
            "job_failed",
        )
    seconds = time.monotonic() - t0
    metrics = _ordered(job.metrics)
    grid = _download_grid(client, job.id, workdir / "generated")
    if output is Format.table:
        console.print(f"trained in {seconds:.0f}s; registered [bold]{job.model_version}[/bold]")
        console.print(_metrics_table(metrics))
        console.print(
            "mmd: kernel MMD between generated and held-out pictures in a small CNN's feature "
            "space (lower is better; mmd_reference is what real pictures score)",
            soft_wrap=True,
        )
        console.print(f"samples, one row per class: {grid}", soft_wrap=True)
    return {
        "job": job.id,
        "state": job.state,
        "params": params,
        "model_version": job.model_version,
        "metrics": metrics,
        "samples": str(grid),
        "seconds": round(seconds, 1),
    }


def _ordered(metrics: dict[str, Any]) -> dict[str, Any]:
    first = {k: metrics[k] for k in METRIC_ORDER if k in metrics}
    return first | {k: v for k, v in metrics.items() if k not in first}


def _metrics_table(metrics: dict[str, Any]) -> Table:
    return kv_table({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in metrics.items()})


def _download_grid(client: Client, job_id: str, dest: Path) -> Path:
    listed = {o.path: o for o in client.jobs.outputs(job_id)}
    out = listed.get(SAMPLES_GRID)
    if out is None:
        raise GureumError(
            f"job {job_id} produced no {SAMPLES_GRID} (outputs: {', '.join(listed) or 'none'})",
            code="missing_output",
        )
    return client.jobs.download_output(job_id, out.path, dest, sha256=out.sha256)


def _state_line(job: JobOut) -> str:
    text: str = job.state
    if job.wait_reason:
        text += f": {job.wait_reason}"
    if job.attempt > 1:
        text += f" (attempt {job.attempt})"
    return text


@contextmanager
def _follower(output: Format) -> Iterator[Callable[[JobOut], None]]:
    """What `wait` calls on every poll: a line per state change and, at a terminal, a bar of
    the training steps with epoch, loss and ETA. Gives up on a job nothing schedules."""
    last = ""
    untouched_since: float | None = None
    bar: Progress | None = None
    task: TaskID | None = None
    if output is Format.table and console.is_terminal:
        # On the console the state lines go to, so that they print above the bar.
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        task = bar.add_task("training", total=None, detail="")

    def update(job: JobOut) -> None:
        nonlocal last, untouched_since
        line = _state_line(job)
        if line != last:
            last = line
            if output is Format.table:
                console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
        if job.state == "queued" and job.wait_reason is None and job.attempt == 0:
            now = time.monotonic()
            untouched_since = untouched_since or now
            if now - untouched_since > UNSCHEDULED_S:
                raise Unscheduled(
                    f"job {job.id} waited {UNSCHEDULED_S:.0f}s and nothing scheduled it: the "
                    "server runs no job controller (it starts one when GUREUM_RAY_ADDRESS "
                    "names a Ray cluster, as `gureum up` does); the job is cancelled",
                    code="not_scheduled",
                )
        else:
            untouched_since = None
        if bar is not None and task is not None:
            p = job.progress
            parts = [f"epoch {p.epoch}" if p.epoch is not None else job.state]
            if p.loss is not None:
                parts.append(f"loss {p.loss:.4g}")
            if p.eta_s is not None and job.state == "running":
                parts.append(f"ETA {p.eta_s:.0f}s")
            bar.update(task, completed=p.step, total=p.total_steps, detail="  ".join(parts))

    if bar is None:
        yield update
        return
    with bar:
        yield update


def demo_command(
    home: HomeOpt = None,
    port: Annotated[int | None, typer.Option("--port", help="API port")] = None,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="use this Ray cluster")
    ] = None,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="train for seconds, not a minute (the pictures are noise)"),
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Start the local cloud if needed and run the end-to-end story on sample data."""
    settings = settings_for(home, port=port, ray_address=ray_address)
    # Imported here for the same reason as in `gureum up`: the server stack is heavy.
    from gureum.local.up import up

    try:
        started = up(settings)
    except UpError as exc:
        fail(str(exc), output, "up_failed")
    if output is Format.table:
        render_up(started)
    creds = load_credentials(settings.home)
    if "api_key" not in creds:
        fail(f"no credentials under {settings.home}; set GUREUM_API_KEY", output, "no_credentials")
    workdir = settings.home / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with Client(started.url, creds["api_key"]) as client:
            result = run_demo(client, workdir, output, quick)
    except GureumError as exc:
        fail(exc.message, output, exc.code)
    result["url"] = started.url
    if output is Format.json:
        emit(result, output)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
