"""`gureum workspaces | users | keys | audit`: tenancy over the SDK."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from gureum.cli.output import (
    Format,
    OutputOpt,
    api_errors,
    console,
    emit,
    err_console,
    kv_table,
    table,
)
from gureum.client import Client
from gureum.schemas.jobs import WorkspaceQuotas

workspaces = typer.Typer(help="Workspaces: the unit of tenancy.", no_args_is_help=True)
users = typer.Typer(help="Members of your key's workspace and their roles.", no_args_is_help=True)
keys = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)


class RoleChoice(StrEnum):
    viewer = "viewer"
    developer = "developer"
    admin = "admin"
    owner = "owner"


WS_COLUMNS = ("name", "role", "created_at")
USER_COLUMNS = ("name", "role", "email", "is_site_admin", "added_at")
KEY_COLUMNS = (
    "key_id", "name", "user", "role", "data_plane", "created_at", "expires_at", "revoked_at",
    "last_used_at",
)  # fmt: skip
AUDIT_COLUMNS = ("created_at", "user", "key_id", "action", "target_type", "target", "details")


def _client() -> Client:
    return Client()


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def _rows(models: Sequence[BaseModel]) -> list[dict[str, Any]]:
    return [_dump(m) for m in models]


def _for_people(row: dict[str, Any]) -> dict[str, Any]:
    """Timestamps to the second, in UTC, so tables stay narrow."""
    return {
        k: v[:19].replace("T", " ") if k.endswith("_at") and isinstance(v, str) else v
        for k, v in row.items()
    }


def _show(data: Any, output: Format, columns: Sequence[str]) -> None:
    rows = [_for_people(r) for r in (data if isinstance(data, list) else [data])]
    emit(data, output, lambda _: console.print(table(rows, columns)))


@workspaces.command("create")
def ws_create(name: str, output: OutputOpt = Format.table) -> None:
    """Create a workspace (site admins); you become its owner."""
    with api_errors(output), _client() as c:
        _show(_dump(c.workspaces.create(name)), output, WS_COLUMNS)


@workspaces.command("list")
def ws_list(output: OutputOpt = Format.table) -> None:
    """Workspaces you are a member of (site admins: all)."""
    with api_errors(output), _client() as c:
        _show(_rows(c.workspaces.list()), output, WS_COLUMNS)


@workspaces.command("show")
def ws_show(name: str, output: OutputOpt = Format.table) -> None:
    with api_errors(output), _client() as c:
        _show(_dump(c.workspaces.get(name)), output, WS_COLUMNS)


@workspaces.command("delete")
def ws_delete(name: str, output: OutputOpt = Format.table) -> None:
    """Delete an empty workspace (its owners or a site admin, with a key of another one)."""
    with api_errors(output), _client() as c:
        c.workspaces.delete(name)
        emit({"deleted": name}, output, lambda _: console.print(f"deleted workspace {name}"))


@workspaces.command("quotas")
def ws_quotas(
    name: str,
    max_cpus: Annotated[
        float | None, typer.Option("--max-cpus", min=0, help="CPUs its running jobs may hold")
    ] = None,
    max_gpus: Annotated[
        float | None, typer.Option("--max-gpus", min=0, help="GPUs its running jobs may hold")
    ] = None,
    max_jobs: Annotated[
        int | None, typer.Option("--max-jobs", min=0, help="jobs it may run at once")
    ] = None,
    max_storage_gb: Annotated[
        float | None,
        typer.Option(
            "--max-storage-gb", min=0, help="GB its datasets, models and job outputs may hold"
        ),
    ] = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="drop every limit (then apply the options given)")
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Show a workspace's job and storage quotas, or change the ones given (the rest stay as
    they are)."""
    changes = {
        k: v
        for k, v in (
            ("max_cpus", max_cpus),
            ("max_gpus", max_gpus),
            ("max_concurrent_jobs", max_jobs),
            ("max_storage_gb", max_storage_gb),
        )
        if v is not None
    }
    with api_errors(output), _client() as c:
        if changes or clear:
            current = WorkspaceQuotas() if clear else c.workspaces.get_quotas(name)
            quotas = c.workspaces.set_quotas(name, current.model_copy(update=changes))
        else:
            quotas = c.workspaces.get_quotas(name)
    data = {"workspace": name, **_dump(quotas)}
    shown = {
        k: "no limit" if v is None else f"{v:g}" if isinstance(v, float) else v
        for k, v in data.items()
    }
    emit(data, output, lambda _: console.print(kv_table(shown)))


@workspaces.command("share")
def ws_share(
    name: str,
    cpus: Annotated[
        float | None, typer.Option("--cpus", min=0, help="CPUs guaranteed to its jobs")
    ] = None,
    gpus: Annotated[
        float | None, typer.Option("--gpus", min=0, help="GPUs guaranteed to its jobs")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="guarantee nothing")] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Show a workspace's guaranteed share of the pool and what its jobs borrow beyond it, or
    set it (site admins; an option left out keeps its value). Borrowed capacity is what
    serving preempts first."""
    with api_errors(output), _client() as c:
        if cpus is not None or gpus is not None or clear:
            current = None if clear else c.workspaces.get_share(name)
            out = c.workspaces.set_share(
                name,
                cpus=cpus if cpus is not None or current is None else current.cpus,
                gpus=gpus if gpus is not None or current is None else current.gpus,
            )
        else:
            out = c.workspaces.get_share(name)
    data = _dump(out)
    shown = {
        k: "none" if v is None else f"{v:g}" if isinstance(v, float) else v for k, v in data.items()
    }
    emit(data, output, lambda _: console.print(kv_table(shown)))


@users.command("add")
def users_add(
    name: str,
    role: Annotated[RoleChoice, typer.Option(help="role in the workspace")] = RoleChoice.developer,
    email: Annotated[str | None, typer.Option(help="contact address")] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Add a user (created if new) to your key's workspace."""
    with api_errors(output), _client() as c:
        _show(_dump(c.users.add(name, role=role.value, email=email)), output, USER_COLUMNS)


@users.command("list")
def users_list(output: OutputOpt = Format.table) -> None:
    with api_errors(output), _client() as c:
        _show(_rows(c.users.list()), output, USER_COLUMNS)


@users.command("set-role")
def users_set_role(name: str, role: RoleChoice, output: OutputOpt = Format.table) -> None:
    with api_errors(output), _client() as c:
        _show(_dump(c.users.set_role(name, role.value)), output, USER_COLUMNS)


@users.command("remove")
def users_remove(name: str, output: OutputOpt = Format.table) -> None:
    """Remove a member from the workspace; their keys in it are revoked."""
    with api_errors(output), _client() as c:
        c.users.remove(name)
        emit({"removed": name}, output, lambda _: console.print(f"removed {name}"))


def _render_created(data: dict[str, Any]) -> None:
    console.print(table([_for_people(data)], KEY_COLUMNS))
    console.print("[bold yellow]Store this key now; it will not be shown again:[/bold yellow]")
    console.print(data["token"], soft_wrap=True, highlight=False)


@keys.command("create")
def keys_create(
    name: str,
    role: Annotated[RoleChoice | None, typer.Option(help="default: your role")] = None,
    expires_in_days: Annotated[int | None, typer.Option(help="expire after N days")] = None,
    expires_at: Annotated[
        datetime | None, typer.Option(help="expire at this time (UTC unless given)")
    ] = None,
    user: Annotated[str | None, typer.Option(help="for this user (admins)")] = None,
    workspace: Annotated[str | None, typer.Option(help="in this workspace")] = None,
    data_plane: Annotated[
        bool,
        typer.Option(
            "--data-plane",
            help="may also call the workspace's endpoints (developer or above; rate-limited "
            "and metered like a consumer)",
        ),
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Create an API key; the token is printed this once."""
    with api_errors(output), _client() as c:
        created = c.keys.create(
            name,
            role=role.value if role else None,
            expires_in_days=expires_in_days,
            expires_at=expires_at,
            user=user,
            workspace=workspace,
            data_plane=data_plane,
        )
        if output is Format.json:
            err_console.print("Store this key now; it will not be shown again.")
        emit(_dump(created), output, _render_created)


@keys.command("list")
def keys_list(output: OutputOpt = Format.table) -> None:
    """Keys of the workspace (admins) or your own; never their secrets."""
    with api_errors(output), _client() as c:
        _show(_rows(c.keys.list()), output, KEY_COLUMNS)


@keys.command("revoke")
def keys_revoke(key_id: str, output: OutputOpt = Format.table) -> None:
    """Revoke a key by its key id; it stops working at once."""
    with api_errors(output), _client() as c:
        _show(_dump(c.keys.revoke(key_id)), output, KEY_COLUMNS)


def audit(
    action: Annotated[str | None, typer.Option(help="only this action, e.g. key.create")] = None,
    limit: Annotated[int, typer.Option(min=1, help="newest N events")] = 100,
    output: OutputOpt = Format.table,
) -> None:
    """The audit log of your key's workspace, newest first (admins)."""
    with api_errors(output), _client() as c:
        _show(_rows(c.audit.list(action=action, limit=limit)), output, AUDIT_COLUMNS)


def register(app: typer.Typer) -> None:
    app.add_typer(workspaces, name="workspaces")
    app.add_typer(users, name="users")
    app.add_typer(keys, name="keys")
    app.command("audit")(audit)
