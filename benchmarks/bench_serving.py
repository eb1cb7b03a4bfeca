"""Serving (issue 4): request overhead, dynamic batching, autoscaling on a bursty trace, cold start.

One local Ray head (free ports, Ray Serve in HAProxy mode, stopped at the end even on failure)
with a live gureum server in this process; tiny models trained here. Our endpoints and the
baselines run on the same cluster in the same run; the comparisons alternate rounds where they
can, and we report medians and ratios.

1. overhead: a tabular model (one row per request). Our full path (consumer key check, rate
   limit set high so it is checked but never hit, metering, routing; batching off:
   max_batch_size=1, so no batch wait) vs (a) a bare Ray Serve deployment of the same model
   under /bare, (b) plain FastAPI on uvicorn calling the predictor in-process. Sequential p50 and
   p99, then closed-loop throughput with N concurrent clients. Targets: p50 ours/(a) <= 1.3,
   ours/(b) <= 2; throughput ours/(a) >= 0.8.
2. batching: the image classifier's CNN, one image per request, concurrency 2x the batch size,
   served images/s divided by offline predict() on batches of that size in-process (same
   thread count as the replica). Target >= 0.8.
3. autoscale: an open-loop bursty trace (peak/mean about 5) on the classifier (some images per
   request): replica-seconds and the share of requests within a latency target, for our
   autoscaling, Ray Serve's default autoscaling (a bare deployment, min/max replicas only), and
   a static deployment sized for the peak.
4. coldstart: time to first response of an endpoint scaled to zero, vs a bare Ray Serve
   deployment of the same model scaled from zero with the same autoscaling settings.

    .venv/bin/python -m benchmarks.bench_serving [--quick] [--only overhead,batching,...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks._serving_bare import load
from benchmarks._serving_load import closed_loop, closed_loop_apart, sequential
from benchmarks._serving_scaling import autoscale, coldstart
from benchmarks._serving_util import (
    JSON,
    ROW,
    ServingCloud,
    cpu_seconds,
    delete_bare,
    deploy_bare,
    digit_images,
    haproxy_processes,
    med,
    pct,
    replica_nice,
    replica_processes,
    rnd,
    rotate,
    start_plain,
    train_classifier,
    train_tabular,
    wait_route,
)
from benchmarks._util import exit_on_sigterm, free_port, load_average, save, stop, wait_http
from gureum.schemas.endpoints import Autoscaling

PARTS = ("overhead", "batching", "autoscale", "coldstart")
NUM_CPUS = 4  # logical CPUs of the head (2 real cores): room for several 0.25-CPU replicas
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "overhead": {"rounds": 2, "requests": 50, "load_rounds": 1, "concurrency": 8, "seconds": 3},
        "batching": {"rounds": 1, "seconds": 4, "batch": 8, "wait_ms": 5.0},
        "autoscale": {"seconds": 60, "bursts": 1, "burst_s": 8, "max_replicas": 3, "repeats": 1},
        "coldstart": {"tries": 2, "idle_s": 3.0},
    },
    "full": {
        "overhead": {"rounds": 6, "requests": 50, "load_rounds": 3, "concurrency": 8, "seconds": 4},
        "batching": {"rounds": 3, "seconds": 5, "batch": 8, "wait_ms": 5.0},
        "autoscale": {"seconds": 180, "bursts": 2, "burst_s": 12, "max_replicas": 4, "repeats": 1},
        "coldstart": {"tries": 5, "idle_s": 3.0},
    },
}
CLASSIFIER = {"width": 64, "image_size": 32, "count": 300}


# -- 1. request overhead --------------------------------------------------------------------------


def overhead(cloud: ServingCloud, tab: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    one = {"min_replicas": 1, "max_replicas": 1}
    url = cloud.deploy(
        "tab",
        "tab",
        {
            "resources": {"cpus": 1},
            "autoscaling": one,
            "batching": {"max_batch_size": 1, "max_wait_ms": 0},
        },
    )
    ours_headers = cloud.consumer("bench-overhead")
    deploy_bare("bare", tab, "tabular", cpus=1, max_ongoing_requests=64)
    wait_route(f"{cloud.data_url}/bare", json.dumps({"inputs": [ROW]}).encode(), JSON)
    nice = replica_nice("tab") or 0
    port = free_port()
    plain = start_plain(port, tab, "tabular", nice)
    try:
        wait_http(f"http://127.0.0.1:{port}/docs")
        targets = {
            "gureum": (f"{url}/predict", ours_headers),
            "ray": (f"{cloud.data_url}/bare", JSON),
            "fastapi": (f"http://127.0.0.1:{port}/predict", JSON),
        }
        servers = {
            "gureum": replica_processes("tab"),
            "ray": replica_processes("bare"),
            "fastapi": [psutil.Process(plain.pid)],  # `nice` execs uvicorn: the same pid
        }
        return _overhead_rounds(cloud, targets, servers, cfg) | {"replica_nice": nice}
    finally:
        stop(plain)
        delete_bare("bare")
        cloud.delete("tab")


def _overhead_rounds(
    cloud: ServingCloud,
    targets: dict[str, tuple[str, dict[str, str]]],
    servers: dict[str, list[psutil.Process]],
    cfg: dict[str, Any],
) -> dict[str, Any]:
    body = json.dumps({"inputs": [ROW]}).encode()
    names = list(targets)
    clients = {n: httpx.Client(headers=h, timeout=30) for n, (_, h) in targets.items()}
    served_before = _served(cloud, "tab")
    sent = 0
    try:
        for n, (u, _) in targets.items():
            sequential(clients[n], u, body, 100)  # warm: connections, caches, the first batch
        sent += 100
        seq: dict[str, list[float]] = {n: [] for n in names}
        round_p50: dict[str, list[float]] = {n: [] for n in names}
        for i in range(cfg["rounds"]):
            for n in rotate(names, i):
                lat = sequential(clients[n], targets[n][0], body, cfg["requests"])
                seq[n] += lat
                round_p50[n].append(med(lat))
            sent += cfg["requests"]
            print(
                f"  sequential round {i + 1}: "
                + ", ".join(f"{n} {round_p50[n][-1]:.2f} ms" for n in names),
                flush=True,
            )
    finally:
        for c in clients.values():
            c.close()
    rps: dict[str, list[float]] = {n: [] for n in names}
    cpu_ms: dict[str, list[float]] = {n: [] for n in names}
    control_ms: dict[str, list[float]] = {n: [] for n in names}
    me = [psutil.Process()]  # this process: the gureum control plane (usage ingest)
    errors: dict[str, int] = dict.fromkeys(names, 0)
    for i in range(cfg["load_rounds"]):
        for n in rotate(names, i):
            before, mine = cpu_seconds(servers[n]), cpu_seconds(me)
            res = closed_loop_apart(
                targets[n][0], targets[n][1], body, cfg["concurrency"], cfg["seconds"]
            )
            cpu_ms[n].append((cpu_seconds(servers[n]) - before) * 1000 / max(1, res.ok))
            control_ms[n].append((cpu_seconds(me) - mine) * 1000 / max(1, res.ok))
            rps[n].append(res.rps)
            errors[n] += res.errors
            if n == "gureum":
                sent += res.ok + res.errors
        print(
            f"  load round {i + 1}: " + ", ".join(f"{n} {rps[n][-1]:.0f}/s" for n in names),
            flush=True,
        )
    p50 = {n: rnd(med(v)) for n, v in seq.items()}
    p99 = {n: rnd(pct(v, 99)) for n, v in seq.items()}
    thr = {n: rnd(med(v), 1) for n, v in rps.items()}
    paired = [g / r for g, r in zip(round_p50["gureum"], round_p50["ray"], strict=True)]
    return {
        "requests_per_target_sequential": len(seq["gureum"]),
        "concurrency": cfg["concurrency"],
        "load_seconds_per_round": cfg["seconds"],
        "p50_ms": p50,
        "p99_ms": p99,
        "rps": thr,
        "rps_rounds": {n: [rnd(x, 1) for x in v] for n, v in rps.items()},
        # CPU the serving process (our replica, the bare replica, uvicorn) spent per request
        # under load: what each path costs, whatever else the machine was doing.
        "server_cpu_ms_per_request": {n: rnd(med(v), 2) for n, v in cpu_ms.items()},
        # The benchmark's own process meanwhile (the load runs in another): for ours, the
        # control plane taking in usage records; for the others, next to nothing.
        "control_plane_cpu_ms_per_request": {n: rnd(med(v), 2) for n, v in control_ms.items()},
        "errors_under_load": errors,
        "p50_ratio_vs_ray": rnd(p50["gureum"] / p50["ray"]),
        "p50_ratio_vs_fastapi": rnd(p50["gureum"] / p50["fastapi"]),
        "p99_ratio_vs_ray": rnd(p99["gureum"] / p99["ray"]),
        "p50_ratio_vs_ray_per_round": [rnd(x) for x in paired],
        "rps_ratio_vs_ray": rnd(thr["gureum"] / thr["ray"]),
        "rps_ratio_vs_fastapi": rnd(thr["gureum"] / thr["fastapi"]),
        "met": {
            "p50 <= 1.3x ray": p50["gureum"] / p50["ray"] <= 1.3,
            "p50 <= 2x fastapi": p50["gureum"] / p50["fastapi"] <= 2.0,
            "rps >= 0.8x ray": thr["gureum"] / thr["ray"] >= 0.8,
        },
        "metered": _metered(cloud, "tab", served_before + sent),
    }


def _served(cloud: ServingCloud, endpoint: str) -> int:
    stats = cloud.client.endpoints.stats(endpoint, window_s=86_400)
    return sum(v.requests for v in stats.versions)


def _metered(
    cloud: ServingCloud, endpoint: str, sent: int, timeout: float = 30.0
) -> dict[str, int]:
    """Usage records the control plane holds for the endpoint vs requests we sent: every
    request must become one (the spool ships in batches, so wait a little)."""
    deadline = time.monotonic() + timeout
    got = _served(cloud, endpoint)
    while got < sent and time.monotonic() < deadline:
        time.sleep(1.0)
        got = _served(cloud, endpoint)
    return {"sent": sent, "usage_records": got}


# -- 2. dynamic batching ------------------------------------------------------------------------


def batching(
    cloud: ServingCloud, cls: Path, images: list[str], cfg: dict[str, Any]
) -> dict[str, Any]:
    batch, conc, wait = cfg["batch"], 2 * cfg["batch"], cfg["wait_ms"]
    one = {"min_replicas": 1, "max_replicas": 1}
    urls = {}
    for name, size in (("cls-batched", batch), ("cls-unbatched", 1)):
        config = {
            "resources": {"cpus": 1},  # one torch thread, as offline below
            "autoscaling": one,
            "batching": {"max_batch_size": size, "max_wait_ms": wait},
        }
        urls[name] = cloud.deploy(name, "cls", config) + "/predict"
    headers = cloud.consumer("bench-batching")
    body = json.dumps({"inputs": images[:1]}).encode()
    bare = (batch, wait / 1000)
    deploy_bare("ray-batched", cls, "image-classifier", cpus=1, max_ongoing_requests=64, batch=bare)
    urls["ray-batched"] = f"{cloud.data_url}/ray-batched"
    wait_route(urls["ray-batched"], body, JSON)
    predictor = load(str(cls), "image-classifier", threads=1)
    assert cloud.head is not None
    haproxy = haproxy_processes(cloud.head)
    me = psutil.Process()
    secs = cfg["seconds"]
    errors = 0

    def offline(size: int) -> tuple[float, float]:
        n, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < cfg["seconds"]:
            for i in range(0, len(images) - size + 1, size):
                predictor.predict(images[i : i + size])
                n += size
        return n / (time.perf_counter() - start), (time.process_time() - cpu) * 1000 / n

    def served(who: str) -> tuple[float, dict[str, float]]:
        replica = replica_processes(who)
        parts = {"replica": replica, "haproxy": haproxy, "client": [me]}
        before = {k: cpu_seconds(v) for k, v in parts.items()}
        res = closed_loop(urls[who], JSON if who == "ray-batched" else headers, body, conc, secs)
        nonlocal errors
        errors += res.errors
        per = {k: (cpu_seconds(v) - before[k]) * 1000 / max(1, res.ok) for k, v in parts.items()}
        return res.rps, per

    names = ["offline_batched", "offline_single", "cls-batched", "cls-unbatched", "ray-batched"]
    runs: dict[str, list[float]] = {n: [] for n in names}
    cpu_ms: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    try:
        for n, u in urls.items():
            closed_loop(u, JSON if n == "ray-batched" else headers, body, conc, 1.0)  # warm
        for i in range(cfg["rounds"]):
            for who in rotate(names, i):
                if who.startswith("offline"):
                    rate, ms = offline(batch if who == "offline_batched" else 1)
                    runs[who].append(rate)
                    cpu_ms[who].append({"process": ms})
                else:
                    rate, per = served(who)
                    runs[who].append(rate)
                    cpu_ms[who].append(per)
            print(
                f"  batching round {i + 1}: "
                + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in runs.items()),
                flush=True,
            )
        stats = cloud.client.endpoints.stats("cls-batched", window_s=600)
    finally:
        delete_bare("ray-batched")
        for name in ("cls-batched", "cls-unbatched"):
            cloud.delete(name)
    m = {k: rnd(med(v), 1) for k, v in runs.items()}
    ratio = m["cls-batched"] / m["offline_batched"]
    return {
        "batch_size": batch,
        "max_wait_ms": wait,
        "concurrency": conc,
        "images_per_request": 1,
        "model": CLASSIFIER,
        "images_per_s": m,
        "rounds": {k: [rnd(x, 1) for x in v] for k, v in runs.items()},
        "cpu_ms_per_image": {
            k: {part: rnd(med([r[part] for r in v]), 2) for part in v[0]}
            for k, v in cpu_ms.items()
            if v
        },
        "errors": errors,
        "served_batch_size_avg": stats.batch_size_avg,
        "ratio": rnd(ratio),
        "ray_batched_vs_offline": rnd(m["ray-batched"] / m["offline_batched"]),
        "gureum_vs_ray_batched": rnd(m["cls-batched"] / m["ray-batched"]),
        "unbatched_served_vs_offline_single": rnd(m["cls-unbatched"] / m["offline_single"]),
        "batching_gain_offline": rnd(m["offline_batched"] / m["offline_single"]),
        "batching_gain_served": rnd(m["cls-batched"] / m["cls-unbatched"]),
        "target": ">= 0.8",
        "met": ratio >= 0.8,
    }


# -- main ----------------------------------------------------------------------------------------


def _section(
    results: dict[str, Any], name: str, fn: Callable[..., dict[str, Any]], *args: Any
) -> None:
    print(f"{name}...", flush=True)
    t = time.perf_counter()
    load_before = load_average()
    try:
        results[name] = fn(*args)
    except Exception as exc:
        traceback.print_exc()
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    results[name]["section_s"] = rnd(time.perf_counter() - t, 1)
    results[name]["load"] = [load_before, load_average()]


def report(results: dict[str, Any]) -> None:
    o = results.get("overhead")
    if o and "error" not in o:
        print(
            f"overhead (tabular, 1 row, batching off): p50 ms {o['p50_ms']}, p99 ms {o['p99_ms']}"
            f"\n  p50 gureum/ray {o['p50_ratio_vs_ray']} (<= 1.3), gureum/fastapi "
            f"{o['p50_ratio_vs_fastapi']} (<= 2); per round vs ray "
            f"{o['p50_ratio_vs_ray_per_round']}"
            f"\n  throughput at {o['concurrency']} clients {o['rps']}/s: gureum/ray "
            f"{o['rps_ratio_vs_ray']} (>= 0.8), gureum/fastapi {o['rps_ratio_vs_fastapi']}; met "
            f"{o['met']}; metered {o['metered']}\n  server CPU ms per request "
            f"{o['server_cpu_ms_per_request']}; control plane (usage ingest) "
            f"{o['control_plane_cpu_ms_per_request']}"
        )
    b = results.get("batching")
    if b and "error" not in b:
        print(
            f"batching (batch {b['batch_size']}, {b['concurrency']} clients): images/s "
            f"{b['images_per_s']}; served/offline {b['ratio']} (>= 0.8, "
            f"{'met' if b['met'] else 'NOT met'}); bare Ray Serve @serve.batch / offline "
            f"{b['ray_batched_vs_offline']}; served batch avg {b['served_batch_size_avg']}; "
            f"CPU ms per image {b['cpu_ms_per_image']}"
        )
    a = results.get("autoscale")
    if a and "error" not in a:
        print(f"autoscale: trace {a['trace']}")
        for name, v in a["variants"].items():
            print(
                f"  {name}: {v['replica_seconds']} replica-s ({v['replica_seconds_vs_static']} of "
                f"static), within {a['latency_target_ms']} ms {v['within_target']:.1%}, "
                f"p50/p95/p99 {v['p50_ms']}/{v['p95_ms']}/{v['p99_ms']} ms, "
                f"peak {v['peak_replicas']}; per run: "
                + "; ".join(
                    f"statuses {r['statuses']}, replicas every 5 s {r['replicas_every_5s']}, "
                    f"ledger {r.get('ledger_check')}"
                    for r in v["runs"]
                )
            )
    c = results.get("coldstart")
    if c and "error" not in c:
        print(
            f"coldstart: first response median {c['first_response_median_s']} s, gureum / "
            f"ray http {c['ratio_vs_ray_http']}, / ray handle {c['ratio_vs_ray_handle']}; "
            f"gureum's own cold-start figure "
            f"{c['gureum_reported_cold_start_ms_median']} ms; bare replica __init__ "
            f"{c['ray_replica_init_ms_median']} ms"
        )
    for name, r in results.items():
        if isinstance(r, dict) and "error" in r:
            print(f"{name} FAILED: {r['error'][:2000]}")


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="short settings for everything")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    ap.add_argument("--rounds", type=int, help="overhead: sequential rounds")
    ap.add_argument("--requests", type=int, help="overhead: requests per target per round")
    ap.add_argument("--concurrency", type=int, help="overhead: concurrent clients under load")
    ap.add_argument("--seconds", type=float, help="overhead/batching: seconds per load round")
    ap.add_argument("--batch", type=int, help="batching: max_batch_size (concurrency is 2x)")
    ap.add_argument("--trace-seconds", type=float, help="autoscale: trace length")
    ap.add_argument("--peak-rps", type=float, help="autoscale: burst rate (default: measured)")
    ap.add_argument(
        "--peak-factor",
        type=float,
        default=1.25,
        help="autoscale: burst rate as a multiple of one replica's capacity",
    )
    ap.add_argument("--max-replicas", type=int, help="autoscale: max (and static) replicas")
    ap.add_argument("--repeats", type=int, help="autoscale: runs of each variant (rotated)")
    ap.add_argument(
        "--variants",
        default="gureum_autoscaling,ray_default_autoscaling,static_peak",
        help="autoscale: which variants to run",
    )
    ap.add_argument("--images-per-request", type=int, default=4, help="autoscale")
    ap.add_argument("--latency-target-ms", type=float, default=250.0, help="autoscale")
    ap.add_argument(
        "--downscale-delay-s",
        type=float,
        default=Autoscaling().downscale_delay_s,
        help="autoscale: ours (gureum's default)",
    )
    ap.add_argument("--tries", type=int, help="coldstart: cold starts per contender")
    return ap.parse_args()


def _config(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    profile: dict[str, dict[str, Any]] = json.loads(
        json.dumps(PROFILES["quick" if args.quick else "full"])
    )
    o, b, a, c = (profile[p] for p in PARTS)
    for key, value in (
        ("rounds", args.rounds),
        ("requests", args.requests),
        ("concurrency", args.concurrency),
        ("seconds", args.seconds),
    ):
        if value is not None:
            o[key] = value
    if args.seconds is not None:
        b["seconds"] = args.seconds
    if args.batch is not None:
        b["batch"] = args.batch
    if args.trace_seconds is not None:
        a["seconds"] = args.trace_seconds
    if args.max_replicas is not None:
        a["max_replicas"] = args.max_replicas
    if args.repeats is not None:
        a["repeats"] = args.repeats
    a["variants"] = [v.strip() for v in args.variants.split(",") if v.strip()]
    a |= {
        "peak_rps": args.peak_rps,
        "peak_factor": args.peak_factor,
        "images_per_request": args.images_per_request,
        "latency_target_ms": args.latency_target_ms,
        "downscale_delay_s": args.downscale_delay_s,
    }
    if args.tries is not None:
        c["tries"] = args.tries
    return profile


def main() -> None:
    args = _args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        sys.exit(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    profile = _config(args)
    exit_on_sigterm()  # unwinds through ServingCloud, which stops the Ray head
    results: dict[str, Any] = {
        "profile": "quick" if args.quick else "full",
        "config": {p: profile[p] for p in parts},
        "load_before": load_average(),
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gureum-bench-serving-") as tmp_name:
        tmp = Path(tmp_name)
        tab = train_tabular(tmp)
        cls = images = None
        if {"batching", "autoscale"} & set(parts):
            cls = train_classifier(tmp, **CLASSIFIER)
            images = digit_images(tmp, 64)
        with ServingCloud(tmp, NUM_CPUS) as cloud:
            cloud.register("tab", tab, "tabular")
            if cls is not None:
                cloud.register("cls", cls, "image-classifier")
            if "overhead" in parts:
                _section(results, "overhead", overhead, cloud, tab, profile["overhead"])
            if "batching" in parts:
                _section(results, "batching", batching, cloud, cls, images, profile["batching"])
            if "autoscale" in parts:
                _section(results, "autoscale", autoscale, cloud, cls, images, profile["autoscale"])
            if "coldstart" in parts:
                _section(results, "coldstart", coldstart, cloud, tab, profile["coldstart"])
    results["load_after"] = load_average()
    results["total_s"] = rnd(time.perf_counter() - started, 1)
    report(results)
    name = "serving_quick" if args.quick else "serving"
    if set(parts) != set(PARTS):
        name += "_" + "_".join(sorted(parts))  # a partial run never overwrites a whole one
    print(f"total {results['total_s']}s; saved {save(name, results)}")
    if any(isinstance(r, dict) and "error" in r for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
