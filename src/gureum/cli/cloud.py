"""`gureum up`, `gureum down`, `gureum status`: the local cloud's life cycle.

Thin: options become Settings; gureum.local does the work.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from gureum.cli.output import Format, OutputOpt, console, emit, fail
from gureum.config import Settings, default_home
from gureum.local.down import down
from gureum.local.results import DownResult, UpError, UpResult
from gureum.local.status import StatusReport, status

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="where gureum keeps its state (default $GUREUM_HOME or ~/.gureum)"),
]


def settings_for(home: Path | None, **overrides: Any) -> Settings:
    # An absolute home: the server and later commands may run from another directory.
    home = (home or default_home()).expanduser().resolve()
    return Settings(home=home, **{k: v for k, v in overrides.items() if v is not None})


def _home_hint(home: str) -> str:
    if Path(home) == default_home():
        return ""
    return f"\n  other commands find it with: export GUREUM_HOME={home}"


def render_up(result: UpResult) -> None:
    p = console.print
    if result.status == "already_running":
        p(f"gureum is already running at [bold]{result.url}[/bold]", soft_wrap=True)
        p(f"  credentials: {result.credentials}{_home_hint(result.home)}", soft_wrap=True)
        return
    verb = "serving" if result.mode == "foreground" else "up"
    p(f"gureum is {verb} at [bold]{result.url}[/bold]", soft_wrap=True)
    if result.api_key:
        p(f"  admin key:   [bold]{result.api_key}[/bold]  (shown once)", soft_wrap=True)
        p(f"  saved to:    {result.credentials} (mode 0600)", soft_wrap=True)
    elif result.has_credentials:
        p(f"  credentials: {result.credentials}", soft_wrap=True)
    else:
        p(
            "  this database was set up before; use one of its API keys (GUREUM_API_KEY)",
            soft_wrap=True,
        )
    ray_kind = "local head" if result.ray_managed else "external"
    p(f"  ray:         {result.ray_address} ({ray_kind})", soft_wrap=True)
    p(f"  database:    {result.database}", soft_wrap=True)
    p(f"  artifacts:   {result.artifacts}", soft_wrap=True)
    if result.mode == "detached":
        p(f"  server log:  {result.log}", soft_wrap=True)
    hint = _home_hint(result.home)
    if hint:
        p(hint.lstrip("\n"), soft_wrap=True)


def _render_down(result: DownResult) -> None:
    if result.status == "not_running":
        console.print("gureum is not running")
    else:
        console.print("stopped: " + ", ".join(result.stopped), soft_wrap=True)


def _render_status(report: StatusReport) -> None:
    head = "running" if report.running else "down"
    console.print(f"gureum is {head}" + (f" at {report.url}" if report.url else ""))
    for name, part in report.parts.items():
        mark = "[green]ok[/green]  " if part.ok else "[red]down[/red]"
        console.print(f"  {mark}  {name:<10} {part.detail}", soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("up")
    def up_cmd(
        home: HomeOpt = None,
        port: Annotated[int | None, typer.Option(help="API port (default 8080)")] = None,
        host: Annotated[str | None, typer.Option(help="API address (default 127.0.0.1)")] = None,
        database_url: Annotated[
            str | None,
            typer.Option(help="e.g. postgresql+psycopg://...; default: SQLite under home"),
        ] = None,
        artifacts: Annotated[
            str | None, typer.Option(help="fsspec URL, e.g. s3://bucket/prefix; default: home")
        ] = None,
        ray_address: Annotated[
            str | None,
            typer.Option(help="use this Ray cluster (or $RAY_ADDRESS) instead of a local head"),
        ] = None,
        data_plane_host: Annotated[
            str | None,
            typer.Option(help="where consumers call endpoints (default 127.0.0.1; 0.0.0.0: all)"),
        ] = None,
        ray_host: Annotated[
            str | None,
            typer.Option(
                help="address the local Ray head listens on (default 127.0.0.1); "
                "it always runs with Ray's token auth (token in HOME/ray-token)"
            ),
        ] = None,
        foreground: Annotated[
            bool, typer.Option("--foreground", help="serve in this process (containers)")
        ] = False,
        timeout: Annotated[float, typer.Option(help="seconds to wait for the server")] = 60.0,
        output: OutputOpt = Format.table,
    ) -> None:
        """Start the local cloud: database, artifact store, Ray head and API server."""
        settings = settings_for(
            home=home,
            port=port,
            host=host,
            database_url=database_url,
            artifacts=artifacts,
            ray_address=ray_address,
            serve_host=data_plane_host,
            ray_host=ray_host,
        )
        if foreground:
            _join_loopback_head(settings)
        # Imported here, not at the top: the server stack it pulls in (FastAPI, SQLAlchemy,
        # Alembic) would add ~0.4 s to the start of every other gureum command.
        from gureum.local import up as launcher

        try:
            if foreground:
                result = launcher.run_foreground(
                    settings, lambda r: _emit_up(r, output, foreground=True)
                )
                if result is not None:  # another `up` already serves this home
                    _emit_up(result, output, foreground=False)
                return
            result = launcher.up(settings, timeout=timeout)
        except UpError as exc:
            fail(str(exc), output, code="up_failed")
        _emit_up(result, output, foreground=False)

    @app.command("down")
    def down_cmd(home: HomeOpt = None, output: OutputOpt = Format.table) -> None:
        """Stop what `gureum up` started (and nothing else)."""
        result = down(settings_for(home=home))
        emit(result.model_dump(), output, lambda _: _render_down(result))

    @app.command("status")
    def status_cmd(home: HomeOpt = None, output: OutputOpt = Format.table) -> None:
        """Health of each part: server, database, artifact store, Ray. Exit 1 if any is down."""
        report = status(settings_for(home=home))
        emit(report.model_dump(), output, lambda _: _render_status(report))
        if not report.healthy:
            raise typer.Exit(1)


def _join_loopback_head(settings: Settings) -> None:
    """A foreground server is the local head's driver: Ray reads the switch that keeps a
    driver on loopback once, when it is imported, so it must be set before that."""
    from gureum.compute.local_ray import LOOPBACK_ONLY, is_loopback

    if not (settings.ray_address or os.environ.get("RAY_ADDRESS")) and is_loopback(
        settings.ray_host
    ):
        os.environ.update(LOOPBACK_ONLY)


def _emit_up(result: UpResult, output: Format, *, foreground: bool) -> None:
    # In a container the console is a log: print the key only to a person at a terminal.
    if foreground and result.api_key and not console.is_terminal:
        result = result.model_copy(update={"api_key": None})
    emit(result.model_dump(), output, lambda _: render_up(result))
