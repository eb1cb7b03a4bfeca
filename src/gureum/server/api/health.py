"""Liveness and readiness. /v1/health is the one route that needs no key."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy import text

from gureum import __version__
from gureum.server.deps import DbDep, StoreDep, Viewer

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    version: str
    # Whether this API server leads the controllers (one leader per database).
    leader: bool = False


class WhoAmI(BaseModel):
    user: str
    workspace: str
    role: str
    key_id: str
    is_site_admin: bool


class Readiness(BaseModel):
    database: bool
    artifacts: bool
    leader: bool = False
    # The leader's term: it grows by one at every change of leader.
    leader_epoch: int | None = None


@router.get("/health")
def health(request: Request) -> Health:
    return Health(status="ok", version=__version__, leader=request.app.state.leadership.leading)


@router.get("/health/ready")
def ready(request: Request, db: DbDep, store: StoreDep, _: Viewer) -> Readiness:
    try:
        with db.read() as s:
            s.execute(text("SELECT 1"))
        db_ok = True
    except Exception:
        db_ok = False
    epoch = request.app.state.leadership.epoch
    return Readiness(
        database=db_ok, artifacts=store.healthy(), leader=epoch is not None, leader_epoch=epoch
    )


@router.get("/whoami")
def whoami(principal: Viewer) -> WhoAmI:
    return WhoAmI(
        user=principal.user_name,
        workspace=principal.workspace_name,
        role=principal.role,
        key_id=principal.key_id,
        is_site_admin=principal.is_site_admin,
    )
