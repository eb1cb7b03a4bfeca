"""`gureum models ...`: the model registry over the SDK: list, show, import, gate, promote."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer

from gureum.cli import validations
from gureum.cli.datasets import progress_bar
from gureum.cli.output import Format, OutputOpt, api_errors, console, emit, fail, kv_table, table
from gureum.cli.refs import parse_ref
from gureum.client import Client
from gureum.client.models import UNSET, Unset
from gureum.schemas.models import MetricGate, ModelOut, ModelVersionOut, MustBeat, PromoteOut, Stage

app = typer.Typer(help="Model registry: versions, lineage, gates and stages.", no_args_is_help=True)

RefArg = Annotated[
    str, typer.Argument(help="NAME or NAME:VERSION (a number, 'latest' or 'production')")
]
_GATE = re.compile(r"^\s*([^<>=\s]+)\s*(>=|<=|>|<)\s*(\S+)\s*$")
_NAMED_REFS = ("latest", "production")


def parse_gate(text: str, output: Format = Format.table, measured: bool = False) -> MetricGate:
    """``metric>=0.9`` (or <=, >, <) as a gate; ``measured``: only platform-measured metrics."""
    match = _GATE.match(text)
    if match is None:
        fail(f"gate {text!r} is not METRIC OP NUMBER (e.g. accuracy>=0.9)", output, "bad_request")
    metric, op, number = match.groups()
    try:
        threshold = float(number)
    except ValueError:
        fail(f"gate {text!r}: {number!r} is not a number", output, "bad_request")
    return MetricGate.model_validate(
        {"metric": metric, "op": op, "threshold": threshold, "measured": measured}
    )


def _gates_text(m: ModelOut) -> str:
    parts = [
        f"{g.metric} {g.op} {g.threshold:g}" + (" (measured)" if g.measured else "")
        for g in m.gates
    ]
    must = m.must_beat_production
    if must is not None:
        better = "higher" if must.higher_is_better else "lower"
        measured = ", measured" if must.measured else ""
        parts.append(f"beat production on {must.metric} ({better} is better{measured})")
    return ", ".join(parts) or "-"


def _version_row(v: ModelVersionOut) -> dict[str, Any]:
    return {
        "version": v.version,
        "stage": v.stage,
        "format": v.format,
        "recipe": v.recipe,
        "dataset": v.dataset,
        "metrics": v.metrics,
        "metrics_source": v.metrics_source,
        "created_by": v.created_by,
        "created_at": v.created_at.isoformat(timespec="seconds"),
    }


def _render_list(items: list[ModelOut]) -> None:
    if not items:
        console.print("no models yet: `gureum models import NAME PATH` or train one")
        return
    rows = [
        {
            "name": m.name,
            "versions": m.version_count,
            "latest": m.latest_version,
            "production": m.production_version,
            "gates": _gates_text(m),
        }
        for m in items
    ]
    console.print(table(rows))


@app.command("list")
def list_cmd(
    catalog: Annotated[
        bool,
        typer.Option(
            "--catalog",
            help="what the workspace can deploy: servable versions, recipes and import "
            "formats, with their task and what a replica needs",
        ),
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    """List the workspace's models (or, with --catalog, what it can deploy)."""
    if catalog:
        validations.catalog_cmd(output)
        return
    with api_errors(output), Client() as client:
        items = client.models.list()
    emit([m.model_dump(mode="json") for m in items], output, lambda _: _render_list(items))


def _render_model(m: ModelOut, versions: list[ModelVersionOut]) -> None:
    facts = {
        "name": m.name,
        "description": m.description or "-",
        "production": m.production_version,
        "gates": _gates_text(m),
    }
    console.print(kv_table(facts))
    if versions:
        console.print(table([_version_row(v) for v in versions]))


def _render_version(v: ModelVersionOut, files: list[dict[str, Any]]) -> None:
    data = v.model_dump(mode="json")
    console.print(kv_table(data))
    if files:
        console.print(table(files, ["path", "size", "sha256"]))


@app.command("show")
def show_cmd(ref: RefArg, output: OutputOpt = Format.table) -> None:
    """A model with its versions (NAME), or one version with lineage and files (NAME:V)."""
    name, version = parse_ref(ref, output, _NAMED_REFS)
    with api_errors(output), Client() as client:
        if version is None:
            model = client.models.get(name)
            versions = client.models.versions(name)
        else:
            ver = client.models.version(name, version)
            files = [f.model_dump(mode="json") for f in client.models.files(name, ver.version)]
            report = validations.last_report(client, name, ver.version)
    if version is None:
        data = model.model_dump(mode="json")
        data["versions"] = [v.model_dump(mode="json") for v in versions]
        emit(data, output, lambda _: _render_model(model, versions))
    else:
        data = ver.model_dump(mode="json")
        data["files"] = files
        data["validation"] = report.model_dump(mode="json") if report else None

        def render(_: Any) -> None:
            _render_version(ver, files)
            if report is not None:
                validations.render_report(report)

        emit(data, output, render)


@app.command("import")
def import_cmd(
    name: Annotated[str, typer.Argument(help="model name (created on first version)")],
    path: Annotated[
        str,
        typer.Argument(
            help="a .safetensors, .pt/.pth/.bin, .onnx file, a Hugging Face model folder, or "
            "hf://ORG/MODEL[@REVISION] to pull one from the Hugging Face hub; with --predictor, "
            "the weights it loads (any file or folder)"
        ),
    ],
    message: Annotated[str, typer.Option("--message", "-m", help="where it came from")] = "",
    predictor: Annotated[
        Path | None,
        typer.Option(
            "--predictor",
            help="a folder with predictor.py (a gureum.serve.Predictor) that serves PATH; "
            "registered by a script job on the cluster",
        ),
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Register external weights as a new version of model NAME (format told from PATH)."""
    with api_errors(output), Client() as client, progress_bar(output, f"import {name}") as progress:
        if predictor is not None:
            ver = client.models.import_predictor(
                name, path, predictor, message=message, progress=progress
            )
        else:
            ver = client.models.import_weights(name, path, message=message, progress=progress)
    emit(
        ver.model_dump(mode="json"),
        output,
        lambda _: console.print(
            f"imported [bold]{ver.model}:{ver.version}[/bold] ({ver.format}, "
            + (f"served by {ver.recipe}, " if ver.recipe else "")
            + f"{ver.file_count} file(s), {ver.total_bytes} bytes)"
        ),
    )


@app.command("gate")
def gate_cmd(
    name: str,
    require: Annotated[
        list[str] | None,
        typer.Option("--require", help="a metric gate like 'accuracy>=0.9' (repeatable)"),
    ] = None,
    clear_gates: Annotated[bool, typer.Option("--clear-gates", help="remove all gates")] = False,
    must_beat: Annotated[
        str | None, typer.Option("--must-beat", help="metric the candidate must beat production on")
    ] = None,
    lower_is_better: Annotated[
        bool, typer.Option("--lower-is-better", help="for --must-beat: lower wins (e.g. loss)")
    ] = False,
    no_must_beat: Annotated[
        bool, typer.Option("--no-must-beat", help="drop the must-beat-production rule")
    ] = False,
    measured: Annotated[
        bool,
        typer.Option(
            "--measured",
            help="these gates pass only on metrics the platform measured (a built-in "
            "recipe's train job), not on metrics reported at import",
        ),
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Set the gates a version of NAME must pass to be promoted to production (admin only)."""
    gates = [parse_gate(g, output, measured) for g in require or []]
    must: MustBeat | Unset | None = UNSET
    if must_beat is not None:
        must = MustBeat(metric=must_beat, higher_is_better=not lower_is_better, measured=measured)
    elif no_must_beat:
        must = None
    new_gates = gates if gates or clear_gates else None
    with api_errors(output), Client() as client:
        model = client.models.update(name, gates=new_gates, must_beat_production=must)
    emit(model.model_dump(mode="json"), output, lambda _: _render_model(model, []))


def _render_promoted(result: PromoteOut) -> None:
    v = result.version
    line = f"{v.model}:{v.version}: {result.previous_stage} -> [bold]{v.stage}[/bold]"
    if result.forced:
        line += " [yellow](forced)[/yellow]"
    console.print(line)
    for c in result.checks:
        mark = "[green]pass[/green]" if c.passed else "[red]FAIL[/red]"
        console.print(f"  {mark} {c.reason}")
    if result.archived:
        console.print(f"  archived: {', '.join(f'v{n}' for n in result.archived)}")


@app.command("promote")
def promote_cmd(
    ref: RefArg,
    stage: Annotated[Stage, typer.Option("--stage", "-s", help="none|staging|production|archived")],
    force: Annotated[
        bool, typer.Option("--force", help="skip the gates (needs the admin role)")
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Move NAME:V to a stage; production only if it passes the model's gates."""
    name, version = parse_ref(ref, output, _NAMED_REFS)
    if version is None:
        fail(f"{ref!r} names no version: use NAME:VERSION", output, "bad_request")
    with api_errors(output), Client() as client:
        result = client.models.promote(name, version, stage, force=force)
    emit(result.model_dump(mode="json"), output, lambda _: _render_promoted(result))


app.command("validate")(validations.validate_cmd)
