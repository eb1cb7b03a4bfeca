"""Workspaces: the unit of tenancy. Nobody sees a workspace they are not a member of.

Workspace-level actions outside the key's own workspace (create, delete) need an admin key:
a narrower key (a developer key handed to a CI job) must not reach beyond its workspace.
A key cannot delete the workspace it acts in; that keeps the deletion's audit row (written
in the caller's workspace) from being deleted along with it, and avoids a key cutting the
branch it sits on. A workspace that still holds anything (datasets, later jobs, models...)
is refused too: its blobs and references must be removed through their own APIs first.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gureum.schemas.common import Page
from gureum.schemas.jobs import WorkspaceQuotas
from gureum.schemas.tenancy import WorkspaceCreate, WorkspaceOut
from gureum.server.auth import Principal
from gureum.server.db.base import Base
from gureum.server.db.session import Database
from gureum.server.db.tables import Membership, Workspace
from gureum.server.errors import Conflict, Forbidden, NotFound
from gureum.server.pagination import PageParams, paginate
from gureum.server.services.audit import record

# Tables that belong to the workspace itself and go with it (ON DELETE CASCADE); a job's
# budget reservation goes with its job.
_OWN_TABLES = frozenset(
    {
        "workspaces",
        "memberships",
        "api_keys",
        "audit_events",
        "workspace_budgets",
        "budget_events",
        "job_budgets",
    }
)


def not_found(name: str) -> NotFound:
    return NotFound(f"workspace '{name}' not found")


def find(s: Session, name: str) -> Workspace | None:
    return s.scalar(select(Workspace).where(Workspace.name == name))


def member_role(s: Session, user_id: int, workspace_id: int) -> str | None:
    return s.scalar(
        select(Membership.role).where(
            Membership.user_id == user_id, Membership.workspace_id == workspace_id
        )
    )


def role_cap(s: Session, user_id: int, is_site_admin: bool, workspace_id: int) -> str | None:
    """The most a key of this user may do in this workspace (what Authenticator enforces).

    A membership caps it; a site admin who is not a member acts as owner; anyone else: None.
    """
    role = member_role(s, user_id, workspace_id)
    if role is None and is_site_admin:
        return "owner"
    return role


def visible(s: Session, principal: Principal, name: str) -> tuple[Workspace, str | None]:
    """The workspace and the caller's role in it, or 404 when the caller may not see it."""
    ws = find(s, name)
    if ws is None:
        raise not_found(name)
    role = member_role(s, principal.user_id, ws.id)
    if role is None and not principal.is_site_admin:
        raise not_found(name)
    return ws, role


def lock(s: Session, workspace_id: int) -> None:
    """Serialize membership changes of one workspace (PostgreSQL; SQLite writers already are)."""
    s.execute(select(Workspace.id).where(Workspace.id == workspace_id).with_for_update())


def _out(ws: Workspace, role: str | None) -> WorkspaceOut:
    return WorkspaceOut.model_validate({"name": ws.name, "created_at": ws.created_at, "role": role})


def create(db: Database, principal: Principal, body: WorkspaceCreate) -> WorkspaceOut:
    principal.require("admin")
    if not principal.is_site_admin:
        raise Forbidden("only site admins can create workspaces")
    try:
        with db.write() as s:
            if find(s, body.name) is not None:
                raise Conflict(f"workspace '{body.name}' already exists")
            ws = Workspace(name=body.name)
            s.add(ws)
            s.flush()
            s.add(Membership(user_id=principal.user_id, workspace_id=ws.id, role="owner"))
            # Both logs: the caller's (what this key did) and the new workspace's (its origin).
            record(s, principal, "workspace.create", "workspace", ws.name)
            record(s, principal, "workspace.create", "workspace", ws.name, workspace_id=ws.id)
            return _out(ws, "owner")
    except IntegrityError as exc:  # a concurrent create of the same name won the race
        raise Conflict(f"workspace '{body.name}' already exists") from exc


def list_visible(db: Database, principal: Principal, params: PageParams) -> Page[WorkspaceOut]:
    stmt = select(Workspace)
    if not principal.is_site_admin:
        stmt = stmt.join(Membership, Membership.workspace_id == Workspace.id).where(
            Membership.user_id == principal.user_id
        )
    with db.read() as s:
        rows, cursor = paginate(s, stmt, Workspace.id, params)
        roles = {
            ws_id: role
            for ws_id, role in s.execute(
                select(Membership.workspace_id, Membership.role).where(
                    Membership.user_id == principal.user_id,
                    Membership.workspace_id.in_([w.id for w in rows]),
                )
            )
        }
    return Page(items=[_out(w, roles.get(w.id)) for w in rows], next_cursor=cursor)


def get(db: Database, principal: Principal, name: str) -> WorkspaceOut:
    with db.read() as s:
        ws, role = visible(s, principal, name)
        return _out(ws, role)


def _contents(s: Session, workspace_id: int) -> dict[str, int]:
    """Rows other resources still keep in the workspace, per table (found from the schema)."""
    held: dict[str, int] = {}
    for table in Base.metadata.sorted_tables:
        if table.name in _OWN_TABLES or "workspace_id" not in table.c:
            continue
        n = s.scalar(
            select(func.count()).select_from(table).where(table.c.workspace_id == workspace_id)
        )
        if n:
            held[table.name] = int(n)
    return held


def delete(db: Database, principal: Principal, name: str) -> None:
    principal.require("admin")
    with db.write() as s:
        ws, role = visible(s, principal, name)
        if role != "owner" and not principal.is_site_admin:
            raise Forbidden(f"only an owner of workspace '{name}' or a site admin can delete it")
        if ws.id == principal.workspace_id:
            raise Conflict(
                f"your key acts in workspace '{name}'; delete it with a key of another workspace"
            )
        lock(s, ws.id)
        held = _contents(s, ws.id)
        if held:
            listed = ", ".join(f"{n} {t}" for t, n in held.items())
            raise Conflict(
                f"workspace '{name}' is not empty ({listed}); delete those first", details=held
            )
        s.delete(ws)
        record(s, principal, "workspace.delete", "workspace", name)


STORAGE_GB = 1024**3  # as cost reports count a GB


def _quotas(ws: Workspace) -> WorkspaceQuotas:
    storage = ws.max_storage_bytes
    return WorkspaceQuotas(
        max_cpus=ws.max_cpus,
        max_gpus=ws.max_gpus,
        max_concurrent_jobs=ws.max_concurrent_jobs,
        max_storage_gb=None if storage is None else storage / STORAGE_GB,
    )


def get_quotas(db: Database, principal: Principal, name: str) -> WorkspaceQuotas:
    with db.read() as s:
        ws, _ = visible(s, principal, name)
        return _quotas(ws)


def set_quotas(
    db: Database, principal: Principal, name: str, body: WorkspaceQuotas
) -> WorkspaceQuotas:
    """Site admins set every workspace's ceilings; an owner may set its own workspace's."""
    principal.require("admin")
    with db.write() as s:
        ws, role = visible(s, principal, name)
        if role != "owner" and not principal.is_site_admin:
            raise Forbidden(f"only an owner of workspace '{name}' or a site admin can set quotas")
        ws.max_cpus, ws.max_gpus = body.max_cpus, body.max_gpus
        ws.max_concurrent_jobs = body.max_concurrent_jobs
        gb = body.max_storage_gb
        ws.max_storage_bytes = None if gb is None else round(gb * STORAGE_GB)
        record(s, principal, "workspace.quotas", "workspace", name, body.model_dump())
        return _quotas(ws)
