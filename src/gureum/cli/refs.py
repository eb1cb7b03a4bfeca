"""`NAME[:V]` arguments, shared by every command that names a version of something."""

from __future__ import annotations

from collections.abc import Sequence

from gureum.cli.output import Format, fail
from gureum.client.base import VersionRef


def parse_ref(
    ref: str, output: Format = Format.table, named: Sequence[str] = ("latest",)
) -> tuple[str, VersionRef | None]:
    """Split ``NAME[:V]``; V is a positive number or one of ``named``; None when absent."""
    name, sep, version = ref.partition(":")
    if not name or (sep and not version):
        fail(f"{ref!r} is not NAME or NAME:VERSION", output, "bad_request")
    if not sep:
        return name, None
    if version in named:
        return name, version
    if not version.isdigit() or int(version) < 1:
        *others, last = ["a positive number", *(repr(n) for n in named)]
        choices = f"{', '.join(others)} or {last}"
        fail(f"version {version!r} must be {choices}", output, "bad_request")
    return name, int(version)
