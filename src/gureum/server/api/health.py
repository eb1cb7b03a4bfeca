"""Liveness and readiness. /v1/health is the one route that needs no key."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import text

from gureum import __version__
from gureum.server.deps import DbDep, StoreDep, Viewer

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    version: str


class WhoAmI(BaseModel):
    user: str
    workspace: str
    role: str
    key_id: str
    is_site_admin: bool


class Readiness(BaseModel):
    database: bool
    artifacts: bool


@router.get("/health")
def health() -> Health:
    return Health(status="ok", version=__version__)


@router.get("/health/ready")
def ready(db: DbDep, store: StoreDep, _: Viewer) -> Readiness:
    try:
        with db.read() as s:
            s.execute(text("SELECT 1"))
        db_ok = True
    except Exception:
        db_ok = False
    return Readiness(database=db_ok, artifacts=store.healthy())


@router.get("/whoami")
def whoami(principal: Viewer) -> WhoAmI:
    return WhoAmI(
        user=principal.user_name,
        workspace=principal.workspace_name,
        role=principal.role,
        key_id=principal.key_id,
        is_site_admin=principal.is_site_admin,
    )
