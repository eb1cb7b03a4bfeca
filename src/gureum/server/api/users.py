"""Members of the key's workspace: add, list, change role, remove."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from gureum.schemas.common import ErrorBody, Page
from gureum.schemas.tenancy import MemberOut, UserCreate, UserRoleUpdate
from gureum.server.deps import AuthDep, DbDep, Viewer
from gureum.server.pagination import PageParams, page_params
from gureum.server.services import users as svc

router = APIRouter(prefix="/users", tags=["users"], responses={404: {"model": ErrorBody}})


@router.post("", status_code=status.HTTP_201_CREATED)
def add_user(body: UserCreate, db: DbDep, principal: Viewer) -> MemberOut:
    return svc.add(db, principal, body)


@router.get("")
def list_users(
    db: DbDep, principal: Viewer, params: Annotated[PageParams, Depends(page_params)]
) -> Page[MemberOut]:
    return svc.list_members(db, principal, params)


@router.patch("/{name}")
def set_user_role(
    name: str, body: UserRoleUpdate, db: DbDep, auth: AuthDep, principal: Viewer
) -> MemberOut:
    member = svc.set_role(db, principal, name, body)
    auth.invalidate()  # cached principals carry the old role
    return member


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def remove_user(name: str, db: DbDep, auth: AuthDep, principal: Viewer) -> Response:
    svc.remove(db, principal, name)
    auth.invalidate()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
