"""The audit log of the key's workspace, newest first (admins only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from gureum.schemas.common import Page
from gureum.schemas.tenancy import AuditEventOut
from gureum.server.deps import DbDep, Viewer
from gureum.server.pagination import PageParams, page_params
from gureum.server.services import audit as svc

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("")
def list_audit(
    db: DbDep,
    principal: Viewer,
    params: Annotated[PageParams, Depends(page_params)],
    action: Annotated[str | None, Query(description="only this action, e.g. key.create")] = None,
) -> Page[AuditEventOut]:
    return svc.list_events(db, principal, params, action)
