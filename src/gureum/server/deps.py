"""Typed dependencies the routers declare: the database, settings, and who is calling."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from gureum.config import Settings
from gureum.server.auth import Authenticator, Principal
from gureum.server.db.session import Database
from gureum.storage.store import ArtifactStore


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


def get_authenticator(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


def current_principal(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    return get_authenticator(request).authenticate(authorization)


def _role(needed: str):  # type: ignore[no-untyped-def]
    def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        principal.require(needed)
        return principal

    return dependency


DbDep = Annotated[Database, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
AuthDep = Annotated[Authenticator, Depends(get_authenticator)]
Viewer = Annotated[Principal, Depends(_role("viewer"))]
Developer = Annotated[Principal, Depends(_role("developer"))]
Admin = Annotated[Principal, Depends(_role("admin"))]
Owner = Annotated[Principal, Depends(_role("owner"))]
