"""Typed dependencies the routers declare: the database, settings, and who is calling.

They are ``async`` on purpose: FastAPI runs a sync dependency in the thread pool, and a
thread hop per dependency costs more than the work they do. Only a key that is not in the
authenticator's cache goes to a thread for its database lookup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from gureum.config import Settings
from gureum.schemas.endpoints import ReplicaCounts
from gureum.server import sessions
from gureum.server.auth import Authenticator, Principal
from gureum.server.controllers.endpoints import EndpointController
from gureum.server.controllers.jobs import JobController
from gureum.server.db.session import Database
from gureum.server.services.endpoint_stats import LiveGauges
from gureum.storage.store import ArtifactStore


async def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


async def get_authenticator(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


async def current_principal(request: Request) -> Principal:
    # The header is read directly rather than declared as a Header() parameter: FastAPI's
    # parameter validation costs more than the cached key check. The OpenAPI schema documents
    # the bearer scheme globally (see app.py).
    authorization = request.headers.get("authorization")
    auth: Authenticator = request.app.state.auth
    if authorization is None:
        # A browser signed in to the dashboard: the session cookie stands in for the key (and
        # must come with its CSRF token to change anything); a bearer key always wins.
        session = request.cookies.get(sessions.COOKIE)
        if session:
            return await run_in_threadpool(
                sessions.cookie_principal,
                request.app.state.db,
                auth,
                session,
                request.method,
                request.headers.get(sessions.CSRF_HEADER),
            )
    principal = auth.cached(authorization)
    if principal is None:
        principal = await run_in_threadpool(auth.authenticate, authorization)
    return principal


def _role(needed: str) -> Callable[[Request], Awaitable[Principal]]:
    # One flat dependency per role (not one nested on current_principal): every level of
    # dependency costs FastAPI a solve on each request.
    async def dependency(request: Request) -> Principal:
        principal = await current_principal(request)
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


async def get_jobs(request: Request) -> JobController | None:
    controller: JobController | None = request.app.state.jobs
    return controller


JobsDep = Annotated[JobController | None, Depends(get_jobs)]


@dataclass
class Serving:
    """The serving side as the routers see it; without a cluster there is no controller."""

    secret: bytes
    gauges: LiveGauges
    controller: EndpointController | None = None
    # This server joined a Ray cluster (``settings.ray_address``): work such as a manual
    # validation can run there. Not the process's Ray state: tests join clusters in turn.
    cluster: bool = False

    @property
    def data_url(self) -> str | None:
        return self.controller.data_url if self.controller else None

    def live(self, name: str) -> ReplicaCounts:
        return self.controller.live(name) if self.controller else ReplicaCounts()


async def get_serving(request: Request) -> Serving:
    serving: Serving = request.app.state.serving
    return serving


ServingDep = Annotated[Serving, Depends(get_serving)]
