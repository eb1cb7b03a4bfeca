"""How every command prints: a Rich table for people, `-o json` for programs."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from gureum.client.errors import GureumError

console = Console()
err_console = Console(stderr=True)


class Format(StrEnum):
    table = "table"
    json = "json"


OutputOpt = Annotated[
    Format, typer.Option("-o", "--output", help="table for people, json for programs")
]


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def emit(data: Any, output: Format, render: Callable[[Any], None] | None = None) -> None:
    """Print ``data`` as JSON, or hand it to ``render`` (a table by default)."""
    if output is Format.json:
        print_json(data)
    elif render is not None:
        render(data)
    elif isinstance(data, list):
        console.print(table(data))
    elif isinstance(data, dict):
        console.print(kv_table(data))
    else:
        console.print(data)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Table:
    cols = list(columns or (rows[0].keys() if rows else []))
    t = Table(*cols, show_lines=False)
    for row in rows:
        t.add_row(*[_cell(row.get(c)) for c in cols])
    return t


def kv_table(data: dict[str, Any]) -> Table:
    t = Table(show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column()
    for k, v in data.items():
        t.add_row(k, _cell(v))
    return t


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def fail(
    message: str, output: Format = Format.table, code: str = "error", exit_code: int = 1
) -> NoReturn:
    if output is Format.json:
        print_json({"error": {"code": code, "message": message}})
    else:
        err_console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(exit_code)


@contextmanager
def api_errors(output: Format) -> Iterator[None]:
    """Turn SDK errors and local file errors into a one-line message and exit 1, never a
    traceback."""
    try:
        yield
    except GureumError as exc:
        fail(exc.message, output, exc.code)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        fail(f"{where}{exc.strerror or exc}", output, "os_error")
