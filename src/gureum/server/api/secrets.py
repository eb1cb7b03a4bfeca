"""Workspace secrets: set and delete (developer and up), list names (any member)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from gureum.schemas.common import ErrorBody
from gureum.schemas.secrets import SecretOut, SecretSet
from gureum.server.deps import DbDep, SettingsDep, Viewer
from gureum.server.services import secrets as svc

router = APIRouter(
    prefix="/secrets",
    tags=["secrets"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)


@router.get("")
def list_secrets(db: DbDep, principal: Viewer) -> list[SecretOut]:
    return svc.list_names(db, principal)


@router.put("/{name}", responses={422: {"model": ErrorBody}})
def set_secret(
    name: str, body: SecretSet, db: DbDep, settings: SettingsDep, principal: Viewer
) -> SecretOut:
    return svc.put(db, settings.home, principal, name, body.value)


@router.delete(
    "/{name}", status_code=status.HTTP_204_NO_CONTENT, responses={404: {"model": ErrorBody}}
)
def delete_secret(name: str, db: DbDep, principal: Viewer) -> Response:
    svc.delete(db, principal, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
