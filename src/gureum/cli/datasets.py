"""PLACEHOLDER: replaced by the datasets work."""

import typer

app = typer.Typer(help="Versioned datasets.", no_args_is_help=True)
