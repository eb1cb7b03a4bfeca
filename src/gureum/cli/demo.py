"""`gureum demo`: the end-to-end story on built-in sample data.

It starts the local cloud (or uses the running one), and walks a new team through what works
today: sample pictures -> a versioned dataset -> its statistics and preview -> a scoped key ->
a byte-identical pull. Later chapters (train, deploy, sell) join as they land.
"""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from gureum.cli.cloud import HomeOpt, render_up, settings_for
from gureum.cli.datasets import progress_bar, render_version
from gureum.cli.output import Format, OutputOpt, console, emit, fail
from gureum.client import Client
from gureum.client.base import load_credentials
from gureum.client.errors import GureumError
from gureum.local.results import UpError
from gureum.samples import write as write_sample

DATASET = "garments"


def _step(output: Format, text: str) -> None:
    if output is Format.table:
        console.rule(f"[bold]{text}")


def _same_tree(a: Path, b: Path) -> bool:
    left = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    right = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    if left != right:
        return False
    return all(filecmp.cmp(a / rel, b / rel, shallow=False) for rel in left)


def run_demo(client: Client, workdir: Path, output: Format) -> dict[str, Any]:
    """The story itself, against any running cloud; returns what it did, for `-o json`."""
    _step(output, "1. Built-in sample data: drawn garment pictures in class folders")
    pictures = workdir / "garments"
    shutil.rmtree(pictures, ignore_errors=True)
    sample = write_sample(DATASET, pictures)
    if output is Format.table:
        console.print(f"{sample.files} pictures of {', '.join(sample.classes)} in {pictures}")

    _step(output, "2. Push them as a dataset version")
    with progress_bar(output, "pushing") as progress:
        version = client.datasets.push(
            DATASET, pictures, message="sample garments", progress=progress
        )
    if output is Format.table:
        render_version(version)

    _step(output, "3. A key for a teammate's CI: developer role, 30 days")
    key = client.keys.create(name="demo-ci", role="developer", expires_in_days=30)
    if output is Format.table:
        console.print(
            f"key [bold]{key.key_id}[/bold] (role {key.role}); the secret is shown once and "
            "stored only as a hash"
        )

    _step(output, f"4. Pull {DATASET}:{version.version} back and compare")
    pulled = workdir / "pulled"
    shutil.rmtree(pulled, ignore_errors=True)
    client.datasets.pull(DATASET, version.version, pulled)
    identical = _same_tree(pictures, pulled)
    if not identical:
        fail(f"pulled files differ from {pictures}", output)
    if output is Format.table:
        console.print(f"{pulled}: every file byte-identical to the original")
        console.print(
            "\nNext: `gureum datasets list`, `gureum datasets show garments`, "
            "`gureum audit`, `gureum status`, and `gureum down` to stop the cloud."
        )
    return {
        "dataset": f"{DATASET}:{version.version}",
        "files": version.file_count,
        "bytes": version.total_bytes,
        "classes": version.schema_.get("classes", {}),
        "split": version.split,
        "key_id": key.key_id,
        "pulled_identical": identical,
        "workdir": str(workdir),
    }


def demo_command(
    home: HomeOpt = None,
    port: Annotated[int | None, typer.Option("--port", help="API port")] = None,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="use this Ray cluster")
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Start the local cloud if needed and run the end-to-end story on sample data."""
    settings = settings_for(home, port=port, ray_address=ray_address)
    # Imported here for the same reason as in `gureum up`: the server stack is heavy.
    from gureum.local.up import up

    try:
        started = up(settings)
    except UpError as exc:
        fail(str(exc), output, "up_failed")
    if output is Format.table:
        render_up(started)
    creds = load_credentials(settings.home)
    if "api_key" not in creds:
        fail(f"no credentials under {settings.home}; set GUREUM_API_KEY", output, "no_credentials")
    workdir = settings.home / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with Client(started.url, creds["api_key"]) as client:
            result = run_demo(client, workdir, output)
    except GureumError as exc:
        fail(exc.message, output, exc.code)
    result["url"] = started.url
    if output is Format.json:
        emit(result, output)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
