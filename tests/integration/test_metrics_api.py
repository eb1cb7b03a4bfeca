"""GET /v1/metrics: what Prometheus scrapes, fed the way replicas feed it (usage batches on the
internal API) and with replica counts read from a fake Ray Serve. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gureum.config import Settings
from gureum.schemas.metering import ReplicaGauges, UsageBatch, UsageIn
from gureum.server.app import create_app
from gureum.server.controllers.endpoints import EndpointController
from gureum.server.db.tables_serving import Endpoint
from gureum.server.services.bootstrap import bootstrap
from gureum.server.services.endpoints import endpoint_token, token_hash
from gureum.serving.backend import AppSpec, AppState
from tests.conftest import Cloud
from tests.integration.test_consumers_api import db_of, make_endpoint, member_key, record

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class FakeServe:
    """Ray Serve as the endpoint controller sees it: applications and their running replicas."""

    data_url = "http://127.0.0.1:9"

    def __init__(self) -> None:
        self.apps: dict[str, AppState] = {}
        self.bounds: dict[str, Any] = {}
        # "gen", "gen--canary" -> the application ("ep-<id>", ...) and what it recorded
        self.app_of: dict[str, str] = {}
        self.recorded: dict[str, tuple[int | None, str | None]] = {}

    def apply(self, app: AppSpec) -> None:
        role = app.replica.role
        self.app_of[app.replica.endpoint + ("" if role == "primary" else f"--{role}")] = app.name
        self.recorded[app.name] = (app.traffic.endpoint_id, app.traffic.owner)
        self.apps.setdefault(app.name, AppState("DEPLOYING", "", 0, *self.recorded[app.name]))

    def set(self, states: dict[str, tuple[str, int]]) -> None:
        """Applications by endpoint name (``gen--canary``): (status, running replicas)."""
        self.apps = {}
        for n, (st, running) in states.items():
            endpoint, _, role = n.partition("--")
            primary = self.app_of[endpoint]  # applied; a role's application records the same
            app = f"{primary}--{role}" if role else primary
            self.apps[app] = AppState(st, "", running, *self.recorded[primary])

    def delete(self, name: str) -> None:
        self.apps.pop(name, None)

    def route(self, bounds: dict[str, Any]) -> None:
        self.bounds = bounds

    def states(self) -> dict[str, AppState]:
        return dict(self.apps)


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[Cloud, FakeServe]]:
    serve = FakeServe()
    app = create_app(settings, serving=serve)
    token = bootstrap(app.state.db)
    assert token is not None
    yield Cloud(app, settings, token), serve
    app.state.db.dispose()


def controller(cloud: Cloud) -> EndpointController:
    ctl = cloud.app.state.serving.controller
    assert isinstance(ctl, EndpointController)
    return ctl


def replica_token(cloud: Cloud, ep: Endpoint) -> str:
    """The token the controller hands the endpoint's replicas."""
    with db_of(cloud).write() as s:
        row = s.get(Endpoint, ep.id)
        assert row is not None
        token = endpoint_token(cloud.app.state.serving.secret, row)
        row.token_hash = token_hash(token)
    return token


def ship(cloud: Cloud, ep: Endpoint, batch: UsageBatch) -> None:
    r = cloud.http(replica_token(cloud, ep)).post(
        f"/v1/internal/endpoints/{ep.name}/usage",
        content=batch.model_dump_json(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200, r.text


def scrape(cloud: Cloud, key: str | None = None) -> Samples:
    r = cloud.http(key).get("/v1/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def at(rec: UsageIn, **changes: object) -> UsageIn:
    return rec.model_copy(update=changes)


def test_metrics_count_requests_latency_batches_cold_starts_and_replicas(
    served: tuple[Cloud, FakeServe],
) -> None:
    cloud, serve = served
    gen = make_endpoint(cloud, "gen")
    make_endpoint(cloud, "quiet")
    base = record(gen, None, "member:admin")
    ship(
        cloud,
        gen,
        UsageBatch(
            records=[
                at(base, id="r-00000001", latency_ms=4.0, cold_start=True),
                at(base, id="r-00000002", latency_ms=30.0),
                at(base, id="r-00000003", latency_ms=30.0),
                at(base, id="r-00000004", status=500, latency_ms=40_000.0),  # past every bucket
                at(base, id="r-00000005", role="canary", model_label="gen-model:2"),
            ],
            gauges=[
                ReplicaGauges(
                    replica="gen-primary-aaaaaa",
                    role="primary",
                    in_flight=3,
                    batch_sizes={1: 4, 8: 2},
                    cold_start_ms=1500.0,
                ),
                ReplicaGauges(replica="gen-canary-bbbbbb", role="canary", in_flight=1),
            ],
        ),
    )
    controller(cloud).tick()  # applies the new endpoints
    serve.set({"gen": ("RUNNING", 2), "gen--canary": ("RUNNING", 1), "quiet": ("DEPLOYING", 0)})
    controller(cloud).tick()  # and sees them run

    m = scrape(cloud)
    req = "gureum_endpoint_requests_total"
    primary = {"endpoint": "gen", "version": "gen-model:1", "role": "primary"}
    assert value(m, req, **primary, code="200") == 3
    assert value(m, req, **primary, code="500") == 1
    assert value(m, req, endpoint="gen", version="gen-model:2", role="canary", code="200") == 1

    # The latency histogram is cumulative per bucket; +Inf holds the request over 30 s too.
    hist = "gureum_endpoint_latency_seconds"
    v1 = {"endpoint": "gen", "version": "gen-model:1"}
    assert value(m, f"{hist}_bucket", **v1, le="0.0025") == 0
    assert value(m, f"{hist}_bucket", **v1, le="0.005") == 1
    assert value(m, f"{hist}_bucket", **v1, le="0.05") == 3
    assert value(m, f"{hist}_bucket", **v1, le="30.0") == 3
    assert value(m, f"{hist}_bucket", **v1, le="+Inf") == 4
    assert value(m, f"{hist}_count", **v1) == 4
    assert value(m, f"{hist}_sum", **v1) == pytest.approx(40.064)

    # Six model calls: four of one request, two of eight.
    bs = "gureum_endpoint_batch_size"
    assert value(m, f"{bs}_bucket", endpoint="gen", le="1.0") == 4
    assert value(m, f"{bs}_bucket", endpoint="gen", le="4.0") == 4
    assert value(m, f"{bs}_bucket", endpoint="gen", le="8.0") == 6
    assert value(m, f"{bs}_count", endpoint="gen") == 6
    assert value(m, f"{bs}_sum", endpoint="gen") == 20

    assert value(m, "gureum_endpoint_cold_starts_total", endpoint="gen") == 1
    assert value(m, "gureum_endpoint_last_cold_start_seconds", endpoint="gen") == 1.5
    assert value(m, "gureum_endpoint_queue_depth", endpoint="gen") == 4
    inflight = "gureum_endpoint_replica_in_flight"
    assert value(m, inflight, endpoint="gen", replica="gen-primary-aaaaaa") == 3
    assert value(m, inflight, endpoint="gen", replica="gen-canary-bbbbbb") == 1

    reps = "gureum_endpoint_replicas"
    assert value(m, reps, endpoint="gen", role="primary") == 2
    assert value(m, reps, endpoint="gen", role="canary") == 1
    assert value(m, reps, endpoint="gen", role="shadow") == 0
    # An endpoint without traffic is there all the same, at zero.
    assert value(m, reps, endpoint="quiet", role="primary") == 0
    assert value(m, "gureum_endpoint_queue_depth", endpoint="quiet") == 0
    assert value(m, "gureum_endpoint_cold_starts_total", endpoint="quiet") == 0
    assert value(m, "gureum_endpoint_ready", endpoint="gen") == 1
    assert value(m, "gureum_endpoint_ready", endpoint="quiet") == 0
    info = {"endpoint": "quiet", "version": "quiet-model:1", "state": "deploying"}
    assert value(m, "gureum_endpoint_info", **info) == 1

    # Counters only grow: a later batch adds to them.
    ship(cloud, gen, UsageBatch(records=[at(base, id="r-00000006", latency_ms=1.0)]))
    assert value(scrape(cloud), req, **primary, code="200") == 4


def test_metrics_show_only_the_callers_workspace(served: tuple[Cloud, FakeServe]) -> None:
    cloud, _ = served
    admin = cloud.client()
    admin.workspaces.create("other")
    other_key = admin.keys.create("o", workspace="other", role="viewer").token
    ours = make_endpoint(cloud, "ours")
    theirs = make_endpoint(cloud, "theirs", workspace="other")
    ship(cloud, ours, UsageBatch(records=[record(ours, None, "a", ago=timedelta(seconds=1))]))
    ship(cloud, theirs, UsageBatch(records=[record(theirs, None, "b")]))

    def endpoints(samples: Samples) -> set[str]:
        return {dict(labels).get("endpoint", "") for _, labels in samples} - {""}

    assert endpoints(scrape(cloud)) == {"ours"}
    assert endpoints(scrape(cloud, other_key)) == {"theirs"}


def test_metrics_need_a_workspace_key_and_speak_openmetrics(
    served: tuple[Cloud, FakeServe],
) -> None:
    cloud, _ = served
    make_endpoint(cloud, "gen")
    missing = cloud.http(False).get("/v1/metrics")  # type: ignore[arg-type]
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    consumer = cloud.client().consumers.create("acme").token
    assert cloud.http(consumer).get("/v1/metrics").status_code == 401
    # The lowest role may scrape.
    viewer = member_key(cloud, "grafana", "viewer")
    assert value(scrape(cloud, viewer), "gureum_endpoint_ready", endpoint="gen") == 0

    r = cloud.http().get(
        "/v1/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")
    assert "# TYPE gureum_endpoint_requests counter" in r.text
