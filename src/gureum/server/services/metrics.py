"""Prometheus exposition of a workspace's endpoints: live counters and gauges, never the ledger.

Counters come from the usage batches replicas ship (LiveGauges, counted since this server
started; Prometheus treats the drop at a restart as a counter reset), replica counts from what
the endpoint controller last read from Ray Serve. A registry is built per scrape with only the
caller's workspace's endpoints, so one workspace never sees another's traffic.

Drift of the endpoints that capture is computed off the scrape (DriftGauges): at most every
five minutes per endpoint, in a thread, the scrape waiting a moment for it and otherwise
showing the last values.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.schemas.drift import DriftOut
from gureum.schemas.endpoints import ReplicaCounts
from gureum.server.db.session import Database
from gureum.server.db.tables import Model, ModelVersion
from gureum.server.db.tables_serving import Endpoint
from gureum.server.services import drift
from gureum.server.services.endpoint_stats import BUCKETS, LiveGauges
from gureum.storage.store import ArtifactStore

log = logging.getLogger(__name__)

# Model calls per batch: powers of two up to the largest batch an endpoint may configure.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
ROLES = ("primary", "canary", "shadow")
INF = "+Inf"


@dataclass(frozen=True)
class EndpointRef:
    name: str
    version: str  # the primary's model label, NAME:V
    state: str
    # Captured records replicas dropped (spool full), kept in the database: never resets.
    capture_dropped: int = 0
    endpoint_id: int = 0
    capture_rate: float = 0.0


def workspace_endpoints(s: Session, workspace_id: int) -> list[EndpointRef]:
    rows = s.execute(
        select(
            Endpoint.name,
            Endpoint.state,
            Model.name,
            ModelVersion.version,
            Endpoint.capture_dropped,
            Endpoint.id,
            Endpoint.capture,
        )
        .join(ModelVersion, ModelVersion.id == Endpoint.version_id)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(Endpoint.workspace_id == workspace_id)
        .order_by(Endpoint.name)
    ).all()
    return [
        EndpointRef(name, f"{model}:{version}", state, dropped, eid, _rate(capture))
        for name, state, model, version, dropped, eid, capture in rows
    ]


def _rate(capture: object) -> float:
    rate = capture.get("rate") if isinstance(capture, dict) else None
    return float(rate) if isinstance(rate, int | float) else 0.0


@dataclass
class _Computed:
    at: float  # time.monotonic() of the computation
    out: DriftOut | None  # None: it failed (or the endpoint has nothing to compare)


class DriftGauges:
    """Drift of endpoints for the scrape, per (database, endpoint): computed in a thread at
    most every ``refresh_s``, so a slow one (a large training set read the first time) never
    holds the scrape longer than ``wait_s``; until it is done the scrape shows the last
    values, or none. An endpoint whose drift fails is logged and left out until the next
    refresh."""

    def __init__(self, refresh_s: float = 300.0, wait_s: float = 2.0, size: int = 1024) -> None:
        self.refresh_s, self.wait_s, self.size = refresh_s, wait_s, size
        self._lock = threading.Lock()
        self._done: OrderedDict[tuple[str, int, str], _Computed] = OrderedDict()
        self._running: dict[tuple[str, int, str], threading.Event] = {}

    def read(
        self, db: Database, store: ArtifactStore, endpoints: Iterable[EndpointRef]
    ) -> dict[str, DriftOut]:
        """The latest drift of each endpoint that captures (rate above 0) that has one."""
        wanted = [(db.url, ep.endpoint_id, ep.name) for ep in endpoints if ep.capture_rate > 0]
        waits = []
        now = time.monotonic()
        with self._lock:
            for key in wanted:
                last = self._done.get(key)
                if last is not None and now - last.at < self.refresh_s:
                    continue
                event = self._running.get(key)
                if event is None:
                    event = self._running[key] = threading.Event()
                    thread = threading.Thread(
                        target=self._refresh, args=(db, store, key, event), daemon=True
                    )
                    thread.start()
                waits.append(event)
        deadline = now + self.wait_s
        for event in waits:
            event.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            found = {key: self._done.get(key) for key in wanted}
        return {key[2]: c.out for key, c in found.items() if c is not None and c.out is not None}

    def _refresh(
        self,
        db: Database,
        store: ArtifactStore,
        key: tuple[str, int, str],
        event: threading.Event,
    ) -> None:
        out: DriftOut | None = None
        try:
            out = drift.compute(db, store, key[2])
        except Exception as exc:  # one endpoint's failure never breaks the scrape
            log.warning("drift of endpoint %s not computed: %s", key[2], exc)
        with self._lock:
            self._done[key] = _Computed(time.monotonic(), out)
            self._done.move_to_end(key)
            while len(self._done) > self.size:
                self._done.popitem(last=False)
            self._running.pop(key, None)
        event.set()


DRIFT_GAUGES = DriftGauges()


def _histogram(
    bounds: Sequence[float], cumulative: Sequence[int], count: int
) -> list[tuple[str, float]]:
    """Prometheus buckets from cumulative counts per bound; ``+Inf`` is every observation.
    The counts are read a moment apart from ``count``, so it is never let fall below them."""
    buckets = [(repr(float(b)), float(n)) for b, n in zip(bounds, cumulative, strict=True)]
    top = max([count, *cumulative])
    return [*buckets, (INF, float(top))]


class ServingCollector:
    """Yields the metric families of ``endpoints``, read once per scrape."""

    def __init__(
        self,
        endpoints: Iterable[EndpointRef],
        gauges: LiveGauges,
        replicas: Callable[[str], ReplicaCounts],
        drift: Mapping[str, DriftOut] | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        self.gauges = gauges
        self.replicas = replicas
        self.drift = dict(drift or {})

    def collect(self) -> Iterator[Metric]:
        live = self.gauges.snapshot()
        info = GaugeMetricFamily(
            "gureum_endpoint_info",
            "Endpoints of the workspace: the version the primary serves and the state (always 1).",
            labels=["endpoint", "version", "state"],
        )
        up = GaugeMetricFamily(
            "gureum_endpoint_ready",
            "1 while the endpoint is ready or updating (serving), else 0.",
            labels=["endpoint"],
        )
        requests = CounterMetricFamily(
            "gureum_endpoint_requests",
            "Requests served, by model version, role and HTTP status, since the server started.",
            labels=["endpoint", "version", "role", "code"],
        )
        latency = HistogramMetricFamily(
            "gureum_endpoint_latency_seconds",
            "Time a replica spent on a request, by model version.",
            labels=["endpoint", "version"],
        )
        batches = HistogramMetricFamily(
            "gureum_endpoint_batch_size",
            "Requests per model call (dynamic batching).",
            labels=["endpoint"],
        )
        cold = CounterMetricFamily(
            "gureum_endpoint_cold_starts",
            "Requests that waited for a replica to start from zero.",
            labels=["endpoint"],
        )
        last_cold = GaugeMetricFamily(
            "gureum_endpoint_last_cold_start_seconds",
            "How long the last cold start took (replica start to first answer).",
            labels=["endpoint"],
        )
        replicas = GaugeMetricFamily(
            "gureum_endpoint_replicas",
            "Running replicas, by role, as Ray Serve last reported them.",
            labels=["endpoint", "role"],
        )
        queue = GaugeMetricFamily(
            "gureum_endpoint_queue_depth",
            "Requests in flight on all replicas of the endpoint (queued or being served).",
            labels=["endpoint"],
        )
        in_flight = GaugeMetricFamily(
            "gureum_endpoint_replica_in_flight",
            "Requests in flight on one replica, as of its last usage shipment.",
            labels=["endpoint", "replica"],
        )
        dropped = CounterMetricFamily(
            "gureum_capture_dropped",
            "Captured records replicas dropped because their capture spool was full.",
            labels=["endpoint"],
        )
        pending = GaugeMetricFamily(
            "gureum_capture_pending",
            "Captured records waiting in the replicas' spools for the artifact store.",
            labels=["endpoint"],
        )
        for ep in self.endpoints:
            name = ep.name
            info.add_metric([name, ep.version, ep.state], 1.0)
            dropped.add_metric([name], float(ep.capture_dropped))
            spools = dict(live[name].capture_pending) if name in live else {}
            pending.add_metric([name], float(sum(n for n, _ in spools.values())))
            up.add_metric([name], 1.0 if ep.state in ("ready", "updating") else 0.0)
            counts = self.replicas(name)
            for role in ROLES:
                replicas.add_metric([name, role], float(getattr(counts, role)))
            stats = live.get(name)
            if stats is None:
                queue.add_metric([name], 0.0)
                cold.add_metric([name], 0.0)
                continue
            # Copies first: replicas' batches keep arriving while the scrape is written.
            served = dict(stats.requests)
            flights = dict(stats.in_flight)
            sizes = dict(stats.batch_sizes)
            per_version: dict[str, int] = {}
            for (version, role, code), n in sorted(served.items()):
                requests.add_metric([name, version, role, str(code)], float(n))
                per_version[version] = per_version.get(version, 0) + n
            for version, cumulative in sorted(dict(stats.latency_buckets).items()):
                buckets = _histogram(BUCKETS, list(cumulative), per_version.get(version, 0))
                total = stats.latency_sum.get(version, 0.0)
                latency.add_metric([name, version], buckets, total)
            if sizes:
                below = [sum(n for size, n in sizes.items() if size <= b) for b in BATCH_BUCKETS]
                calls = sum(sizes.values())
                batch_sum = float(sum(size * n for size, n in sizes.items()))
                batches.add_metric([name], _histogram(BATCH_BUCKETS, below, calls), batch_sum)
            cold.add_metric([name], float(stats.cold_starts))
            if stats.last_cold_start_ms is not None:
                last_cold.add_metric([name], stats.last_cold_start_ms / 1000)
            queue.add_metric([name], float(sum(n for n, _ in flights.values())))
            for replica, (n, _) in sorted(flights.items()):
                in_flight.add_metric([name, replica], float(n))
        yield from (info, up, requests, latency, batches, cold, last_cold)
        yield from (replicas, queue, in_flight, dropped, pending)
        yield from self._drift()

    def _drift(self) -> Iterator[Metric]:
        psi = GaugeMetricFamily(
            "gureum_drift_psi",
            "PSI of a feature's live inputs (captured calls of the last 24 h) against the "
            "training data: below 0.1 stable, 0.1-0.25 moderate, above 0.25 drift.",
            labels=["endpoint", "feature"],
        )
        score = GaugeMetricFamily(
            "gureum_drift_score",
            "The largest feature PSI of the endpoint (absent with too few captured calls).",
            labels=["endpoint"],
        )
        samples = GaugeMetricFamily(
            "gureum_drift_samples",
            "Live samples (rows, pictures, prompts) the drift was computed from.",
            labels=["endpoint"],
        )
        for name, d in sorted(self.drift.items()):
            samples.add_metric([name], float(d.samples))
            if d.score is not None:
                score.add_metric([name], d.score)
            for f in d.features:
                psi.add_metric([name, f.name], f.psi)
        yield from (psi, score, samples)


def exposition(
    collector: ServingCollector, accept: str | None, *more: Collector
) -> tuple[bytes, str]:
    """The scrape body and its content type: OpenMetrics when the scraper asks for it (as
    Prometheus does), else the classic text format."""
    registry = CollectorRegistry(auto_describe=False)
    for one in (collector, *more):
        registry.register(one)
    encode, content_type = choose_encoder(accept or "")
    return encode(registry), content_type
