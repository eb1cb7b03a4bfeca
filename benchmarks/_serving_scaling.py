"""Parts 3 and 4 of ``bench_serving``: autoscaling on a bursty trace, and cold start from
zero replicas; each against bare Ray Serve deployments of the same model on the same cluster.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from ray import serve

from benchmarks._serving_load import Trace, closed_loop, open_loop, sequential
from benchmarks._serving_util import (
    JSON,
    ROW,
    ReplicaSampler,
    ServingCloud,
    delete_bare,
    deploy_bare,
    med,
    pct,
    rnd,
    rotate,
    wait_replicas,
    wait_route,
)
from benchmarks._util import load_average
from gureum.schemas.endpoints import Autoscaling
from gureum.serving.backend import autoscaling_config

# -- 3. autoscaling on a bursty trace --------------------------------------------------------------


def autoscale(
    cloud: ServingCloud, cls: Path, images: list[str], cfg: dict[str, Any]
) -> dict[str, Any]:
    n_max, k = cfg["max_replicas"], cfg["images_per_request"]
    body = json.dumps({"inputs": images[:k]}).encode()
    capacity = None if cfg["peak_rps"] else _capacity(cloud, cls, body)
    peak = cfg.get("peak_rps") or round(cfg["peak_factor"] * (capacity or 1.0), 1)
    trace = Trace(cfg["seconds"], peak, peak / 15, cfg["bursts"], cfg["burst_s"])
    arrivals = trace.arrivals(seed=1)
    print(
        f"  trace: {len(arrivals)} requests over {trace.seconds:.0f}s, peak {peak}/s, "
        f"base {trace.base_rps:.2f}/s (one replica handles about {capacity}/s)",
        flush=True,
    )
    small = {"cpus": 0.25}
    no_batch = {"max_batch_size": 1, "max_wait_ms": 0}
    ours = {"min_replicas": 1, "max_replicas": n_max, "downscale_delay_s": cfg["downscale_delay_s"]}
    variants: dict[str, Callable[[], str]] = {
        "gureum_autoscaling": lambda: (
            cloud.deploy(
                "as-auto", "cls", {"resources": small, "autoscaling": ours, "batching": no_batch}
            )
            + "/predict"
        ),
        "ray_default_autoscaling": lambda: (
            cloud.data_url
            + deploy_bare(
                "as-ray",
                cls,
                "image-classifier",
                cpus=0.25,
                autoscaling={"min_replicas": 1, "max_replicas": n_max},
            )
        ),
        "static_peak": lambda: (
            cloud.deploy(
                "as-static",
                "cls",
                {
                    "resources": small,
                    "autoscaling": {"min_replicas": n_max, "max_replicas": n_max},
                    "batching": no_batch,
                },
            )
            + "/predict"
        ),
    }
    apps = {
        "gureum_autoscaling": "as-auto",
        "ray_default_autoscaling": "as-ray",
        "static_peak": "as-static",
    }
    out: dict[str, Any] = {
        "trace": {
            "seconds": trace.seconds,
            "peak_rps": peak,
            "base_rps": rnd(trace.base_rps, 2),
            "bursts": trace.bursts,
            "burst_s": trace.burst_s,
            "requests": len(arrivals),
            "mean_rps": rnd(len(arrivals) / trace.seconds, 2),
            "peak_over_mean": rnd(peak / (len(arrivals) / trace.seconds), 2),
        },
        "images_per_request": k,
        "one_replica_capacity_rps": capacity,
        "max_replicas": n_max,
        "latency_target_ms": cfg["latency_target_ms"],
        "gureum_autoscaling_config": Autoscaling(**ours).model_dump(),
        "variants": {},
    }
    headers = cloud.consumer("bench-autoscale")
    variants = {k: v for k, v in variants.items() if k in cfg["variants"]}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for rep in range(cfg["repeats"]):
        for name in rotate(list(variants), rep):
            run = _run_trace(cloud, variants[name], apps[name], headers, body, arrivals, cfg)
            runs[name].append(run)
            v = runs[name][-1]
            print(
                f"  {name} (run {rep + 1}): {v['replica_seconds']:.0f} replica-s, within target "
                f"{v['within_target']:.1%}, p95 {v['p95_ms']:.0f} ms, peak replicas "
                f"{v['peak_replicas']}, load {v['load']}",
                flush=True,
            )
    static = n_max * trace.seconds  # what a static deployment sized for the peak uses
    for name, rs in runs.items():
        rep_s = med([r["replica_seconds"] for r in rs])
        out["variants"][name] = {
            "replica_seconds": rnd(rep_s, 1),
            "replica_seconds_vs_static": rnd(rep_s / static),
            "within_target": rnd(med([r["within_target"] for r in rs]), 4),
            "p50_ms": rnd(med([r["p50_ms"] for r in rs]), 1),
            "p95_ms": rnd(med([r["p95_ms"] for r in rs]), 1),
            "p99_ms": rnd(med([r["p99_ms"] for r in rs]), 1),
            "peak_replicas": max(r["peak_replicas"] for r in rs),
            "runs": rs,
        }
    return out


def _run_trace(
    cloud: ServingCloud,
    start: Callable[[], str],
    app: str,
    headers: dict[str, str],
    body: bytes,
    arrivals: list[float],
    cfg: dict[str, Any],
) -> dict[str, Any]:
    """Deploy one variant, play the trace at it, take it down again."""
    url = start()
    hdrs = JSON if app == "as-ray" else headers
    try:
        wait_route(url, body, hdrs)
        with httpx.Client(headers=hdrs, timeout=30) as c:
            sequential(c, url, body, 5)
        load = load_average()
        with ReplicaSampler([app]) as sampler:
            t0 = time.time()
            sent = open_loop(url, hdrs, body, arrivals, timeout=120)
            t1 = time.time()
        return _trace_result(cloud, sampler, app, sent, t0, t1, cfg) | {
            "load": [load, load_average()]
        }
    finally:
        if app == "as-ray":
            delete_bare(app)
        else:
            cloud.delete(app)


def _capacity(cloud: ServingCloud, cls: Path, body: bytes) -> float:
    """Requests/s one 0.25-CPU replica answers with 4 clients, before the trace is sized."""
    deploy_bare("as-cap", cls, "image-classifier", cpus=0.25, max_ongoing_requests=64)
    try:
        url = f"{cloud.data_url}/as-cap"
        wait_route(url, body, JSON)
        closed_loop(url, JSON, body, 4, 1.0)
        return rnd(closed_loop(url, JSON, body, 4, 5.0).rps, 1)
    finally:
        delete_bare("as-cap")


def _trace_result(
    cloud: ServingCloud,
    sampler: ReplicaSampler,
    app: str,
    sent: list[Any],
    t0: float,
    t1: float,
    cfg: dict[str, Any],
) -> dict[str, Any]:
    target = cfg["latency_target_ms"]
    ok = [s for s in sent if s.status == 200]
    lat = [s.latency_ms for s in ok]
    statuses: dict[int, int] = {}
    for s in sent:
        statuses[s.status] = statuses.get(s.status, 0) + 1
    within = sum(1 for s in ok if s.latency_ms <= target)
    result = {
        "seconds": rnd(t1 - t0, 1),
        "requests": len(sent),
        "ok": len(ok),
        "statuses": statuses,
        "within_target": rnd(within / len(sent), 4) if sent else 0.0,
        "p50_ms": rnd(pct(lat, 50), 1),
        "p95_ms": rnd(pct(lat, 95), 1),
        "p99_ms": rnd(pct(lat, 99), 1),
        "replica_seconds": rnd(sampler.replica_seconds(app, t0, t1), 1),
        "running_replica_seconds": rnd(sampler.replica_seconds(app, t0, t1, running_only=True), 1),
        "peak_replicas": sampler.peak(app, t0, t1),
        "replicas_every_5s": sampler.timeline(app, t0),
        # By when they were sent: where in the trace the slow requests were.
        "p50_ms_every_10s": [
            rnd(pct([x.latency_ms for x in ok if w <= x.at < w + 10], 50), 0)
            for w in range(0, int(t1 - t0), 10)
        ],
    }
    if not app.startswith("as-ray"):
        ledger = cloud.ledger_replica_seconds(app, t0, t1)
        if ledger["end"] > ledger["start"]:
            result["ledger_check"] = {
                "window_s": rnd(ledger["end"] - ledger["start"], 1),
                "ledger_replica_seconds": rnd(ledger["replica_seconds"], 1),
                "sampled_running_replica_seconds": rnd(
                    sampler.replica_seconds(app, ledger["start"], ledger["end"], True), 1
                ),
            }
    return result


# -- 4. cold start ---------------------------------------------------------------------------------


def coldstart(cloud: ServingCloud, tab: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """All scale to zero with the same settings, then get one request each, in turn: ours over
    HTTP, and two bare deployments, one over HTTP (HAProxy hands a route with no replica to Ray
    Serve's own proxy, which holds the request) and one through a deployment handle."""
    idle = cfg["idle_s"]
    scaling = Autoscaling(
        min_replicas=0, max_replicas=1, idle_timeout_s=idle, downscale_delay_s=idle
    )
    config = {"resources": {"cpus": 0.25}, "autoscaling": scaling.model_dump()}
    url = cloud.deploy("cold", "tab", config) + "/predict"
    headers = cloud.consumer("bench-coldstart")
    body = json.dumps({"inputs": [ROW]}).encode()
    for app in ("cold-http", "cold-handle"):
        deploy_bare(app, tab, "tabular", cpus=0.25, autoscaling=autoscaling_config(scaling))
    wait_route(f"{cloud.data_url}/cold-http", body, JSON)
    handle: Any = serve.get_app_handle("cold-handle")
    contenders: dict[str, Callable[[], dict[str, Any]]] = {
        "gureum": lambda: _first_http(url, headers, body),
        "ray_http": lambda: _first_http(f"{cloud.data_url}/cold-http", JSON, body),
        "ray_handle": lambda: _first_handle(handle),
    }
    apps = ("cold", "cold-http", "cold-handle")
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in contenders}
    try:
        for i in range(cfg["tries"]):
            waited = max(wait_replicas(app, 0, 180) for app in apps)
            for n in rotate(list(contenders), i):
                runs[n].append(contenders[n]() | {"waited_for_zero_s": rnd(waited, 1)})
            print(
                f"  cold start try {i + 1}: "
                + ", ".join(
                    f"{n} {r[-1]['first_response_s']:.2f}s ({r[-1]['status']})"
                    for n, r in runs.items()
                ),
                flush=True,
            )
        time.sleep(3)  # replicas ship usage every second: let the last try's arrive
        stats = cloud.client.endpoints.stats("cold", window_s=3600)
    finally:
        handle.shutdown()  # its metrics thread would outlive our connection to the cluster
        for app in ("cold-http", "cold-handle"):
            delete_bare(app)
        cloud.delete("cold")

    def first(n: str) -> float:
        return rnd(med([r["first_response_s"] for r in runs[n] if r["status"] == 200]))

    def reported(n: str) -> float:
        return rnd(med([r["reported_ms"] for r in runs[n] if r["reported_ms"] is not None]), 0)

    medians = {n: first(n) for n in contenders}
    return {
        "idle_timeout_s": idle,
        "autoscaling": autoscaling_config(scaling),
        "tries": cfg["tries"],
        "runs": runs,
        "first_response_median_s": medians,
        "ratio_vs_ray_http": rnd(medians["gureum"] / medians["ray_http"]),
        "ratio_vs_ray_handle": rnd(medians["gureum"] / medians["ray_handle"]),
        "gureum_reported_cold_start_ms_median": reported("gureum"),
        "gureum_stats_cold_starts": stats.cold_starts,
        "gureum_stats_last_cold_start_ms": stats.last_cold_start_ms,
        "ray_replica_init_ms_median": {
            "http": reported("ray_http"),
            "handle": reported("ray_handle"),
        },
    }


def _first_http(url: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """Seconds until the first 200, retrying 5xx as a client would, and what the replica said
    about its start (ours: x-gureum-cold-start-ms; bare: x-bare-init-ms, its ``__init__``)."""
    statuses: list[int] = []
    start = time.perf_counter()
    with httpx.Client(headers=headers, timeout=300) as c:
        while True:
            r = c.post(url, content=body)
            statuses.append(r.status_code)
            if r.status_code < 500 or time.perf_counter() - start > 300:
                break
            time.sleep(0.1)
        elapsed = time.perf_counter() - start
        t = time.perf_counter()
        c.post(url, content=body)
        warm = time.perf_counter() - t
    header = r.headers.get("x-gureum-cold-start-ms") or r.headers.get("x-bare-init-ms")
    return {
        "first_response_s": rnd(elapsed),
        "status": r.status_code,
        "attempts": len(statuses),
        "statuses": statuses[-5:],
        "reported_ms": float(header) if header else None,
        "next_request_ms": rnd(warm * 1000, 2),
    }


def _first_handle(handle: Any) -> dict[str, Any]:
    """Seconds until a handle call to the bare deployment at zero replicas returns, and how
    long its replica's ``__init__`` (loading the model) took."""
    start = time.perf_counter()
    result = handle.predict.remote([ROW]).result(timeout_s=300)
    elapsed = time.perf_counter() - start
    t = time.perf_counter()
    handle.predict.remote([ROW]).result(timeout_s=60)
    warm = time.perf_counter() - t
    return {
        "first_response_s": rnd(elapsed),
        "status": 200,
        "reported_ms": float(result["init_ms"]),
        "next_request_ms": rnd(warm * 1000, 2),
    }
