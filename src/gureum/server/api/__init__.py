"""One router per resource; thin: parse, authorize, call a service."""

from fastapi import APIRouter

from gureum.server.api import (
    audit,
    blobs,
    datasets,
    health,
    jobs,
    keys,
    models,
    users,
    workspaces,
)

ROUTERS: list[APIRouter] = [
    health.router,
    workspaces.router,
    users.router,
    keys.router,
    audit.router,
    datasets.router,
    blobs.router,
    models.router,
    jobs.router,
]
