"""`gureum models validate NAME:V`, the validation report `gureum models show` prints, and
`gureum models list --catalog`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from gureum.cli.output import Format, OutputOpt, api_errors, console, emit, fail, kv_table, table
from gureum.cli.refs import parse_ref
from gureum.client import Client
from gureum.client.errors import NotFoundError
from gureum.schemas.catalog import CatalogEntry
from gureum.schemas.validations import MAX_SAMPLES, ValidationOut

SampleInputsOpt = Annotated[
    Path | None,
    typer.Option(
        "--sample-inputs",
        help=f"a JSON list of inputs for the smoke test (at most {MAX_SAMPLES}); by default "
        "16 from the validation split of the dataset the version was trained on",
        dir_okay=False,
    ),
]


def read_sample_inputs(path: Path | None, output: Format) -> list[Any] | None:
    """``--sample-inputs FILE``: a JSON list (an object with "inputs" is read as its list)."""
    if path is None:
        return None
    try:
        value = json.loads(path.read_text())
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", output, "bad_request")
    except ValueError as exc:
        fail(f"{path} is not JSON: {exc}", output, "bad_request")
    if isinstance(value, dict) and isinstance(value.get("inputs"), list):
        value = value["inputs"]
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_SAMPLES:
        fail(f"{path} must hold a JSON list of 1 to {MAX_SAMPLES} inputs", output, "bad_request")
    return value


def _figure(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.1f} {unit}"


def render_report(r: ValidationOut) -> None:
    verdict = {"passed": "[green]passed[/green]", "failed": "[red]failed[/red]"}.get(
        r.state, r.state
    )
    latency = f"{_figure(r.latency_p50_ms, 'ms')} / {_figure(r.latency_max_ms, 'ms')}"
    facts = {
        "validation": f"{r.model}:{r.version} {verdict}"
        + (f" (deploy to {r.endpoint})" if r.endpoint else ""),
        "inputs": r.source,
        "load": _figure(r.load_ms, "ms"),
        "latency p50 / max": latency,
        "memory per request": _figure(r.memory_max_mb, "MiB"),
        "at": r.created_at.isoformat(timespec="seconds"),
    }
    console.print(kv_table(facts))
    if r.checks:
        rows = [
            {"check": c.name, "result": "ok" if c.passed else "FAILED", "detail": c.detail}
            for c in r.checks
        ]
        console.print(table(rows))


def last_report(client: Client, name: str, version: int) -> ValidationOut | None:
    try:
        return client.models.validation(name, version)
    except NotFoundError:
        return None


def validate_cmd(
    ref: Annotated[str, typer.Argument(metavar="NAME[:V]", help="the version to validate")],
    sample_inputs: SampleInputsOpt = None,
    count: Annotated[
        int | None, typer.Option("--count", min=1, max=MAX_SAMPLES, help="inputs to pick")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait for the report")] = True,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait")] = 600.0,
    output: OutputOpt = Format.table,
) -> None:
    """Load a version and smoke-test it on the cluster, as a deploy's first replica does; the
    report is kept with the version (`gureum models show NAME:V`). Exits 1 when it fails."""
    name, version = parse_ref(ref, output, ("latest", "production"))
    inputs = read_sample_inputs(sample_inputs, output)
    with api_errors(output), Client() as client:
        report = client.models.validate(
            name,
            version or "latest",
            sample_inputs=inputs,
            count=count,
            wait=wait,
            timeout_s=timeout,
        )
    emit(report.model_dump(mode="json"), output, lambda _: render_report(report))
    if report.passed is False:
        raise typer.Exit(1)


def _catalog_row(e: CatalogEntry) -> dict[str, Any]:
    res = e.resources
    return {
        "kind": e.kind,
        "name": e.name,
        "task": e.task,
        "unit": e.unit + (" (OpenAI)" if e.openai else ""),
        "cpus": f"{res.cpus:g}" if res else "-",
        "memory": f"{res.memory_gb:g} GiB" if res else "-",
    }


def _render_catalog(entries: list[CatalogEntry]) -> None:
    console.print(table([_catalog_row(e) for e in entries]))
    console.print(
        "versions: gureum deploy NAME --endpoint E; recipes: gureum train --recipe R; "
        "formats: gureum models import NAME PATH (-o json says how for each)",
        highlight=False,
    )


def catalog_cmd(output: Format) -> None:
    with api_errors(output), Client() as client:
        entries = client.models.catalog()
    emit(
        [e.model_dump(mode="json") for e in entries],
        output,
        lambda _: _render_catalog(entries),
    )
