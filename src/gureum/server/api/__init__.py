"""One router per resource; thin: parse, authorize, call a service."""

from fastapi import APIRouter

from gureum.server.api import (
    audit,
    blobs,
    catalog,
    consumers,
    datasets,
    endpoints,
    health,
    internal,
    jobs,
    keys,
    metrics,
    models,
    secrets,
    site_settings,
    usage,
    users,
    validations,
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
    validations.router,
    catalog.router,
    jobs.router,
    endpoints.router,
    internal.router,
    consumers.plans_router,
    consumers.router,
    usage.usage_router,
    usage.invoices_router,
    usage.costs_router,
    metrics.router,
    site_settings.router,
    secrets.router,
]
