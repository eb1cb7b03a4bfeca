"""Numbers about served traffic: per-version stats from the usage ledger, live replica gauges
shipped with usage batches, and the canary verdict that compares the two versions.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.schemas.endpoints import (
    CanaryLimits,
    EndpointConfig,
    EndpointStats,
    ReplicaCounts,
    VersionStats,
)
from gureum.schemas.metering import UsageBatch
from gureum.server.db.base import utcnow
from gureum.server.db.tables_serving import Endpoint, ShadowRecord, UsageRecord

MAX_ROWS = 20_000
# Latency buckets (seconds) of the Prometheus histogram.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
GAUGE_TTL_S = 30.0


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def _is_error(status: int) -> bool:
    return status >= 500


def version_stats(
    s: Session, ep: Endpoint, since: datetime
) -> dict[tuple[str, str], tuple[list[float], int]]:
    """(label, role) -> (sorted latencies, errors) of the endpoint's requests since ``since``."""
    rows = s.execute(
        select(
            UsageRecord.model_label, UsageRecord.role, UsageRecord.status, UsageRecord.latency_ms
        )
        .where(UsageRecord.endpoint_id == ep.id, UsageRecord.time >= since)
        .order_by(UsageRecord.time.desc())
        .limit(MAX_ROWS)
    ).all()
    lat: dict[tuple[str, str], list[float]] = defaultdict(list)
    errors: Counter[tuple[str, str]] = Counter()
    for label, role, status, latency in rows:
        lat[(label, role)].append(latency)
        if _is_error(status):
            errors[(label, role)] += 1
    return {k: (sorted(v), errors[k]) for k, v in lat.items()}


def role_stats(s: Session, ep: Endpoint, since: datetime) -> dict[str, tuple[list[float], int]]:
    """role ("primary", "canary", "shadow") -> (sorted latencies, errors) since ``since``."""
    by_role: dict[str, tuple[list[float], int]] = {}
    for (_, role), value in version_stats(s, ep, since).items():
        lat, err = by_role.get(role, ([], 0))
        by_role[role] = (sorted(lat + value[0]), err + value[1])
    return by_role


def judge_canary(s: Session, ep: Endpoint) -> str | None:
    """Why the canary must go, or None while it is within its limits (or has too few requests)."""
    assert ep.canary_started_at is not None
    limits = EndpointConfig.model_validate(ep.config).canary_limits
    by_role = role_stats(s, ep, ep.canary_started_at)
    return verdict(by_role.get("canary"), by_role.get("primary"), limits)


def verdict(
    canary: tuple[list[float], int] | None,
    primary: tuple[list[float], int] | None,
    limits: CanaryLimits,
) -> str | None:
    if canary is None or len(canary[0]) < limits.min_requests:
        return None
    c_lat, c_err = canary
    c_rate = c_err / len(c_lat)
    p_lat, p_err = primary if primary else ([], 0)
    p_rate = p_err / len(p_lat) if p_lat else 0.0
    if c_rate - p_rate > limits.max_error_rate_increase:
        return (
            f"error rate {c_rate:.1%} over {len(c_lat)} requests vs {p_rate:.1%} for the primary "
            f"(limit +{limits.max_error_rate_increase:.1%})"
        )
    c95, p95 = percentile(c_lat, 0.95), percentile(p_lat, 0.95)
    if len(p_lat) >= limits.min_requests and c95 and p95 and c95 > limits.max_latency_ratio * p95:
        return (
            f"p95 latency {c95:.1f} ms vs {p95:.1f} ms for the primary "
            f"(limit {limits.max_latency_ratio:g}x)"
        )
    return None


@dataclass
class _EndpointLive:
    requests: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    latency_buckets: dict[str, list[int]] = field(default_factory=dict)
    latency_sum: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    batch_sizes: Counter[int] = field(default_factory=Counter)
    cold_starts: int = 0
    last_cold_start_ms: float | None = None
    # replica -> (in_flight, seen at)
    in_flight: dict[str, tuple[int, float]] = field(default_factory=dict)
    # role -> the engine its replicas last reported
    engines: dict[str, str] = field(default_factory=dict)
    # replica -> (captured records waiting in its spool, seen at)
    capture_pending: dict[str, tuple[int, float]] = field(default_factory=dict)


class LiveGauges:
    """Counters since this server started, fed by usage batches: what /metrics exports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_endpoint: dict[str, _EndpointLive] = defaultdict(_EndpointLive)

    def observe(self, endpoint: str, batch: UsageBatch) -> None:
        with self._lock:
            live = self._by_endpoint[endpoint]
            for r in batch.records:
                live.requests[(r.model_label, r.role, r.status)] += 1
                buckets = live.latency_buckets.setdefault(r.model_label, [0] * len(BUCKETS))
                seconds = r.latency_ms / 1000
                for i, bound in enumerate(BUCKETS):
                    if seconds <= bound:
                        buckets[i] += 1
                live.latency_sum[r.model_label] += seconds
                if r.cold_start:
                    live.cold_starts += 1
            now = time.monotonic()
            for g in batch.gauges:
                live.batch_sizes.update(g.batch_sizes)
                live.in_flight[g.replica] = (g.in_flight, now)
                if g.cold_start_ms is not None:
                    live.last_cold_start_ms = g.cold_start_ms
                if g.engine is not None:
                    live.engines[g.role] = g.engine
                live.capture_pending[g.replica] = (g.capture_pending, now)

    def snapshot(self) -> dict[str, _EndpointLive]:
        with self._lock:
            now = time.monotonic()
            for live in self._by_endpoint.values():
                for gauge in (live.in_flight, live.capture_pending):
                    for k in [k for k, (_, at) in gauge.items() if now - at > GAUGE_TTL_S]:
                        del gauge[k]
            return dict(self._by_endpoint)

    def queue_depth(self, endpoint: str) -> int:
        live = self.snapshot().get(endpoint)
        return sum(n for n, _ in live.in_flight.values()) if live else 0

    def capture_pending(self, endpoint: str) -> int:
        live = self.snapshot().get(endpoint)
        return sum(n for n, _ in live.capture_pending.values()) if live else 0

    def engines(self, endpoint: str) -> dict[str, str]:
        live = self.snapshot().get(endpoint)
        return dict(live.engines) if live else {}

    def batch_size_avg(self, endpoint: str) -> float | None:
        live = self.snapshot().get(endpoint)
        if not live or not live.batch_sizes:
            return None
        calls = sum(live.batch_sizes.values())
        return sum(size * n for size, n in live.batch_sizes.items()) / calls


def endpoint_stats(
    s: Session, ep: Endpoint, window_s: float, replicas: ReplicaCounts, gauges: LiveGauges
) -> EndpointStats:
    since = utcnow() - timedelta(seconds=window_s)
    shadow_rows = s.execute(
        select(ShadowRecord.model_label, ShadowRecord.status, ShadowRecord.latency_ms).where(
            ShadowRecord.endpoint_id == ep.id, ShadowRecord.time >= since
        )
    ).all()
    groups = version_stats(s, ep, since)
    for label, status, latency in shadow_rows:
        lat, err = groups.get((label, "shadow"), ([], 0))
        lat.append(latency)
        groups[(label, "shadow")] = (lat, err + int(_is_error(status)))
    versions = []
    for (label, role), (lat, err) in sorted(groups.items()):
        lat.sort()
        versions.append(
            VersionStats(
                label=label,
                role=role,
                requests=len(lat),
                errors=err,
                error_rate=err / len(lat) if lat else 0.0,
                p50_ms=percentile(lat, 0.5),
                p95_ms=percentile(lat, 0.95),
                p99_ms=percentile(lat, 0.99),
            )
        )
    cold = s.execute(
        select(UsageRecord.latency_ms)
        .where(
            UsageRecord.endpoint_id == ep.id,
            UsageRecord.cold_start.is_(True),
            UsageRecord.time >= since,
        )
        .order_by(UsageRecord.time.desc())
    ).all()
    return EndpointStats(
        window_s=window_s,
        versions=versions,
        cold_starts=len(cold),
        last_cold_start_ms=cold[0][0] if cold else None,
        replicas=replicas,
        queue_depth=gauges.queue_depth(ep.name),
        batch_size_avg=gauges.batch_size_avg(ep.name),
        engines=gauges.engines(ep.name),
    )
