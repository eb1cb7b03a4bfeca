"""`gureum deploy`, `gureum endpoints ...` and `gureum predict`: models served as APIs.

Changes return at once (Ray Serve catches up in the background); `--wait` follows them to
ready. `predict` calls the data plane as a consumer would, with a consumer key when given.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from gureum.cli import capture
from gureum.cli.jobs import INTERRUPTED
from gureum.cli.output import (
    Format,
    OutputOpt,
    api_errors,
    console,
    emit,
    err_console,
    fail,
    kv_table,
    print_json,
    table,
)
from gureum.cli.refs import parse_ref
from gureum.cli.validations import SampleInputsOpt, read_sample_inputs
from gureum.client import Client
from gureum.client.serving import PredictResult, has_images, save_images
from gureum.schemas.endpoints import (
    EndpointConfig,
    EndpointEventOut,
    EndpointOut,
    EndpointStats,
    ShadowRecordOut,
)

app = typer.Typer(help="Endpoints: model versions served as metered APIs.", no_args_is_help=True)

MODEL_REFS = ("latest", "production")
# Shadow answers are shown cut to this many characters in tables.
SNIPPET = 40

NameArg = Annotated[str, typer.Argument(metavar="E", help="the endpoint's name")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="return once the change is live")]
TimeoutOpt = Annotated[
    float | None, typer.Option("--timeout", min=0, help="with --wait: give up after SECONDS")
]
CanaryOpt = Annotated[
    float | None,
    typer.Option("--canary", min=0, max=100, help="send PCT % of the traffic to the new version"),
]
MinOpt = Annotated[int | None, typer.Option("--min-replicas", min=0, help="0 scales to zero")]
MaxOpt = Annotated[int | None, typer.Option("--max-replicas", min=1)]
TargetOpt = Annotated[
    float | None,
    typer.Option("--target-requests", help="in-flight requests per replica to scale at"),
]
CpusOpt = Annotated[float | None, typer.Option("--cpus", min=0, help="CPUs per replica")]
GpusOpt = Annotated[float | None, typer.Option("--gpus", min=0, help="GPUs per replica")]
BatchOpt = Annotated[int | None, typer.Option("--max-batch-size", min=1)]
BatchWaitOpt = Annotated[
    float | None, typer.Option("--batch-wait-ms", min=0, help="how long a batch waits to fill")
]
IdleOpt = Annotated[
    float | None, typer.Option("--idle-timeout", min=0, help="seconds idle before scaling to 0")
]
ColdOpt = Annotated[
    float | None,
    typer.Option("--cold-start-timeout", help="seconds a request may wait for a replica to start"),
]
PrewarmOpt = Annotated[
    bool | None,
    typer.Option(
        "--prewarm/--no-prewarm",
        help="raise the minimum ahead of the peaks in the endpoint's usage history",
    ),
]
PrewarmLeadOpt = Annotated[
    float | None,
    typer.Option("--prewarm-lead", min=0, help="seconds ahead of a recorded peak to pre-warm"),
]


# Which setting each config flag changes (group None: top level of EndpointConfig).
CONFIG_FLAGS: dict[str, tuple[str | None, str]] = {
    "min_replicas": ("autoscaling", "min_replicas"),
    "max_replicas": ("autoscaling", "max_replicas"),
    "target_requests": ("autoscaling", "target_ongoing_requests"),
    "idle_timeout": ("autoscaling", "idle_timeout_s"),
    "cpus": ("resources", "cpus"),
    "gpus": ("resources", "gpus"),
    "max_batch_size": ("batching", "max_batch_size"),
    "batch_wait_ms": ("batching", "max_wait_ms"),
    "cold_start_timeout": (None, "cold_start_timeout_s"),
    "prewarm": ("autoscaling", "prewarm"),
    "prewarm_lead": ("autoscaling", "prewarm_lead_s"),
}


def config_changes(args: Mapping[str, Any]) -> dict[str, Any]:
    """The nested partial config that a command's config flags ask for (unset ones left out);
    ``args`` may hold other arguments too."""
    changes: dict[str, Any] = {}
    for flag, (group, field) in CONFIG_FLAGS.items():
        value = args.get(flag)
        if value is None:
            continue
        if group is None:
            changes[field] = value
        else:
            changes.setdefault(group, {})[field] = value
    return changes


# -- rendering ---------------------------------------------------------------------------------


def state_text(ep: EndpointOut) -> str:
    # A ready endpoint's message is shown only when pre-warm raised its minimum.
    shown = ep.state != "ready" or ep.message.startswith("pre-warmed")
    return f"{ep.state}: {ep.message}" if ep.message and shown else ep.state


def replicas_text(ep: EndpointOut) -> str:
    r = ep.replicas
    parts = [str(r.primary)]
    parts += [f"+{r.canary} canary"] if ep.canary is not None else []
    parts += [f"+{r.shadow} shadow"] if ep.shadow is not None else []
    return " ".join(parts)


def config_text(c: EndpointConfig) -> dict[str, str]:
    r, a, b, lim = c.resources, c.autoscaling, c.batching, c.canary_limits
    res = f"{r.cpus:g} CPU" + (f", {r.gpus:g} GPU" if r.gpus else "")
    res += f" ({r.accelerator_type})" if r.accelerator_type else ""
    res += f", {r.memory_gb:g} GB" if r.memory_gb else ""
    return {
        "resources": res + " per replica",
        "autoscaling": (
            f"{a.min_replicas}-{a.max_replicas} replicas at {a.target_ongoing_requests:g} "
            f"in flight each; up after {a.upscale_delay_s:g} s, down after "
            f"{a.downscale_delay_s:g} s, to zero after {a.idle_timeout_s:g} s idle"
        ),
        "pre-warm": (
            f"on: min replicas raised {a.prewarm_lead_s:g} s ahead of the peaks of the last "
            f"{a.prewarm_weeks} week(s)"
            if a.prewarm
            else "off"
        ),
        "batching": f"up to {b.max_batch_size} per call, waiting {b.max_wait_ms:g} ms",
        "cold start": f"requests wait up to {c.cold_start_timeout_s:g} s",
        "canary limits": (
            f"after {lim.min_requests} requests: error rate +{lim.max_error_rate_increase:.0%}, "
            f"p95 x{lim.max_latency_ratio:g}"
        ),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _endpoint_facts(ep: EndpointOut) -> dict[str, Any]:
    canary = f"{ep.canary.label} ({ep.canary.percent:g} %)" if ep.canary else None
    return {
        "name": ep.name,
        "state": state_text(ep),
        "model": ep.model_label,
        "recipe": ep.recipe,
        "canary": canary,
        "shadow": ep.shadow.label if ep.shadow else None,
        "previous": ep.previous.label if ep.previous else None,
        "url": ep.url,
        "replicas": replicas_text(ep),
        **config_text(ep.config),
        "updated": ep.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _stats_tables(s: EndpointStats) -> list[Table]:
    t = Table(
        "version", "role", "requests", "errors", "error rate", "p50 ms", "p95 ms", "p99 ms",
        box=box.SIMPLE_HEAD,
        title=f"last {s.window_s:g} s",
    )  # fmt: skip
    for v in s.versions:
        t.add_row(
            v.label, v.role, str(v.requests), str(v.errors), f"{v.error_rate:.2%}",
            _ms(v.p50_ms), _ms(v.p95_ms), _ms(v.p99_ms),
        )  # fmt: skip
    gauges = {
        "replicas": f"{s.replicas.primary} primary, {s.replicas.canary} canary, "
        f"{s.replicas.shadow} shadow",
        "cold starts": str(s.cold_starts)
        + (f" (last {s.last_cold_start_ms / 1000:.1f} s)" if s.last_cold_start_ms else ""),
        "queue depth": str(s.queue_depth),
        "batch size": "-" if s.batch_size_avg is None else f"{s.batch_size_avg:.1f} on average",
    }
    if s.engines:
        gauges["engine"] = ", ".join(f"{engine} ({role})" for role, engine in s.engines.items())
    return [t, kv_table(gauges)]


def _render_endpoint(ep: EndpointOut, stats: EndpointStats | None = None) -> None:
    console.print(kv_table({k: v for k, v in _endpoint_facts(ep).items() if v is not None}))
    for t in _stats_tables(stats) if stats is not None else []:
        console.print(t)


def _render_list(items: list[EndpointOut]) -> None:
    if not items:
        console.print("no endpoints: deploy one with `gureum deploy MODEL --endpoint E`")
        return
    rows = [
        {
            "name": e.name,
            "serving": _serving(e),
            "state": state_text(e),
            "replicas": replicas_text(e),
            "url": e.url,
        }
        for e in items
    ]
    console.print(table(rows))


def _events_table(events: list[EndpointEventOut]) -> Table:
    rows = [
        {"seq": e.seq, "time": e.time.strftime("%Y-%m-%d %H:%M:%S"), "kind": e.kind}
        | {"message": escape(e.message)}
        for e in events
    ]
    return table(rows, ["seq", "time", "kind", "message"])


def _snippet(text: str) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= SNIPPET else one_line[: SNIPPET - 1] + "…"


def _shadow_table(records: list[ShadowRecordOut]) -> Table:
    rows = [
        {
            "time": r.time.strftime("%H:%M:%S"),
            "shadow": r.model_label,
            "status": f"{r.status} / {r.primary_status}",
            "ms": f"{r.latency_ms:.1f} / {r.primary_latency_ms:.1f}",
            "answer": escape(_snippet(r.output)),
            "primary answer": escape(_snippet(r.primary_output)),
        }
        for r in records
    ]
    return table(rows)


@contextmanager
def _watching(name: str, output: Format) -> Iterator[Callable[[EndpointOut], None] | None]:
    """Show the endpoint's state while waiting; Ctrl-C stops the waiting, not the change."""
    try:
        if output is Format.json:
            yield None
        elif err_console.is_terminal:
            with err_console.status(f"{name}: waiting") as status:
                yield lambda ep: status.update(escape(f"{name} {state_text(ep)}"))
        else:
            last = [""]

            def line(ep: EndpointOut) -> None:
                text = f"{name} {state_text(ep)}"
                if text != last[0]:
                    err_console.print(escape(text), highlight=False, soft_wrap=True)
                    last[0] = text

            yield line
    except KeyboardInterrupt:
        err_console.print(
            f"\nstopped waiting; the change goes on. Follow it: gureum endpoints show {name}",
            highlight=False,
        )
        raise typer.Exit(INTERRUPTED) from None


def _serving(ep: EndpointOut) -> str:
    canary = f" + canary {ep.canary.label} ({ep.canary.percent:g} %)" if ep.canary else ""
    return ep.model_label + canary


def _done(ep: EndpointOut, verb: str, output: Format) -> None:
    text = f"endpoint [bold]{ep.name}[/bold] {verb}: {escape(state_text(ep))}, serving "
    text += escape(_serving(ep))
    emit(ep.model_dump(mode="json"), output, lambda _: console.print(text))


# -- gureum deploy -----------------------------------------------------------------------------


def deploy(
    model: Annotated[
        str, typer.Argument(metavar="NAME[:V]", help="model version: a number, latest, production")
    ],
    endpoint: Annotated[str, typer.Option("--endpoint", "-e", help="the endpoint's name")],
    min_replicas: MinOpt = None,
    max_replicas: MaxOpt = None,
    target_requests: TargetOpt = None,
    cpus: CpusOpt = None,
    gpus: GpusOpt = None,
    max_batch_size: BatchOpt = None,
    batch_wait_ms: BatchWaitOpt = None,
    idle_timeout: IdleOpt = None,
    cold_start_timeout: ColdOpt = None,
    prewarm: PrewarmOpt = None,
    prewarm_lead: PrewarmLeadOpt = None,
    canary: CanaryOpt = None,
    shadow: Annotated[
        bool, typer.Option("--shadow", help="mirror traffic to it; its answers are only recorded")
    ] = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = None,
    sample_inputs: SampleInputsOpt = None,
    capture_rate: Annotated[
        float | None,
        typer.Option(
            "--capture",
            min=0,
            max=1,
            metavar="RATE",
            help="capture this share of the calls for retraining (see `endpoints capture`)",
        ),
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Serve a model version as endpoint E, or roll E over to it (or canary, or shadow it).
    Its first new replica smoke-tests it before it takes traffic; a failure keeps E as it was."""
    parse_ref(model, output, MODEL_REFS)
    changes = config_changes(locals())
    samples = read_sample_inputs(sample_inputs, output)
    watching = _watching(endpoint, output) if wait else nullcontext()
    with api_errors(output), Client() as client, watching as on_update:
        ep = client.endpoints.deploy(
            endpoint,
            model,
            changes=changes,
            canary_percent=canary,
            shadow=shadow,
            wait=wait,
            timeout_s=timeout,
            on_update=on_update,
            sample_inputs=samples,
            capture=capture_rate,
        )
    if wait:
        _done(ep, "is live", output)
        return
    _done(ep, "accepted", output)
    if output is not Format.json:
        console.print(f"follow it with: gureum endpoints show {ep.name}", highlight=False)


# -- gureum endpoints ... ----------------------------------------------------------------------


@app.command("list")
def list_cmd(output: OutputOpt = Format.table) -> None:
    """The workspace's endpoints."""
    with api_errors(output), Client() as client:
        items = client.endpoints.list()
    emit([e.model_dump(mode="json") for e in items], output, lambda _: _render_list(items))


@app.command("show")
def show_cmd(
    name: NameArg,
    window: Annotated[
        float, typer.Option("--window", min=1, help="statistics over the last SECONDS")
    ] = 3600,
    output: OutputOpt = Format.table,
) -> None:
    """An endpoint, its replicas and its statistics per version."""
    with api_errors(output), Client() as client:
        ep = client.endpoints.get(name)
        stats = client.endpoints.stats(name, window_s=window)
    data = ep.model_dump(mode="json") | {"stats": stats.model_dump(mode="json")}
    emit(data, output, lambda _: _render_endpoint(ep, stats))


@app.command("update")
def update_cmd(
    name: NameArg,
    min_replicas: MinOpt = None,
    max_replicas: MaxOpt = None,
    target_requests: TargetOpt = None,
    cpus: CpusOpt = None,
    gpus: GpusOpt = None,
    max_batch_size: BatchOpt = None,
    batch_wait_ms: BatchWaitOpt = None,
    idle_timeout: IdleOpt = None,
    cold_start_timeout: ColdOpt = None,
    prewarm: PrewarmOpt = None,
    prewarm_lead: PrewarmLeadOpt = None,
    canary: CanaryOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Change settings (the others stay) or the canary's share, keeping the versions."""
    changes = config_changes(locals())
    if not changes and canary is None:
        fail("nothing to change: give settings (see --help) or --canary", output, "bad_request")
    with api_errors(output), Client() as client:
        ep = client.endpoints.configure(name, changes, canary_percent=canary)
    emit(ep.model_dump(mode="json"), output, lambda _: _render_endpoint(ep))


@app.command("rollback")
def rollback_cmd(name: NameArg, output: OutputOpt = Format.table) -> None:
    """Drop the canary, or with none return to the version served before."""
    with api_errors(output), Client() as client:
        ep = client.endpoints.rollback(name)
    _done(ep, "rolled back", output)


@app.command("promote")
def promote_cmd(name: NameArg, output: OutputOpt = Format.table) -> None:
    """Make the canary the version that serves all traffic."""
    with api_errors(output), Client() as client:
        ep = client.endpoints.promote(name)
    _done(ep, "promoted", output)


@app.command("delete")
def delete_cmd(
    name: NameArg,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Stop serving E and remove it; its usage and cost records stay."""
    with api_errors(output), Client() as client:
        ep = client.endpoints.delete(name)
        if wait:
            with _watching(name, output) as on_update:
                client.endpoints.wait(name, timeout, on_update=on_update)
    if wait:
        emit({"name": name, "deleted": True}, output, lambda _: console.print(f"deleted {name}"))
        return
    _done(ep, "is being deleted", output)


@app.command("events")
def events_cmd(
    name: NameArg,
    after: Annotated[int, typer.Option("--after", min=0, help="only events after this seq")] = 0,
    output: OutputOpt = Format.table,
) -> None:
    """The endpoint's timeline: deploys, rollovers, canary verdicts, failures."""
    with api_errors(output), Client() as client:
        events = client.endpoints.events(name, after_seq=after)
    emit(
        [e.model_dump(mode="json") for e in events],
        output,
        lambda _: console.print(_events_table(events) if events else "no events"),
    )


@app.command("shadow")
def shadow_cmd(
    name: NameArg,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    output: OutputOpt = Format.table,
) -> None:
    """What the shadow answered next to the primary, for the latest mirrored requests."""
    with api_errors(output), Client() as client:
        records = client.endpoints.shadow(name, limit=limit)
    emit(
        [r.model_dump(mode="json") for r in records],
        output,
        lambda _: console.print(_shadow_table(records) if records else "no shadow records"),
    )


# -- gureum predict ----------------------------------------------------------------------------


def read_inputs(text: str, output: Format = Format.table) -> list[Any]:
    """``--input``: JSON, or @FILE (@- for stdin). A list is the inputs, an object with
    "inputs" is the whole request, any other value is one input."""
    source = "input"
    if text.startswith("@"):
        source = text[1:] or "-"
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    try:
        value = json.loads(text)
    except ValueError as exc:
        fail(f"{source} is not JSON: {exc}", output, "bad_request")
    if isinstance(value, dict) and "inputs" in value:
        value = value["inputs"]
    return value if isinstance(value, list) else [value]


def _elided(outputs: list[Any]) -> list[Any]:
    """Each image blob replaced by a note: base64 is of no use on a terminal."""

    def note(blob: Any) -> str:
        return f"<{len(str(blob)) * 3 // 4} bytes of PNG: use --save DIR>"

    return [o | {"images": [note(b) for b in o["images"]]} if has_images(o) else o for o in outputs]


def _render_result(r: PredictResult, outputs: list[Any]) -> None:
    cold = f", cold start {(r.cold_start_ms or 0) / 1000:.1f} s" if r.cold_start else ""
    unit = escape(r.unit) + ("s" if r.unit and r.units != 1 else "")
    console.print(
        f"[bold]{escape(r.model)}[/bold]: {len(outputs)} output(s), metered {r.units:g} {unit}"
        f", {r.latency_ms:.0f} ms{cold}",
        highlight=False,
    )
    rows = [
        {"#": i, "output": escape(o if isinstance(o, str) else json.dumps(o))}
        for i, o in enumerate(outputs)
    ]
    console.print(table(rows, ["#", "output"]))


def predict(
    endpoint: NameArg,
    input_: Annotated[
        str, typer.Option("--input", "-i", help="JSON, or @FILE with JSON (@- reads stdin)")
    ],
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            envvar="GUREUM_CONSUMER_KEY",
            show_default=False,
            help="consumer key (default: $GUREUM_CONSUMER_KEY, else your API key)",
        ),
    ] = None,
    save: Annotated[
        Path | None, typer.Option("--save", help="write returned images into this folder")
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Call endpoint E as a consumer would, through its data plane."""
    with api_errors(output):
        inputs = read_inputs(input_, output)
        with Client() as client:
            result = client.endpoints.predict(endpoint, inputs, key=key)
        if save is not None:
            outputs = save_images(result.outputs, save, endpoint)
        else:
            outputs = result.outputs if output is Format.json else _elided(result.outputs)
    if output is Format.json:
        print_json(dataclasses.asdict(result) | {"outputs": outputs})
    else:
        _render_result(result, outputs)


def register(root: typer.Typer) -> None:
    capture.register(app)
    root.command("deploy")(deploy)
    root.command("predict")(predict)
    root.add_typer(app, name="endpoints")
