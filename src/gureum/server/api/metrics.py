"""Prometheus scrape target: GET /v1/metrics with a viewer key, the workspace's endpoints only.

Prometheus sends the key with ``authorization: {credentials: <key>}`` in its scrape config.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from gureum.server.deps import DbDep, ServingDep, StoreDep, Viewer
from gureum.server.services.metrics import (
    DRIFT_GAUGES,
    ServingCollector,
    exposition,
    workspace_endpoints,
)

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(
    request: Request, db: DbDep, store: StoreDep, serving: ServingDep, principal: Viewer
) -> Response:
    """Request counts, latency and batch-size histograms, cold starts, replicas and queue depth
    of the workspace's endpoints, and the drift of those that capture (OpenMetrics when the
    scraper asks for it)."""
    with db.read() as s:
        endpoints = workspace_endpoints(s, principal.workspace_id)
    drift = DRIFT_GAUGES.read(db, store, endpoints)
    collector = ServingCollector(endpoints, serving.gauges, serving.live, drift)
    body, content_type = exposition(collector, request.headers.get("accept"))
    return Response(body, media_type=content_type)
