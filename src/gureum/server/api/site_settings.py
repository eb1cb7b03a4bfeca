"""Site settings: read by any member, changed by a site admin only (audited)."""

from __future__ import annotations

from fastapi import APIRouter

from gureum.schemas.common import ErrorBody
from gureum.schemas.site_settings import SettingUpdate, SiteSettingsOut
from gureum.server.deps import DbDep, Viewer
from gureum.server.services import site_settings as svc

router = APIRouter(
    prefix="/settings",
    tags=["settings"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)


@router.get("")
def get_settings(db: DbDep, principal: Viewer) -> SiteSettingsOut:
    return svc.show(db, principal)


@router.put("/{name}", responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}})
def set_setting(name: str, body: SettingUpdate, db: DbDep, principal: Viewer) -> SiteSettingsOut:
    return svc.set_value(db, principal, name, body.value)
