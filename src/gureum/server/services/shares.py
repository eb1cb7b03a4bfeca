"""Guaranteed shares of the pool: what a site admin sets per workspace, and what its running
jobs hold within it and borrow beyond it (``preemption.borrowing`` decides which is which).

Only site admins set shares: a share is a promise made out of the whole pool, which no one
workspace's owner can make for it."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.compute.resources import NodeInfo
from gureum.schemas.jobs import WorkspaceShare, WorkspaceShareOut
from gureum.server.auth import Principal
from gureum.server.db.session import Database
from gureum.server.db.tables import Workspace
from gureum.server.errors import Conflict, Forbidden
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


def capacity(nodes: Sequence[NodeInfo] | None) -> dict[str, float] | None:
    """The CPUs and GPUs of ``nodes`` (the cluster's, and those its autoscaler may add); None
    when the cluster is not known (no cluster joined yet): shares are then not checked."""
    if not nodes:
        return None
    total = preemption.plus({}, *(n.total for n in nodes))
    return {"CPU": total.get("CPU", 0.0), "GPU": total.get("GPU", 0.0)}


def _check_sum(s: Session, ws: Workspace, body: WorkspaceShare, cap: dict[str, float]) -> None:
    """Refuse a share that raises the sum of all guaranteed shares beyond the cluster: a
    promise the pool could not keep, even by preempting every borrower."""
    # Every workspace row locked: two shares set at once are checked one after the other.
    rows = s.execute(
        select(Workspace.id, Workspace.share_cpus, Workspace.share_gpus).with_for_update()
    ).all()
    others = [r for r in rows if r[0] != ws.id]
    for i, key, label, new, old in (
        (1, "CPU", "CPUs", body.cpus, ws.share_cpus),
        (2, "GPU", "GPUs", body.gpus, ws.share_gpus),
    ):
        if not new or new <= (old or 0.0):
            continue  # lowering (or keeping) a share is always allowed
        total = new + sum(r[i] or 0.0 for r in others)
        if total > cap[key] + preemption.EPS:
            raise Conflict(
                f"the guaranteed shares would add up to {total:g} {label} but the cluster has "
                f"{cap[key]:g} {label} (counting the nodes its autoscaler may add): at most "
                f"{max(0.0, cap[key] - total + new):g} {label} can be guaranteed to workspace "
                f"{ws.name}; lower another workspace's share first"
            )


def set_share(
    db: Database,
    principal: Principal,
    name: str,
    body: WorkspaceShare,
    cap: dict[str, float] | None = None,
) -> WorkspaceShareOut:
    """Replace the workspace's share (site admins); a field left out is no guarantee.
    ``cap``: the cluster's CPUs and GPUs (``capacity``), which the shares together may not
    exceed (None: not checked)."""
    principal.require("admin")
    with db.write() as s:
        ws, _ = visible(s, principal, name)
        if not principal.is_site_admin:
            raise Forbidden("only site admins can set a workspace's guaranteed share of the pool")
        locked = s.scalar(select(Workspace).where(Workspace.id == ws.id).with_for_update())
        assert locked is not None
        if cap is not None:
            _check_sum(s, locked, body, cap)
        locked.share_cpus, locked.share_gpus = body.cpus, body.gpus
        record(s, principal, "workspace.share", "workspace", name, body.model_dump())
        s.flush()
        return _out(s, locked)
