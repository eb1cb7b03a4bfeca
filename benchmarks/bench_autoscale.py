"""Autoscaling that saves (issue 13 item 4): replica-seconds against a static fleet on a bursty
trace, with the share of requests within the latency target.

A sleep-based model (each request holds one of the replica's ``slots`` for ``service_s``; its
start sleeps ``load_s`` like a model load): the policy is measured, not CPU contention on this
machine's two cores. Three Ray Serve applications of it play the same seeded Poisson trace at
the same time, on one local Ray head in HAProxy mode (as ``gureum up`` runs Ray Serve):

- ``static``: a fleet sized for the peak (``max_replicas`` replicas);
- ``autoscaling``: gureum's autoscaling defaults (``Autoscaling()`` through
  ``serving.backend.autoscaling_config`` and ``max_ongoing_requests``), min 1, max as static;
- ``prewarm``: the same with ``prewarm`` on: a driver thread calls ``services.prewarm.decide``
  every second on a profile built (``build_profile``) from an earlier week's trace of the same
  shape (another seed) and re-applies the application with the minimum it decides, as the
  endpoint controller does (that path is tested in tests/integration/test_prewarm_ray.py).

The trace: cycles of ``cycle_s`` seconds, each with one burst at the peak rate from minute 1
to minute 2 of the cycle, the base rate otherwise; the base is chosen so that peak / mean is
``peak_over_mean``. Bursts start on wall-clock minute boundaries (the profile is per minute).
Replica-seconds integrate Ray Serve's replica counts in any state (starting and stopping ones
hold their CPUs), sampled every 0.5 s.

    flock /tmp/ray.lock .venv/bin/python -m benchmarks.bench_autoscale [--cycles 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import tempfile
import threading
import time
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import ray
from ray import serve
from ray.serve import Deployment

from benchmarks._serving_load import Sent, open_loop
from benchmarks._serving_util import JSON, ReplicaSampler, Ticker, med, pct, rnd, wait_route
from benchmarks._util import OUT, ROOT, free_port, load_average
from gureum.compute.local_ray import remove_temp_dir, start_head, stop_head
from gureum.schemas.endpoints import Autoscaling
from gureum.server.services.prewarm import build_profile, decide, minute_of_week
from gureum.serving.backend import RayServeBackend, autoscaling_config, max_ongoing_requests

MACHINE = "2 cores / 24 GiB"
VARIANTS = ("static", "autoscaling", "prewarm")


class Sleeper:
    """A model whose work is sleeping: ``slots`` requests at once, ``service_s`` each."""

    def __init__(self, service_s: float, slots: int, load_s: float) -> None:
        time.sleep(load_s)  # the model load a real replica does before it is ready
        self.service_s = service_s
        self.slots = slots
        self._sem: asyncio.Semaphore | None = None

    async def __call__(self, request: Any) -> dict[str, str]:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.slots)
        async with self._sem:
            await asyncio.sleep(self.service_s)
        return {"ok": "1"}


def deploy(name: str, cfg: dict[str, Any], scaling: Autoscaling | None, n: int = 0) -> None:
    """The sleeper as application ``name`` at ``/name``: ``n`` replicas, or autoscaled with
    gureum's settings. A changed minimum reconfigures the running replicas in place."""
    options: dict[str, Any] = {
        "name": "server",
        "ray_actor_options": {"num_cpus": cfg["replica_cpus"]},
        "version": "v1",
        "graceful_shutdown_timeout_s": 5.0,
    }
    if scaling is None:
        options["num_replicas"] = n
        options["max_ongoing_requests"] = max_ongoing_requests(Autoscaling())
    else:
        options["autoscaling_config"] = autoscaling_config(scaling)
        options["max_ongoing_requests"] = max_ongoing_requests(scaling)
    dep = cast(Deployment, serve.deployment(Sleeper)).options(**options, _internal=True)
    args = (cfg["service_s"], cfg["slots"], cfg["load_s"])
    serve._run(dep.bind(*args), _blocking=False, name=name, route_prefix=f"/{name}")


def running(name: str) -> tuple[int, int]:
    status = serve.status().applications.get(name)
    if status is None:
        return 0, 0
    run = total = 0
    for dep in status.deployments.values():
        for state, k in dep.replica_states.items():
            total += k
            run += k if str(getattr(state, "value", state)) == "RUNNING" else 0
    return run, total


def wait_running(name: str, want: int, timeout: float = 180) -> float:
    start = time.monotonic()
    while running(name) != (want, want):
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{name} did not reach {want} running replicas: {running(name)}")
        time.sleep(0.1)
    return time.monotonic() - start


def cold_start(cfg: dict[str, Any], tries: int = 3) -> float:
    """Seconds from asking for a second replica until it runs (process start, imports, load)."""
    deploy("cold", cfg, None, 1)
    wait_running("cold", 1)
    out = []
    for i in range(tries):
        deploy("cold", cfg, None, 2)
        out.append(wait_running("cold", 2))
        deploy("cold", cfg, None, 1)
        wait_running("cold", 1)
        print(f"  cold start {i + 1}: {out[-1]:.2f}s", flush=True)
    serve.delete("cold")
    return med(out)


# -- the trace ------------------------------------------------------------------------------------


def base_rate(cfg: dict[str, Any]) -> float:
    """The base rate that makes peak / mean what the config says (one burst per cycle)."""
    peak, c, b = cfg["peak_rps"], cfg["cycle_s"], cfg["burst_s"]
    mean = peak / cfg["peak_over_mean"]
    return (mean * c - peak * b) / (c - b)


def rate_at(t: float, cfg: dict[str, Any]) -> float:
    off = t % cfg["cycle_s"]
    inside = cfg["burst_at_s"] <= off < cfg["burst_at_s"] + cfg["burst_s"]
    return float(cfg["peak_rps"]) if inside else base_rate(cfg)


def arrivals(cfg: dict[str, Any], seed: int) -> list[float]:
    """Poisson arrivals by thinning at the peak rate."""
    rng, peak, seconds = random.Random(seed), cfg["peak_rps"], cfg["cycles"] * cfg["cycle_s"]
    out, t = [], 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= seconds:
            return out
        if rng.random() * peak < rate_at(t, cfg):
            out.append(t)


def history_profile(cfg: dict[str, Any], start: datetime) -> Any:
    """The profile an endpoint would have recorded a week before: the same trace shape (seed
    2), each request at the service time, aggregated per minute of the week."""
    counts: dict[int, int] = {}
    for t in arrivals(cfg, seed=2):
        m = minute_of_week(start + timedelta(seconds=t))
        counts[m] = counts.get(m, 0) + 1
    rows = [
        (m // 1440, (m % 1440) // 60, m % 60, n, n * cfg["service_s"] * 1000)
        for m, n in counts.items()
    ]
    return build_profile(rows, 1.0)


class PrewarmDriver(Ticker):
    """What the endpoint controller does for an endpoint with ``prewarm`` on, every second."""

    def __init__(self, name: str, cfg: dict[str, Any], scaling: Autoscaling, profile: Any) -> None:
        super().__init__(1.0, "prewarm-driver")
        self.name, self.cfg, self.scaling, self.profile = name, cfg, scaling, profile
        self.current = scaling.min_replicas
        self.changes: list[tuple[float, int]] = []

    def tick(self) -> None:
        d = decide(self.profile, datetime.now(UTC), self.scaling)
        if d.min_replicas != self.current:
            self.current = d.min_replicas
            self.changes.append((time.time(), d.min_replicas))
            raised = self.scaling.model_copy(update={"min_replicas": d.min_replicas})
            deploy(self.name, self.cfg, raised)


# -- a run ----------------------------------------------------------------------------------------


def result(
    sent: list[Sent], sampler: ReplicaSampler, app: str, t0: float, t1: float, target_ms: float
) -> dict[str, Any]:
    ok = [s for s in sent if s.status == 200]
    lat = [s.latency_ms for s in ok]
    within = sum(1 for s in ok if s.latency_ms <= target_ms)
    return {
        "requests": len(sent),
        "errors": len(sent) - len(ok),
        "within_target": rnd(within / len(sent), 4) if sent else 0.0,
        "p50_ms": rnd(pct(lat, 50), 1),
        "p95_ms": rnd(pct(lat, 95), 1),
        "p99_ms": rnd(pct(lat, 99), 1),
        "replica_seconds": rnd(sampler.replica_seconds(app, t0, t1), 1),
        "running_replica_seconds": rnd(sampler.replica_seconds(app, t0, t1, True), 1),
        "peak_replicas": sampler.peak(app, t0, t1),
        "replicas_every_5s": sampler.timeline(app, t0),
    }


def one_run(cfg: dict[str, Any], run: int) -> dict[str, Any]:
    n = cfg["max_replicas"]
    auto = Autoscaling(min_replicas=1, max_replicas=n)
    warm = auto.model_copy(update={"prewarm": True, "prewarm_lead_s": cfg["lead_s"]})
    deploy("static", cfg, None, n)
    deploy("autoscaling", cfg, auto)
    deploy("prewarm", cfg, warm)
    for name, want in (("static", n), ("autoscaling", 1), ("prewarm", 1)):
        wait_running(name, want)
    base = cfg["data_url"]
    for name in VARIANTS:
        wait_route(f"{base}/{name}", b"{}", JSON)
    trace = arrivals(cfg, seed=1 + run)
    # Start so that the first burst begins on a minute boundary at least 20 s from now.
    now = time.time()
    first_burst = math.ceil((now + 20 + cfg["burst_at_s"]) / 60) * 60
    start = first_burst - cfg["burst_at_s"]
    profile = history_profile(cfg, datetime.fromtimestamp(start, UTC))
    time.sleep(max(0.0, start - time.time()))
    load = load_average()
    results: dict[str, list[Sent]] = {}
    with (
        ReplicaSampler(list(VARIANTS)) as sampler,
        PrewarmDriver("prewarm", cfg, warm, profile) as driver,
    ):
        t0 = time.time()

        def play(name: str) -> None:
            results[name] = open_loop(f"{base}/{name}", JSON, b"{}", trace, timeout=120)

        threads = [threading.Thread(target=play, args=(v,)) for v in VARIANTS]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        t1 = time.time()
    out = {v: result(results[v], sampler, v, t0, t1, cfg["target_ms"]) for v in VARIANTS}
    static = out["static"]["replica_seconds"]
    for v in VARIANTS:
        out[v]["replica_seconds_vs_static"] = rnd(out[v]["replica_seconds"] / static)
    out["prewarm"]["min_replica_changes_s"] = [(rnd(t - t0, 1), k) for t, k in driver.changes]
    out["trace"] = {
        "seconds": rnd(t1 - t0, 1),
        "requests": len(trace),
        "mean_rps": rnd(len(trace) / (cfg["cycles"] * cfg["cycle_s"]), 2),
        "peak_over_mean_measured": rnd(
            cfg["peak_rps"] / (len(trace) / (cfg["cycles"] * cfg["cycle_s"])), 2
        ),
        "load": [load, load_average()],
    }
    for v in VARIANTS:
        serve.delete(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--cycles", type=int, default=2)
    ap.add_argument("--cycle-s", type=float, default=360.0)
    ap.add_argument("--burst-s", type=float, default=60.0)
    ap.add_argument("--peak-rps", type=float, default=32.0)
    ap.add_argument("--service-s", type=float, default=0.5)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--load-s", type=float, default=2.0)
    ap.add_argument("--max-replicas", type=int, default=8)
    ap.add_argument("--lead-s", type=float, default=15.0)
    ap.add_argument(
        "--drain-s",
        type=float,
        default=None,
        help="RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S for the head (Ray's 30 s if unset)",
    )
    ap.add_argument("--target-ms", type=float, default=1000.0)
    args = ap.parse_args()
    cfg: dict[str, Any] = {
        "runs": args.runs,
        "cycles": args.cycles,
        "cycle_s": args.cycle_s,
        "burst_s": args.burst_s,
        "burst_at_s": 60.0,
        "peak_rps": args.peak_rps,
        "peak_over_mean": 5.0,
        "service_s": args.service_s,
        "slots": args.slots,
        "load_s": args.load_s,
        "replica_cpus": 0.01,
        "max_replicas": args.max_replicas,
        "lead_s": args.lead_s,
        "target_ms": args.target_ms,
    }
    if base_rate(cfg) < 0:
        raise SystemExit("the cycle is too short for that burst at peak / mean 5")
    if args.drain_s is not None:
        os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = str(args.drain_s)
    cfg["drain_s"] = args.drain_s
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    temp = Path(tempfile.mkdtemp(prefix="gureum-ray-a", dir="/tmp"))
    OUT.mkdir(parents=True, exist_ok=True)
    head = start_head(temp, OUT / "bench_autoscale_ray.log", num_cpus=2)
    try:
        backend = RayServeBackend(head.address, "127.0.0.1", free_port())
        cfg["data_url"] = backend.data_url
        cfg["cold_start_s"] = rnd(cold_start(cfg), 2)
        cfg["base_rps"] = rnd(base_rate(cfg), 3)
        cfg["autoscaling_defaults"] = autoscaling_config(
            Autoscaling(min_replicas=1, max_replicas=args.max_replicas)
        )
        print(
            f"cold start {cfg['cold_start_s']}s; burst {cfg['burst_s']}s "
            f"({cfg['burst_s'] / cfg['cold_start_s']:.1f}x); peak {cfg['peak_rps']}/s, "
            f"base {cfg['base_rps']}/s",
            flush=True,
        )
        runs = []
        for i in range(args.runs):
            r = one_run(cfg, i)
            runs.append(r)
            print(
                f"run {i + 1}: "
                + json.dumps(
                    {
                        v: {
                            k: r[v][k]
                            for k in (
                                "replica_seconds",
                                "replica_seconds_vs_static",
                                "within_target",
                                "p50_ms",
                                "p95_ms",
                                "peak_replicas",
                            )
                        }
                        for v in VARIANTS
                    }
                ),
                flush=True,
            )
        summary = {
            v: {
                "replica_seconds_vs_static": rnd(
                    med([r[v]["replica_seconds_vs_static"] for r in runs])
                ),
                "within_target": rnd(med([r[v]["within_target"] for r in runs]), 4),
                "p50_ms": rnd(med([r[v]["p50_ms"] for r in runs]), 1),
                "p95_ms": rnd(med([r[v]["p95_ms"] for r in runs]), 1),
            }
            for v in VARIANTS
        }
        report = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": MACHINE,
            "config": cfg,
            "summary_medians": summary,
            "runs": runs,
        }
        path = OUT / f"bench_autoscale_{int(time.time())}.json"
        path.write_text(json.dumps(report, indent=1))
        print(json.dumps(summary, indent=1))
        print(f"written to {path}")
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        ray.shutdown()
        stop_head(head)
        remove_temp_dir(head)
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
