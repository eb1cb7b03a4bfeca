"""The model catalog: what this workspace can deploy."""

from __future__ import annotations

from fastapi import APIRouter

from gureum.schemas.catalog import CatalogEntry
from gureum.server.deps import DbDep, Viewer
from gureum.server.services import catalog as svc

router = APIRouter(prefix="/catalog", tags=["models"])


@router.get("")
def catalog(db: DbDep, principal: Viewer) -> list[CatalogEntry]:
    """The workspace's deployable versions (each model's production version, else its
    latest), the built-in recipes whose trained models serve, and the import formats that
    serve without code, with their task, billing unit and what a replica needs."""
    return svc.catalog(db, principal)
