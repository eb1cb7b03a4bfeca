"""Site settings: switches for the whole site that only a site admin may turn, each change
audited. Today one: ``allow_unsandboxed_code`` (user code may run without bubblewrap).

The sandbox check for script jobs lives here too, so submission refuses what the worker could
not run safely, with the reason, instead of queueing it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from gureum.compute import sandbox
from gureum.compute.resources import NodeInfo, unplaceable, whole_job
from gureum.schemas.jobs import JobCreate
from gureum.schemas.site_settings import SandboxState, SiteSettingsOut
from gureum.server.auth import Principal
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables_site import SiteSetting
from gureum.server.errors import ApiError, Forbidden, NotFound
from gureum.server.services import audit

ALLOW_UNSANDBOXED = "allow_unsandboxed_code"
DEFAULTS: dict[str, bool] = {ALLOW_UNSANDBOXED: False}


class SandboxUnavailable(ApiError):
    status, code = 422, "sandbox_unavailable"


def get(s: Session, name: str) -> Any:
    row = s.get(SiteSetting, name)
    return DEFAULTS[name] if row is None else row.value


def allow_unsandboxed(s: Session) -> bool:
    return bool(get(s, ALLOW_UNSANDBOXED))


def sandbox_state() -> SandboxState:
    bwrap = sandbox.bwrap_path()
    why = sandbox.probe(bwrap)
    detail = why or f"script jobs run under bubblewrap ({bwrap})"
    return SandboxState(available=why is None, bwrap=bwrap, detail=detail)


def show(db: Database, principal: Principal) -> SiteSettingsOut:
    """Any member may read them: they say what the platform does with everyone's code."""
    with db.read() as s:
        allowed = allow_unsandboxed(s)
    return SiteSettingsOut(allow_unsandboxed_code=allowed, sandbox=sandbox_state())


def set_value(db: Database, principal: Principal, name: str, value: bool) -> SiteSettingsOut:
    if name not in DEFAULTS:
        raise NotFound(f"no site setting {name!r}", details={"known": sorted(DEFAULTS)})
    if not principal.is_site_admin:
        raise Forbidden("only a site admin may change site settings")
    with db.write() as s:
        row = s.get(SiteSetting, name, with_for_update=True)
        before = DEFAULTS[name] if row is None else row.value
        if row is None:
            row = SiteSetting(name=name, value=value, updated_by=principal.user_id)
            s.add(row)
        else:
            row.value, row.updated_by, row.updated_at = value, principal.user_id, utcnow()
        audit.record(
            s, principal, "setting.set", "site_setting", name, {"from": before, "to": value}
        )
    return show(db, principal)


def check_script_job(db: Database, body: JobCreate, nodes: list[NodeInfo]) -> None:
    """Refuse a script training job the platform would have to run unsandboxed without a site
    admin's leave: no working bubblewrap here, or ranks no single node can hold (sandboxed ranks
    meet on their sandbox's own loopback; across nodes they would need the host network, where
    PostgreSQL, Redis, the control plane and Ray, whose token auth is off, listen)."""
    with db.read() as s:
        allowed = allow_unsandboxed(s)
    if allowed:
        return
    why = sandbox.probe(sandbox.bwrap_path())
    if why is not None:
        raise SandboxUnavailable(
            f"script jobs run only in a sandbox, and {why}; a site admin can allow unsandboxed "
            f"code ({ALLOW_UNSANDBOXED})",
            details={"setting": ALLOW_UNSANDBOXED},
        )
    if body.workers > 1 and nodes:
        whole = whole_job(body.resources, body.workers)
        if unplaceable(whole, 1, nodes) is not None:
            raise SandboxUnavailable(
                f"the {body.workers} ranks of a script job run on one node, in one sandbox, "
                "and no node can hold them all; ranks on several nodes would share the host "
                "network with PostgreSQL, Redis, Ray and the control plane, "
                f"so they need a site admin to allow unsandboxed code ({ALLOW_UNSANDBOXED})",
                details={"setting": ALLOW_UNSANDBOXED, "workers": body.workers},
            )
