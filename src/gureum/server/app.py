"""FastAPI factory: every router is mounted under /v1 and answers errors in one JSON shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gureum import __version__
from gureum.config import Settings
from gureum.server.api import ROUTERS
from gureum.server.auth import Authenticator
from gureum.server.db.migrate import upgrade
from gureum.server.db.session import Database
from gureum.server.errors import install_error_handlers
from gureum.storage.store import ArtifactStore


def create_app(settings: Settings | None = None, *, migrate: bool = True) -> FastAPI:
    settings = settings or Settings()
    db = Database(settings.resolved_database_url)
    if migrate:
        upgrade(db.engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        db.dispose()

    app = FastAPI(
        title="gureum",
        version=__version__,
        description="A self-hostable AI cloud: datasets, training, registry, metered model APIs.",
        lifespan=lifespan,
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.store = ArtifactStore(settings.resolved_artifacts)
    app.state.auth = Authenticator(db)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router, prefix="/v1")
    return app
