"""`gureum secrets set|list|delete`: the workspace's secrets for its script jobs."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from gureum.cli.output import Format, OutputOpt, api_errors, console, emit, fail
from gureum.client import Client

app = typer.Typer(help="Workspace secrets, given to script jobs as environment variables.")


def _client() -> Client:
    return Client()


@app.command("set")
def set_(
    name: Annotated[str, typer.Argument(help="the variable name, e.g. HF_TOKEN")],
    output: OutputOpt = Format.table,
) -> None:
    """Store a secret; its value is read from stdin (piped) or a hidden prompt, never argv."""
    if sys.stdin.isatty():
        value = typer.prompt(f"value of {name}", hide_input=True)
    else:
        value = sys.stdin.read().rstrip("\n")
    if not value:
        fail("empty value", output, "invalid_value", 2)
    with api_errors(output), _client() as c:
        out = c.secrets.set(name, value)
    emit(out.model_dump(mode="json"), output, lambda d: console.print(f"set {d['name']}"))


@app.command("list")
def list_(output: OutputOpt = Format.table) -> None:
    """Names of the workspace's secrets (values are never shown)."""
    with api_errors(output), _client() as c:
        rows = [s.model_dump(mode="json") for s in c.secrets.list()]
    emit(rows, output)


@app.command("delete")
def delete(name: str, output: OutputOpt = Format.table) -> None:
    with api_errors(output), _client() as c:
        c.secrets.delete(name)
    emit({"deleted": name}, output, lambda d: console.print(f"deleted {d['deleted']}"))
