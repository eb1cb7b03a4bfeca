"""`gureum samples NAME DIR`: write a built-in data set, no server or network needed.

Sample data is local by nature, so this command makes no SDK call: it writes files that
`gureum datasets push` then uploads. One command with a NAME argument (rather than a sub-command
per sample) keeps an unknown name answered by our own message, which lists the known ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gureum import samples
from gureum.cli.output import Format, OutputOpt, console, emit, fail, kv_table
from gureum.samples import SampleError

LIST = "list"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _render(data: dict[str, Any]) -> None:
    rows: dict[str, Any] = {
        "sample": data["name"],
        "path": data["path"],
        "files": data["files"],
        "size": _size(data["bytes"]),
        "seed": data["seed"],
    }
    if data["classes"]:
        rows["classes"] = ", ".join(f"{k} {v}" for k, v in data["classes"].items())
    if data["columns"]:
        rows["columns"] = ", ".join(data["columns"])
    rows.update(data["details"])
    console.print(kv_table(rows))


def _catalogue() -> list[dict[str, Any]]:
    return [
        {"name": g.name, "default_count": g.default_count, "description": g.description}
        for g in samples.SAMPLES.values()
    ]


def samples_command(
    name: Annotated[
        str,
        typer.Argument(
            help=f"one of: {', '.join(samples.names())}; or '{LIST}' to see them described",
            show_default=False,
        ),
    ],
    directory: Annotated[
        Path | None, typer.Argument(help="folder to write into; created if missing")
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(
            "--count", "-n", min=1, help="how many items (each sample's default: 'samples list')"
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="same seed, same bytes")] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="write into a non-empty folder, replacing files")
    ] = False,
    captions: Annotated[
        bool,
        typer.Option(
            "--captions", help="garments: a metadata.jsonl of captions per class (image-lora)"
        ),
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Write a built-in sample data set (offline) into DIR, ready for `gureum datasets push`."""
    if name == LIST:
        emit(_catalogue(), output)
        return
    if directory is None:
        fail(f"say where to write it: gureum samples {name} DIR", output, code="bad_request")
    try:
        summary = samples.write(
            name, directory, count=count, seed=seed, force=force, captions=captions
        )
    except SampleError as exc:
        fail(str(exc), output, code=exc.code)
    emit(summary.to_dict(), output, _render)


def register(app: typer.Typer) -> None:
    app.command("samples")(samples_command)
