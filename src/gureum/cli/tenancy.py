"""PLACEHOLDER: replaced by its own work."""

import typer


def register(app: typer.Typer) -> None:
    pass
