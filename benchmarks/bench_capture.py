"""Capture (issue 12): what capturing every call's inputs and outputs adds to serving.

One endpoint (a tabular model, one row per request, batching off, one 1-CPU replica) on a fresh
local Ray head, called by one consumer. Rounds alternate capture off (rate 0) and on (rate 1.0,
inputs and outputs) on the same replica: after each switch the benchmark waits for the
replica's key table to carry the new setting, then runs sequential requests (p50), the same
offered load in both modes (Poisson arrivals at a fixed rate, the same seed for both, from
another process: the replica's CPU seconds per request, and apart from it the capture
sidecar's, the process that ships captured calls), and a closed loop of concurrent clients
(throughput; CPU per request at saturation, where contention for the two cores moves it).
Targets: replica CPU per request added by capture at the same load <= 5%, p50 on/off <= 1.1x.
At the end every captured call must be in the index (none lost, none twice).

    .venv/bin/python -m benchmarks.bench_capture [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks._serving_load import closed_loop_apart, open_loop_apart, sequential, steady
from benchmarks._serving_util import (
    ROW,
    ServingCloud,
    cpu_seconds,
    med,
    replica_processes,
    rnd,
    train_tabular,
)
from benchmarks._util import exit_on_sigterm, load_average, save
from gureum.serving.replica import REFRESH_S

NUM_CPUS = 4
PROFILES = {
    "quick": {"rounds": 2, "requests": 100, "concurrency": 8, "seconds": 3, "rps": 100},
    "full": {"rounds": 6, "requests": 200, "concurrency": 8, "seconds": 5, "rps": 100},
}
MODES = {"off": 0.0, "on": 1.0}


def _captured(cloud: ServingCloud, endpoint: str) -> int:
    return int(cloud.client.endpoints.capture(endpoint).captured)


def _switch(cloud: ServingCloud, endpoint: str, rate: float) -> None:
    cloud.client.endpoints.set_capture(endpoint, rate=rate, inputs=True, outputs=True)
    time.sleep(REFRESH_S * 2 + 0.5)  # the replicas' next key-table refresh carries it


def run(cloud: ServingCloud, cfg: dict[str, Any]) -> dict[str, Any]:
    url = cloud.deploy(
        "cap",
        "tab",
        {
            "resources": {"cpus": 1},
            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
            "batching": {"max_batch_size": 1, "max_wait_ms": 0},
        },
    )
    headers = cloud.consumer("bench-capture")
    body = json.dumps({"inputs": [ROW]}).encode()
    procs = replica_processes("cap")
    # The capture sidecar the replica started (its CPU is reported apart: not the replica's).
    sidecars = [k for p in procs for k in p.children(recursive=True)]
    p50: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    side: dict[str, list[float]] = {m: [] for m in MODES}
    rps: dict[str, list[float]] = {m: [] for m in MODES}
    busy: dict[str, list[float]] = {m: [] for m in MODES}  # CPU per request at saturation
    sent_on = 0
    with httpx.Client(headers=headers, timeout=30) as http:
        sequential(http, f"{url}/predict", body, 100)  # warm
        for i in range(cfg["rounds"]):
            order = list(MODES) if i % 2 == 0 else list(reversed(MODES))
            for mode in order:
                _switch(cloud, "cap", MODES[mode])
                lat = sequential(http, f"{url}/predict", body, cfg["requests"])
                arrivals = steady(cfg["rps"], cfg["seconds"], seed=i)
                before, side_before = cpu_seconds(procs), cpu_seconds(sidecars)
                sent = open_loop_apart(f"{url}/predict", headers, body, arrivals, 30)
                ok = sum(1 for s in sent if s.status == 200)
                if ok != len(sent):
                    raise RuntimeError(f"{len(sent) - ok} of {len(sent)} requests failed")
                cpu[mode].append((cpu_seconds(procs) - before) * 1000 / ok)
                side[mode].append((cpu_seconds(sidecars) - side_before) * 1000 / ok)
                before = cpu_seconds(procs)
                res = closed_loop_apart(
                    f"{url}/predict", headers, body, cfg["concurrency"], cfg["seconds"]
                )
                busy[mode].append((cpu_seconds(procs) - before) * 1000 / max(1, res.ok))
                p50[mode].append(med(lat))
                rps[mode].append(res.rps)
                if mode == "on":
                    sent_on += cfg["requests"] + ok + res.ok
            print(
                f"  round {i + 1}: "
                + ", ".join(
                    f"{m} p50 {p50[m][-1]:.2f} ms, {cpu[m][-1]:.2f} cpu-ms/req at "
                    f"{cfg['rps']}/s, {busy[m][-1]:.2f} at {rps[m][-1]:.0f}/s"
                    for m in MODES
                ),
                flush=True,
            )
    _switch(cloud, "cap", 0.0)
    deadline = time.monotonic() + 120
    while _captured(cloud, "cap") < sent_on and time.monotonic() < deadline:
        time.sleep(1)
    captured = _captured(cloud, "cap")
    cloud.delete("cap")
    cpu_ratio = med(cpu["on"]) / med(cpu["off"])
    p50_ratio = med(p50["on"]) / med(p50["off"])
    return {
        "p50_ms": {m: rnd(med(v)) for m, v in p50.items()},
        "p50_rounds": {m: [rnd(x) for x in v] for m, v in p50.items()},
        "replica_cpu_ms_per_request": {m: rnd(med(v), 3) for m, v in cpu.items()},
        "replica_cpu_rounds": {m: [rnd(x, 3) for x in v] for m, v in cpu.items()},
        "sidecar_cpu_ms_per_request": {m: rnd(med(v), 3) for m, v in side.items()},
        "replica_cpu_ms_per_request_saturated": {m: rnd(med(v), 3) for m, v in busy.items()},
        "saturated_cpu_ratio_on_off": rnd(med(busy["on"]) / med(busy["off"])),
        "replica_and_sidecar_ratio_on_off": rnd(
            (med(cpu["on"]) + med(side["on"])) / (med(cpu["off"]) + med(side["off"]))
        ),
        "rps": {m: rnd(med(v), 1) for m, v in rps.items()},
        "cpu_ratio_on_off": rnd(cpu_ratio),
        "p50_ratio_on_off": rnd(p50_ratio),
        "captured": {"sent_with_capture_on": sent_on, "indexed": captured},
        "met": {
            "replica cpu added at the same load <= 5%": cpu_ratio <= 1.05,
            "p50 <= 1.1x": p50_ratio <= 1.1,
            "every captured call indexed once": captured == sent_on,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--rps", type=int, help="the same load's rate (default 100/s)")
    parser.add_argument("--rounds", type=int, help="rounds of each mode")
    args = parser.parse_args()
    cfg = dict(PROFILES["quick" if args.quick else "full"])
    cfg.update({k: v for k, v in (("rps", args.rps), ("rounds", args.rounds)) if v})
    exit_on_sigterm()
    results: dict[str, Any] = {"config": cfg, "load_before": load_average()}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gureum-bench-capture-") as tmp_name:
        tmp = Path(tmp_name)
        tab = train_tabular(tmp)
        with ServingCloud(tmp, NUM_CPUS) as cloud:
            cloud.register("tab", tab, "tabular")
            results["capture"] = run(cloud, cfg)
    results["load_after"] = load_average()
    results["total_s"] = rnd(time.perf_counter() - started, 1)
    print(json.dumps(results["capture"], indent=2))
    name = "capture_quick" if args.quick else "capture"
    print(f"total {results['total_s']}s; saved {save(name, results)}")


if __name__ == "__main__":
    main()
