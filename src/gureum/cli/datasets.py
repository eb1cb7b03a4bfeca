"""`gureum datasets ...`: push, curate, list, show, pull and delete dataset versions (over the
SDK)."""

from __future__ import annotations

import base64
import binascii
import io
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from PIL import Image, UnidentifiedImageError
from rich.color import Color
from rich.columns import Columns
from rich.console import Group, RenderableType
from rich.filesize import decimal
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.style import Style
from rich.table import Table
from rich.text import Text

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
from gureum.cli.refs import parse_ref
from gureum.client import Client
from gureum.schemas.datasets import DatasetOut, FileOut, VersionOut

app = typer.Typer(help="Versioned datasets.", no_args_is_help=True)

RefArg = Annotated[str, typer.Argument(help="NAME or NAME:VERSION (a number or 'latest')")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")]
HALF_BLOCK = "▀"
# Thumbnails are drawn at most this many characters wide (and half as many lines high).
THUMB_CELLS = 16


@contextmanager
def progress_bar(output: Format, label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A byte progress bar on stderr for people at a terminal; nothing for programs."""
    if output is Format.json or not err_console.is_terminal:
        yield None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
    task = bar.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield update


def human_bytes(n: int) -> str:
    """Decimal units, the same as the progress bar shows."""
    return decimal(n)


@app.command("push")
def push_cmd(
    name: Annotated[str, typer.Argument(help="dataset name (created on first push)")],
    path: Annotated[Path, typer.Argument(help="a folder, a file, or a .zip/.tar/.tar.gz archive")],
    message: Annotated[str, typer.Option("--message", "-m", help="what changed")] = "",
    validation_ratio: Annotated[
        float, typer.Option(help="share of files (or rows) held out for validation")
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="seed of the train/validation split")] = 0,
    output: OutputOpt = Format.table,
) -> None:
    """Push PATH as a new immutable version of dataset NAME."""
    with api_errors(output), Client() as client, progress_bar(output, f"push {name}") as progress:
        ver = client.datasets.push(
            name,
            path,
            message=message,
            validation_ratio=validation_ratio,
            seed=seed,
            progress=progress,
        )
    emit(ver.model_dump(mode="json"), output, lambda _: _render_pushed(ver))


@app.command("curate")
def curate_cmd(
    name: Annotated[str, typer.Argument(help="dataset to add the curated version to")],
    from_endpoint: Annotated[
        str, typer.Option("--from-endpoint", help="the endpoint whose captured calls to use")
    ],
    since: Annotated[
        datetime | None, typer.Option(help="calls from this time (UTC unless it says)")
    ] = None,
    until: Annotated[datetime | None, typer.Option(help="calls before this time")] = None,
    min_rating: Annotated[
        int | None, typer.Option(min=1, max=5, help="only calls rated at least this")
    ] = None,
    labelled_only: Annotated[
        bool, typer.Option("--labelled-only", help="only calls a consumer labelled")
    ] = False,
    base: Annotated[
        str | None,
        typer.Option(help="NAME:V to merge with (default: what the served model trained on)"),
    ] = None,
    max_generated_share: Annotated[
        float | None,
        typer.Option(help="image generators: most share of generated pictures (default 0.25)"),
    ] = None,
    message: Annotated[str, typer.Option("--message", "-m", help="what changed")] = "",
    output: OutputOpt = Format.table,
) -> None:
    """Make the next version of NAME from an endpoint's captured calls and their feedback."""
    with api_errors(output), Client() as client:
        ver = client.datasets.curate(
            name,
            from_endpoint=from_endpoint,
            since=since,
            until=until,
            min_rating=min_rating,
            labelled_only=labelled_only,
            base=base,
            max_generated_share=max_generated_share,
            message=message,
        )
    emit(ver.model_dump(mode="json"), output, lambda _: _render_curated(ver))


@app.command("list")
def list_cmd(output: OutputOpt = Format.table) -> None:
    """List the workspace's datasets."""
    with api_errors(output), Client() as client:
        items = client.datasets.list()
    emit([d.model_dump(mode="json") for d in items], output, lambda _: _render_list(items))


@app.command("versions")
def versions_cmd(name: str, output: OutputOpt = Format.table) -> None:
    """List the versions of dataset NAME, newest first."""
    with api_errors(output), Client() as client:
        items = client.datasets.versions(name)
    emit([v.model_dump(mode="json") for v in items], output, lambda _: _render_versions(items))


@app.command("show")
def show_cmd(ref: RefArg, output: OutputOpt = Format.table) -> None:
    """Stats, schema, split and a preview of NAME[:V] (latest by default)."""
    name, version = parse_ref(ref, output)
    with api_errors(output), Client() as client:
        ver = client.datasets.version(name, version or "latest")
    emit(ver.model_dump(mode="json"), output, lambda _: render_version(ver))


@app.command("files")
def files_cmd(ref: RefArg, output: OutputOpt = Format.table) -> None:
    """The files of NAME[:V] with their kind, label and split."""
    name, version = parse_ref(ref, output)
    with api_errors(output), Client() as client:
        items = client.datasets.files(name, version or "latest")
    emit([f.model_dump(mode="json") for f in items], output, lambda _: _render_files(items))


@app.command("pull")
def pull_cmd(
    ref: RefArg,
    dest: Annotated[Path, typer.Argument(help="folder to write the files into")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="write into a folder that is not empty")
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Write the files of NAME[:V] into DEST, byte for byte."""
    name, version = parse_ref(ref, output)
    with api_errors(output), Client() as client, progress_bar(output, f"pull {name}") as progress:
        ver = client.datasets.pull(
            name, version or "latest", dest, overwrite=overwrite, progress=progress
        )
    data = {
        "dataset": ver.dataset,
        "version": ver.version,
        "dest": str(dest),
        "file_count": ver.file_count,
        "total_bytes": ver.total_bytes,
    }
    emit(data, output, lambda _: _render_pulled(ver, dest))


@app.command("delete")
def delete_cmd(ref: RefArg, yes: YesOpt = False, output: OutputOpt = Format.table) -> None:
    """Delete version NAME:V, or dataset NAME with all its versions."""
    name, version = parse_ref(ref, output)
    what = f"{name}:{version}" if version is not None else f"dataset {name} and all its versions"
    if not yes:
        if output is Format.json or not sys.stdin.isatty():
            fail(f"refusing to delete {what} without --yes", output, "confirmation_required")
        if not typer.confirm(f"Delete {what}?"):
            fail("not deleted", output, "cancelled")
    with api_errors(output), Client() as client:
        client.datasets.delete(name, version)
    data = {"deleted": True, "dataset": name, "version": version}
    emit(data, output, lambda _: console.print(f"deleted {what}", highlight=False))


# -- rendering ---------------------------------------------------------------------------------


def _render_pushed(ver: VersionOut) -> None:
    split = ver.split or {}
    console.print(
        f"pushed [bold]{ver.dataset}:{ver.version}[/bold]: {ver.file_count} files, "
        f"{human_bytes(ver.total_bytes)}, kind {ver.kind}, "
        f"train/validation {split.get('train', '-')}/{split.get('validation', '-')}",
        highlight=False,
    )
    console.print(f"see it with: gureum datasets show {ver.dataset}:{ver.version}", highlight=False)


def _render_curated(ver: VersionOut) -> None:
    src = ver.source or {}
    console.print(
        f"curated [bold]{ver.dataset}:{ver.version}[/bold] from endpoint {src.get('endpoint')} "
        f"on {src.get('base')}: {src.get('samples_added')} samples from "
        f"{src.get('records_used')} of {src.get('records')} captured calls "
        f"({src.get('duplicates_dropped')} duplicates dropped, {src.get('left_out')} left out); "
        "curated files are training data only",
        highlight=False,
    )
    console.print(f"see it with: gureum datasets show {ver.dataset}:{ver.version}", highlight=False)


def _render_pulled(ver: VersionOut, dest: Path) -> None:
    console.print(
        f"pulled [bold]{ver.dataset}:{ver.version}[/bold] ({ver.file_count} files, "
        f"{human_bytes(ver.total_bytes)}) into {escape(str(dest))}",
        highlight=False,
    )


def _render_list(items: list[DatasetOut]) -> None:
    if not items:
        console.print("no datasets yet: push one with `gureum datasets push NAME PATH`")
        return
    rows = [
        {
            "name": d.name,
            "latest": d.latest_version,
            "versions": d.version_count,
            "updated": d.updated_at.strftime("%Y-%m-%d %H:%M"),
            "description": d.description,
        }
        for d in items
    ]
    console.print(table(rows))


def _render_versions(items: list[VersionOut]) -> None:
    rows = [
        {
            "version": v.version,
            "kind": v.kind,
            "files": v.file_count,
            "size": human_bytes(v.total_bytes),
            "pushed by": v.pushed_by,
            "created": v.created_at.strftime("%Y-%m-%d %H:%M"),
            "message": v.message,
        }
        for v in items
    ]
    console.print(table(rows))


def _render_files(items: list[FileOut]) -> None:
    rows = [
        {
            "path": f.path,
            "size": human_bytes(f.size),
            "kind": f.kind,
            "label": f.label,
            "split": f.split,
            "sha256": f.sha256[:12],
        }
        for f in items
    ]
    console.print(table(rows))


def render_version(ver: VersionOut) -> None:
    split = ver.split or {}
    console.print(
        kv_table(
            {
                "dataset": f"{ver.dataset}:{ver.version}",
                "kind": ver.kind,
                "files": ver.file_count,
                "size": human_bytes(ver.total_bytes),
                "split": (
                    f"{split.get('train', '-')} train / {split.get('validation', '-')} validation "
                    f"by {split.get('unit', 'file')} (ratio {split.get('validation_ratio', '-')}, "
                    f"seed {split.get('seed', '-')})"
                ),
                "pushed by": ver.pushed_by,
                "created": ver.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                "message": ver.message or None,
            }
        )
    )
    for renderable in _schema_parts(ver.schema_):
        console.print(renderable)
    for renderable in _preview_parts(ver.preview or {}):
        console.print(renderable)


def _count_table(title: str, key: str, counts: dict[str, Any]) -> Table:
    t = Table(key, "count", title=title, title_justify="left")
    for k, v in counts.items():
        t.add_row(str(k), str(v))
    return t


def _columns_table(title: str, info: dict[str, Any]) -> Table:
    t = Table(
        "column", "dtype", title=f"{title} ({info.get('rows', '?')} rows)", title_justify="left"
    )
    for col in info.get("columns", []):
        t.add_row(str(col.get("name")), str(col.get("dtype")))
    return t


def _schema_parts(schema: dict[str, Any]) -> list[RenderableType]:
    parts: list[RenderableType] = []
    if kinds := schema.get("kinds"):
        parts.append(Text("kinds: " + ", ".join(f"{k} {n}" for k, n in kinds.items())))
    if classes := schema.get("classes"):
        parts.append(_count_table("classes", "class", classes))
    if sizes := schema.get("image_sizes"):
        parts.append(_count_table("image sizes", "size", sizes))
    if modes := schema.get("modes"):
        parts.append(Text("modes: " + ", ".join(f"{k} {n}" for k, n in modes.items())))
    if "columns" in schema:
        parts.append(_columns_table("columns", schema))
    for path, info in (schema.get("tables") or {}).items():
        parts.append(_columns_table(path, info))
    if "keys" in schema:
        parts.append(
            Text(f"keys: {', '.join(map(str, schema['keys']))} ({schema.get('rows')} rows)")
        )
    if "lines" in schema and "chars" in schema:
        parts.append(Text(f"text: {schema['lines']} lines, {schema['chars']} characters"))
    return parts


def _preview_parts(preview: dict[str, Any]) -> list[RenderableType]:
    parts: list[RenderableType] = []
    if rows := preview.get("rows"):
        dict_rows = [r if isinstance(r, dict) else {"value": r} for r in rows]
        t = table(dict_rows)
        t.title, t.title_justify = "first rows", "left"
        parts.append(t)
    if lines := preview.get("lines"):
        parts.append(Group(Text("first lines", style="italic"), *(Text(str(x)) for x in lines)))
    if images := preview.get("images"):
        parts.append(Text("preview", style="italic"))
        if console.color_system is None:
            # Without colours half blocks draw nothing useful: list the pictures instead.
            rows = [{k: img.get(k) for k in ("path", "label", "width", "height")} for img in images]
            parts.append(table(rows))
        else:
            parts.append(Columns([_image_card(img) for img in images], padding=(0, 2)))
    return parts


def _image_card(img: dict[str, Any]) -> RenderableType:
    pixels = thumbnail_text(str(img.get("thumbnail", "")))
    width = len(pixels.plain.split("\n", 1)[0]) if pixels else THUMB_CELLS
    label = str(img.get("label") or img.get("path", ""))
    caption = Text(label[:width], style="dim")
    return Group(pixels or Text("(no thumbnail)"), caption)


def thumbnail_text(b64_png: str, max_size: int = THUMB_CELLS) -> Text | None:
    """Draw a small image with half blocks: each character is two pixels, top over bottom."""
    try:
        with Image.open(io.BytesIO(base64.b64decode(b64_png, validate=True))) as im:
            rgb = im.convert("RGB")
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError):
        return None
    rgb.thumbnail((max_size, max_size))
    width, height = rgb.size
    data = rgb.tobytes()

    def color(x: int, y: int) -> Color:
        i = (y * width + x) * 3
        return Color.from_rgb(data[i], data[i + 1], data[i + 2])

    text = Text(no_wrap=True, overflow="crop")
    for y in range(0, height, 2):
        if y:
            text.append("\n")
        for x in range(width):
            below = color(x, y + 1) if y + 1 < height else None
            text.append(HALF_BLOCK, Style(color=color(x, y), bgcolor=below))
    return text
