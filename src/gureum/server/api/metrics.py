"""Prometheus scrape target: GET /v1/metrics with a viewer key, the workspace's endpoints only.

Prometheus sends the key with ``authorization: {credentials: <key>}`` in its scrape config.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from gureum.server.deps import DbDep, ServingDep, SettingsDep, StoreDep, Viewer
from gureum.server.leader import LeaderCollector
from gureum.server.services import budgets
from gureum.server.services.budget_metrics import BudgetCollector
from gureum.server.services.costs import prices_from
from gureum.server.services.metrics import (
    DRIFT_GAUGES,
    ServingCollector,
    exposition,
    workspace_endpoints,
)
from gureum.server.services.preemption import PreemptionCollector
from gureum.server.services.usage import current_period

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(
    request: Request,
    db: DbDep,
    store: StoreDep,
    serving: ServingDep,
    settings: SettingsDep,
    principal: Viewer,
) -> Response:
    """Request counts, latency and batch-size histograms, cold starts, replicas and queue depth
    of the workspace's endpoints, the drift of those that capture, the workspace's budget and
    its jobs preempted for serving (OpenMetrics when the scraper asks for it)."""
    with db.read() as s:
        endpoints = workspace_endpoints(s, principal.workspace_id)
    drift = DRIFT_GAUGES.read(db, store, endpoints)
    collector = ServingCollector(endpoints, serving.gauges, serving.live, drift)
    budget = budgets.for_report(db, principal, current_period(), prices_from(settings))
    accept = request.headers.get("accept")
    leader = LeaderCollector(request.app.state.leadership)
    preempted = PreemptionCollector(db, principal.workspace_id, principal.workspace_name)
    body, content_type = exposition(collector, accept, BudgetCollector(budget), leader, preempted)
    return Response(body, media_type=content_type)
