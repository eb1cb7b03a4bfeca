"""How every command prints: a Rich table for people, `-o json` for programs."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gureum.client.errors import GureumError

# What a server sends is shown, never obeyed: escape sequences (colours, cursor moves, OSC
# hyperlinks and titles), other C0 / C1 controls and bidi overrides are taken out of every
# string before it reaches the terminal. Newlines and tabs stay; a lone carriage return (a
# progress bar redrawing its line) becomes a newline, so nothing can overwrite what was shown.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves, erase
    r"|\x1b[\]PX^_].*?(?:\x07|\x1b\\|$)"  # OSC, DCS, SOS, PM, APC up to their terminator
    r"|\x1b[ -/]*[0-~]?"  # any other escape (two or three bytes)
    r"|\x9b[0-?]*[ -/]*[@-~]",  # the one-byte CSI of C1
    re.DOTALL,
)
_LONE_CR = re.compile(r"\r(?!\n)")
_CONTROLS = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def clean(text: str) -> str:
    """``text`` safe to print on a terminal (see above)."""
    text = _ESCAPES.sub("", text)
    text = _LONE_CR.sub("\n", text)
    return _CONTROLS.sub("", text.replace("\r\n", "\n"))


class SafeConsole(Console):
    """A Rich console that cleans every string it renders (tables, prints, markup)."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(clean(text), **kwargs)


console = SafeConsole()
err_console = SafeConsole(stderr=True)


def write_clean(text: str) -> None:
    """Server text (a job's log) straight to stdout, cleaned."""
    sys.stdout.write(clean(text))
    sys.stdout.flush()


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
        t.add_row(escape(str(k)), _cell(v))
    return t


def _cell(value: Any) -> str:
    """A table cell is data: markup in it (``[link=...]``) is shown, not rendered."""
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return escape(json.dumps(value, default=str))
    return escape(str(value))


def fail(
    message: str, output: Format = Format.table, code: str = "error", exit_code: int = 1
) -> NoReturn:
    if output is Format.json:
        print_json({"error": {"code": code, "message": message}})
    else:
        # One line, as written: no markup read in it (a server's "[...]" is text) and no
        # wrapping at the console's width (the terminal wraps; scripts grep it whole).
        err_console.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)
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
