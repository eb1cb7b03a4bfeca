"""Guaranteed shares of the pool: what a site admin sets per workspace, and what its running
jobs hold within it and borrow beyond it (``preemption.borrowing`` decides which is which).

Only site admins set shares: a share is a promise made out of the whole pool, which no one
workspace's owner can make for it."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.schemas.jobs import WorkspaceShare, WorkspaceShareOut
from gureum.server.auth import Principal
from gureum.server.db.session import Database
from gureum.server.db.tables import Workspace
from gureum.server.errors import Forbidden
from gureum.server.services import preemption
from gureum.server.services.audit import record
from gureum.server.services.workspaces import visible


def _out(s: Session, ws: Workspace) -> WorkspaceShareOut:
    candidates, _ = preemption.running_candidates(s)
    mine = [c for c in candidates if c.workspace_id == ws.id]
    used = preemption.plus({}, *(c.need for c in mine))
    borrowed = preemption.plus({}, *(c.need for c in mine if c.borrowed))
    return WorkspaceShareOut(
        workspace=ws.name,
        cpus=ws.share_cpus,
        gpus=ws.share_gpus,
        used_cpus=used.get("CPU", 0.0),
        used_gpus=used.get("GPU", 0.0),
        borrowed_cpus=borrowed.get("CPU", 0.0),
        borrowed_gpus=borrowed.get("GPU", 0.0),
    )


def get_share(db: Database, principal: Principal, name: str) -> WorkspaceShareOut:
    """Members (and site admins) see their workspace's share and what it borrows."""
    with db.read() as s:
        ws, _ = visible(s, principal, name)
        return _out(s, ws)


def set_share(
    db: Database, principal: Principal, name: str, body: WorkspaceShare
) -> WorkspaceShareOut:
    """Replace the workspace's share (site admins); a field left out is no guarantee."""
    principal.require("admin")
    with db.write() as s:
        ws, _ = visible(s, principal, name)
        if not principal.is_site_admin:
            raise Forbidden("only site admins can set a workspace's guaranteed share of the pool")
        locked = s.scalar(select(Workspace).where(Workspace.id == ws.id).with_for_update())
        assert locked is not None
        locked.share_cpus, locked.share_gpus = body.cpus, body.gpus
        record(s, principal, "workspace.share", "workspace", name, body.model_dump())
        s.flush()
        return _out(s, locked)
