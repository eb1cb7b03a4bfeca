"""API keys: the token is in the create response only; lists never show secrets."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status

from gureum.schemas.common import ErrorBody, Page
from gureum.schemas.tenancy import KeyCreate, KeyCreated, KeyOut
from gureum.server.deps import AuthDep, DbDep, Viewer
from gureum.server.pagination import PageParams, page_params
from gureum.server.services import keys as svc

router = APIRouter(prefix="/keys", tags=["keys"], responses={404: {"model": ErrorBody}})


@router.post("", status_code=status.HTTP_201_CREATED)
def create_key(body: KeyCreate, db: DbDep, principal: Viewer) -> KeyCreated:
    return svc.create(db, principal, body)


@router.get("")
def list_keys(
    db: DbDep, principal: Viewer, params: Annotated[PageParams, Depends(page_params)]
) -> Page[KeyOut]:
    return svc.list_keys(db, principal, params)


@router.delete("/{key_id}")
def revoke_key(key_id: str, db: DbDep, auth: AuthDep, principal: Viewer) -> KeyOut:
    key = svc.revoke(db, principal, key_id)
    auth.invalidate()  # takes effect on the very next request
    return key
