"""`gureum settings`: the site's settings (show; `set` for site admins, audited)."""

from __future__ import annotations

from typing import Annotated

import typer

from gureum.cli.output import Format, OutputOpt, api_errors, console, emit, kv_table
from gureum.client import Client
from gureum.schemas.site_settings import SiteSettingsOut

app = typer.Typer(help="Site settings (site admins change them).", no_args_is_help=True)


def _render(data: dict[str, object]) -> None:
    out = SiteSettingsOut.model_validate(data)
    console.print(
        kv_table(
            {
                "allow_unsandboxed_code": out.allow_unsandboxed_code,
                "sandbox": out.sandbox.detail,
            }
        )
    )


@app.command("show")
def show(output: OutputOpt = Format.table) -> None:
    """The site's settings and whether user code runs in a sandbox."""
    with api_errors(output), Client() as c:
        emit(c.settings.get().model_dump(mode="json"), output, _render)


@app.command("set")
def set_(
    name: Annotated[str, typer.Argument(help="e.g. allow_unsandboxed_code")],
    value: Annotated[bool, typer.Argument(help="true or false")],
    output: OutputOpt = Format.table,
) -> None:
    """Change a site setting (site admins only; recorded in the audit log)."""
    with api_errors(output), Client() as c:
        emit(c.settings.set(name, value).model_dump(mode="json"), output, _render)
