"""`gureum demo`: the end-to-end story on built-in sample data.

It starts the local cloud (or uses the running one), and walks a new team through what works
today: sample pictures -> a versioned dataset -> its statistics and preview -> a scoped key ->
a byte-identical pull -> an image generator trained on the cluster, its sample-quality metrics,
registered model version and a grid of generated pictures -> that version served as an
endpoint that scales to zero -> a paying consumer with a plan, calling it -> the usage, the
invoice and what the endpoint cost -> the consumer's calls captured and rated, the best-rated
pictures curated into the next dataset version -> what the same hours would have cost on
hardware bought for their peak. Run again, it adds versions and rolls the endpoint over.
"""

from __future__ import annotations

import filecmp
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from gureum.cli.cloud import HomeOpt, render_up, settings_for
from gureum.cli.datasets import progress_bar, render_version
from gureum.cli.demo_flywheel import predict, rate, turn_the_loop
from gureum.cli.demo_generator import DIFFUSION, Choice, choose, probe
from gureum.cli.demo_plan import budget_summary, ensure_budget, plan_summary
from gureum.cli.output import Format, OutputOpt, console, emit, fail, kv_table, table
from gureum.client import Client
from gureum.client.base import load_credentials
from gureum.client.errors import ConflictError, GureumError
from gureum.client.serving import EndpointClient, save_images
from gureum.local.results import UpError
from gureum.samples import write as write_sample
from gureum.schemas.endpoints import EndpointOut
from gureum.schemas.jobs import JobOut

DATASET = "garments"
RECIPE = "image-generator"
MODEL = "garment-generator"
# About half a minute of training on one CPU of a laptop (plus the evaluation), at the
# recipe's full picture size: the samples look like garments.
TRAIN_PARAMS: dict[str, Any] = {"epochs": 40, "image_size": 32}
# `--quick` (tests, smoke checks): seconds, and the pictures are noise.
QUICK_PARAMS: dict[str, Any] = {"epochs": 1, "image_size": 8, "width": 8, "latent": 8}
# What the demo would train if diffusion were the better choice here (see demo_generator).
DIFFUSION_PARAMS: dict[str, Any] = {"epochs": 40, "image_size": 32}
QUICK_DIFFUSION_PARAMS: dict[str, Any] = {"epochs": 1, "image_size": 16, "width": 8}
VAE_BATCH = 32  # image-generator's default batch size
DIFFUSION_BATCH = 8  # image-diffusion's
SAMPLES_GRID = "samples/all.png"
# Shown first, in this order, when the evaluation reports them.
METRIC_ORDER = ("mmd", "mmd_reference", "class_accuracy", "val_loss", "bits_per_dim")
TRAIN_TIMEOUT_S = 30 * 60.0
# A job no scheduler has looked at for this long means the server runs no job controller.
UNSCHEDULED_S = 120.0
POLL_S = 0.5
INTERRUPTED = 130

ENDPOINT = "garments"
# Half a CPU per replica, none at all after three idle minutes: the next call starts one.
ENDPOINT_CHANGES: dict[str, Any] = {
    "resources": {"cpus": 0.5},
    "autoscaling": {"min_replicas": 0, "max_replicas": 2, "idle_timeout_s": 180},
}
DEPLOY_TIMEOUT_S = 5 * 60.0
PLAN = "studio"
PRICE_PER_IMAGE = 0.02
RATE_LIMIT = 5.0  # requests per second
MONTHLY_QUOTA = 1000
CONSUMER = "atelier-lee"
# (class, seed) of each call; two pictures a call.
CALLS = (("dress", 1), ("dress", 2), ("shirt", 1), ("trousers", 1))
IMAGES_PER_CALL = 2
# Replicas ship usage about every second; it should show well within this.
USAGE_TIMEOUT_S = 60.0


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

    _step(output, "3. A budget, and a key for a teammate's CI: developer role, 30 days")
    ensure_budget(client, output)
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
    choice = pick_generator(int(version.split.get("train", 0)), output, quick)
    trained = train_generator(client, ref, workdir, output, quick, choice.recipe)

    _step(output, f"6. Deploy {trained['model_version']} as endpoint {ENDPOINT}")
    endpoint = deploy_generator(client, trained["model_version"], output)

    _step(output, f"7. Sell it: plan {PLAN} and consumer {CONSUMER} with an API key")
    consumer, token = sign_up(client, output)

    _step(output, f"8. Call {ENDPOINT} as {CONSUMER}, as a customer's code would")
    classes = sorted(version.schema_.get("classes", {}))
    calls = [(c, seed) for c, seed in CALLS if c in classes] or [(classes[0], 1)]
    since = datetime.now(UTC) - timedelta(seconds=1)
    assert endpoint.url is not None  # a ready endpoint has one
    captured_before = client.endpoints.capture(ENDPOINT).captured
    served = call_endpoint(endpoint.url, token, calls, Path(trained["samples"]).parent, output)

    _step(output, "9. Usage, revenue and cost")
    money = account(client, since, len(served), endpoint.config.resources.cpus, output)

    _step(output, f"10. The flywheel: {CONSUMER} rates the pictures and corrects a label")
    ratings = rate(client, endpoint.url, token, ENDPOINT, served, captured_before, classes)
    if output is Format.table:
        summary = client.endpoints.feedback(ENDPOINT)
        console.print(
            f"{len(served)} calls captured; {summary.count} rated in all, mean "
            f"{summary.mean_rating or 0:.1f}"
        )

    _step(output, "11. A pipeline retrains: curate, train, evaluate, canary, decide")
    loop = turn_the_loop(client, endpoint.url, token, ENDPOINT, MODEL, DATASET, output, quick)

    _step(output, "12. Spend against the budget; the same hours on hardware bought for the peak")
    budget = budget_summary(client, output)
    plan = plan_summary(client, workdir, output)

    if output is Format.table:
        console.print(
            "\nNext: `gureum jobs list`, `gureum jobs show "
            f"{trained['job']}`, `gureum models list`, `gureum endpoints show {ENDPOINT}`, "
            "`gureum usage`, `gureum invoices`, `gureum costs`, `gureum plan`, `gureum audit`, "
            "`gureum status`, and `gureum down` to stop the cloud.",
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
        "generator": choice.as_dict(),
        "train": trained,
        "endpoint": {
            "name": endpoint.name,
            "model_version": endpoint.model_label,
            "state": endpoint.state,
            "url": endpoint.url,
            "config": endpoint.config.model_dump(mode="json"),
        },
        "consumer": consumer,
        "calls": served,
        **money,
        "flywheel": {"ratings": ratings, **loop},
        "budget": budget,
        "plan": plan,
        "workdir": str(workdir),
    }


# -- chapter 5: training ---------------------------------------------------------------------


def pick_generator(n_train: int, output: Format, quick: bool = False) -> Choice:
    """The VAE or diffusion, whichever gives the better pictures in the demo's training
    budget here: the recorded benchmark and a probe of this machine's step times decide."""
    params = QUICK_PARAMS if quick else TRAIN_PARAMS
    vae_steps = int(params["epochs"]) * max(1, math.ceil(n_train / VAE_BATCH))
    choice = choose(vae_steps, probe(int(params["image_size"]), VAE_BATCH, DIFFUSION_BATCH))
    if output is Format.table:
        name = (
            "image-diffusion (a diffusion UNet)"
            if choice.recipe == DIFFUSION
            else ("image-generator (a conditional VAE)")
        )
        verdict, _, rest = choice.reason.partition(": ")
        recorded, _, here = rest.rpartition("; here ")
        console.print(
            f"generator: [bold]{name}[/bold], the better pictures in this budget "
            f"({escape(verdict)})\n  measured {escape(recorded)}\n  here {escape(here)}",
            soft_wrap=True,
            highlight=False,
        )
    return choice


def train_generator(
    client: Client,
    dataset: str,
    workdir: Path,
    output: Format,
    quick: bool = False,
    recipe: str = RECIPE,
) -> dict[str, Any]:
    """Train, follow, report: the job, its metrics, model version and sample grid."""
    if recipe == DIFFUSION:
        params = QUICK_DIFFUSION_PARAMS if quick else DIFFUSION_PARAMS
    else:
        params = QUICK_PARAMS if quick else TRAIN_PARAMS
    job = client.jobs.train(recipe, dataset, model=MODEL, params=params, resources={"cpus": 1})
    if output is Format.table:
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        console.print(f"job [bold]{job.id}[/bold]: {recipe} with {shown}", soft_wrap=True)
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
            "mmd: KID (unbiased kernel MMD^2) between generated and held-out pictures in the "
            "garment classifier's feature space (lower is better; about 0 for real pictures; "
            "mmd_reference is what real pictures score, mmd_std its spread)",
            soft_wrap=True,
        )
        console.print(f"samples, one row per class: {grid}", soft_wrap=True)
    return {
        "job": job.id,
        "state": job.state,
        "recipe": recipe,
        "params": params,
        "model_version": job.model_version,
        "metrics": metrics,
        "samples": str(grid),
        "seconds": round(seconds, 1),
    }


# -- chapters 6 to 9: serve, sell, call, account ----------------------------------------------


def deploy_generator(client: Client, model_version: str, output: Format) -> EndpointOut:
    """Serve the version (a new endpoint, or a rollover with no failed request) and wait."""
    last = [""]

    def follow(ep: EndpointOut) -> None:
        line = ep.state + (f": {ep.message}" if ep.message and ep.state != "ready" else "")
        if line != last[0] and output is Format.table:
            last[0] = line
            console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)

    target = int(model_version.rsplit(":", 1)[1])
    # Every call is captured (inputs and outputs) for the flywheel chapter.
    client.endpoints.deploy(ENDPOINT, model_version, changes=ENDPOINT_CHANGES, capture=1.0)
    # Ready with the new version, or ready with the old one when the new one failed to load
    # (the old keeps serving; the endpoint's message says why).
    ep = client.endpoints.wait(ENDPOINT, DEPLOY_TIMEOUT_S, on_update=follow)
    if ep is None or ep.version != target:
        why = ep.message if ep is not None and ep.message else "it was deleted meanwhile"
        raise GureumError(f"{model_version} did not go live on {ENDPOINT}: {why}", code="deploy")
    if output is Format.table:
        a = ep.config.autoscaling
        console.print(
            f"endpoint [bold]{ep.name}[/bold] serves {ep.model_label} at {ep.url}\n"
            f"  {ep.config.resources.cpus:g} CPU per replica, {a.min_replicas}-{a.max_replicas} "
            f"replicas; after {a.idle_timeout_s:g} s without requests it scales to zero and "
            "the next request waits for a replica to start (a cold start)",
            soft_wrap=True,
        )
    return ep


def sign_up(client: Client, output: Format) -> tuple[dict[str, Any], str]:
    """The plan and the consumer, made once; a later run gives the consumer another key."""
    with suppress(ConflictError):
        client.plans.create(
            PLAN,
            price_per_unit=PRICE_PER_IMAGE,
            rate_limit=RATE_LIMIT,
            monthly_quota=MONTHLY_QUOTA,
            endpoints=[ENDPOINT],
        )
    try:
        created = client.consumers.create(CONSUMER, plan=PLAN)
        key_id, token = created.key_id, created.token
    except ConflictError:
        key = client.consumers.create_key(CONSUMER)
        key_id, token = key.key_id, key.token
    plan = client.plans.get(PLAN)
    if output is Format.table:
        console.print(
            f"plan [bold]{PLAN}[/bold]: {plan.price_per_unit:g} {plan.currency} per image, "
            f"{plan.rate_limit:g} requests/s, {plan.monthly_quota} requests a month, "
            f"endpoints {', '.join(plan.endpoints)}\n"
            f"consumer [bold]{CONSUMER}[/bold], key {key_id} (shown once, stored as a hash; "
            f"it calls endpoints only, never this API):\n  {token}",
            soft_wrap=True,
        )
    return {"name": CONSUMER, "plan": PLAN, "key_id": key_id}, token


def call_endpoint(
    url: str, token: str, calls: list[tuple[str, int]], folder: Path, output: Format
) -> list[dict[str, Any]]:
    """The data plane with the consumer's key; the PNGs go next to the training samples."""
    for old in folder.glob("endpoint-*.png"):
        old.unlink()  # an earlier run's
    served = []
    with EndpointClient(url, token) as endpoint:
        for cls, seed in calls:
            item = {"class": cls, "seed": seed, "count": IMAGES_PER_CALL}
            result = predict(endpoint, [item])
            saved = save_images(result.outputs, folder, f"endpoint-{cls}")
            images = [p for out in saved for p in out.get("images", [])]
            served.append(
                {
                    "class": cls,
                    "seed": seed,
                    "model": result.model,
                    "images": images,
                    "units": result.units,
                    "latency_ms": round(result.latency_ms, 1),
                    "cold_start_ms": result.cold_start_ms,
                    "request_id": result.request_id,
                }
            )
            if output is Format.table:
                ms = result.cold_start_ms
                cold = f", a cold start of {ms / 1000:.1f} s" if ms else ""
                text = f"{len(images)} images from {result.model} in {result.latency_ms:.0f} ms"
                console.print(f"  {cls} seed {seed}: {text}{cold}", highlight=False)
    if output is Format.table:
        console.print(f"saved as {folder}/endpoint-*.png", soft_wrap=True)
    return served


def account(
    client: Client, since: datetime, calls: int, cpus: float, output: Format
) -> dict[str, Any]:
    """Wait for the calls to be metered, then the month's usage, invoice and cost."""
    deadline = time.monotonic() + USAGE_TIMEOUT_S
    while True:
        metered = client.usage.report(
            consumer=CONSUMER, endpoint=ENDPOINT, since=since, group_by="consumer"
        )
        seen = sum(r.requests for r in metered.rows)
        if seen >= calls:
            break
        if time.monotonic() > deadline:
            raise GureumError(
                f"{seen} of the {calls} calls were metered after {USAGE_TIMEOUT_S:.0f} s; "
                f"the rest stay spooled by the replicas (`gureum usage` shows them later)",
                code="usage_missing",
            )
        time.sleep(POLL_S)
    now = datetime.now(UTC)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    usage = client.usage.report(since=month, group_by=["consumer", "endpoint"])
    invoices = client.invoices.list(consumer=CONSUMER).invoices
    costs = client.costs.report()
    ep_cost = next((e for e in costs.endpoints if e.endpoint == ENDPOINT), None)
    if output is Format.table:
        console.print(f"usage in {now:%Y-%m}, by consumer and endpoint:")
        rows = [
            {
                "consumer": r.consumer,
                "endpoint": r.endpoint,
                "requests": r.requests,
                "units": f"{r.units:g} {r.unit}",
                "amount": f"{r.amount:.2f} {r.currency}",
                "p50 ms": f"{r.latency_p50_ms:.0f}",
            }
            for r in usage.rows
        ]
        console.print(table(rows))
        for inv in invoices:
            console.print(
                f"invoice {inv.period} for [bold]{inv.consumer}[/bold] (plan {inv.plan}): "
                f"{inv.requests} requests, total [bold]{inv.total:.2f} {inv.currency}[/bold]"
            )
        if ep_cost is not None:
            c, t = costs.prices.currency, costs.totals
            hourly = cpus * costs.prices.cpu_hour
            console.print(f"endpoint {ENDPOINT} in {now:%Y-%m}, and the whole workspace:")
            console.print(
                kv_table(
                    {
                        "revenue": f"{ep_cost.revenue:.4g} {c} from {ep_cost.requests} requests",
                        "cost": f"{ep_cost.cost:.4g} {c} for {ep_cost.replica_hours:.4g} "
                        f"replica-hours ({hourly:.4g} {c} an hour while a replica runs, "
                        "nothing at zero replicas)",
                        "margin": f"{ep_cost.margin:.4g} {c}",
                        "workspace": f"cost {t.cost:.4g} {c} (jobs {t.jobs:.4g}, endpoints "
                        f"{t.endpoints:.4g}, storage {t.storage:.4g}), margin {t.margin:.4g}",
                    }
                )
            )
            console.print(
                f"replica time is metered every 15 s and priced at {costs.prices.cpu_hour:g} "
                f"{c} per CPU-hour (GUREUM_PRICE_*); `gureum costs` shows it all",
                style="dim",
                soft_wrap=True,
            )
    return {
        "usage": {"this_run": seen, "month": usage.model_dump(mode="json")["rows"]},
        "invoice": invoices[0].model_dump(mode="json") if invoices else None,
        "cost": {
            "endpoint": ep_cost.model_dump(mode="json") if ep_cost else None,
            "totals": costs.totals.model_dump(mode="json"),
        },
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
