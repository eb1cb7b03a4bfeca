"""Sampling throughput of an image-diffusion endpoint vs the same pipeline called directly
(issue 15; target: endpoint / direct >= 0.8).

A small image-diffusion model (the recipe's own ``train``, one epoch on a few garments
pictures: the weights do not matter here, only the work per image; 32x32, width 16, the
recipe's default shape) is deployed as an endpoint through the platform (a local Ray head and
a live gureum server: ``_serving_util.ServingCloud``), one replica of ``--cpus`` CPUs (torch
threads = cpus, as the platform sets them) with dynamic batching (``--batch``,
``--wait-ms``). Closed-loop clients (twice the batch size, in a process of their own) each ask
for one picture per request with the same steps, guidance and sampler, so the replica batches
them into one denoising loop.

"Direct" is the same pipeline without the platform: the recipe's loader in a process of its
own, at the replica's niceness and thread count (and ``OMP_NUM_THREADS``), calling
``predict`` on lists of ``--batch`` of the same inputs (the same PNG encoding); "direct, 1 at a
time" shows what batching buys.
Rounds alternate (each round another contender first); medians and the ratio are reported.

    flock /tmp/ray.lock .venv/bin/python -m benchmarks.bench_diffusion_serving [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks._serving_load import closed_loop, closed_loop_apart
from benchmarks._serving_util import (
    ServingCloud,
    cpu_seconds,
    med,
    replica_nice,
    replica_processes,
    rnd,
    rotate,
)
from benchmarks._util import exit_on_sigterm, load_average, save
from gureum import samples
from gureum.recipes import LocalDataset, LocalRunContext, get_recipe, parse_params
from gureum.recipes.base import Predictor

NAME = "image-diffusion"
NUM_CPUS = 4  # logical CPUs of the head (2 real cores), as bench_serving
MODEL = {"epochs": 1, "grid_every": 0, "image_size": 32, "width": 16}

# -- the direct pipeline, in a process of its own ----------------------------------------------

_PREDICTOR: Predictor | None = None


def _init_direct(model_dir: str, threads: int, nice: int) -> None:
    """The worker process: the replica's niceness and threads, the recipe's own loader."""
    import torch

    os.nice(max(0, nice - os.nice(0)))
    torch.set_num_threads(max(1, threads))
    global _PREDICTOR
    _PREDICTOR = get_recipe(NAME).load(Path(model_dir))


def _direct(inputs: list[Any], seconds: float) -> tuple[float, float]:
    """Images per second calling ``predict(inputs)`` over and over for ``seconds``, and this
    process's CPU ms per image."""
    assert _PREDICTOR is not None
    per_call = sum(int(x.get("count", 1)) for x in inputs)
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        out = _PREDICTOR.predict(inputs)
        n += sum(len(o["images"]) for o in out)
    assert n % per_call == 0
    return n / (time.perf_counter() - start), (time.process_time() - cpu) * 1000 / max(1, n)


# -- the benchmark ------------------------------------------------------------------------------


def train(root: Path, count: int) -> Path:
    samples.write("garments", root / "garments", count=count)
    recipe = get_recipe(NAME)
    ds = LocalDataset.from_folder(root / "garments")
    out = recipe.train(LocalRunContext(root / "run"), ds, parse_params(NAME, recipe.Params, MODEL))
    return out.model_dir


def measure(cloud: ServingCloud, model_dir: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    batch, conc, secs = cfg["batch"], 2 * cfg["batch"], cfg["seconds"]
    one = {"class": "dress", "count": cfg["images_per_request"], "seed": 7, "steps": cfg["steps"]}
    url = cloud.deploy(
        "diffusion",
        "diffusion",
        {
            "resources": {"cpus": cfg["cpus"]},
            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
            "batching": {"max_batch_size": batch, "max_wait_ms": cfg["wait_ms"]},
        },
    )
    url += "/predict"
    headers = cloud.consumer("bench-diffusion")
    body = json.dumps({"inputs": [one]}).encode()
    nice = replica_nice("diffusion") or 0
    replica = replica_processes("diffusion")
    ctx = multiprocessing.get_context("spawn")
    init = (str(model_dir), int(cfg["cpus"]), nice)
    pool = ProcessPoolExecutor(1, mp_context=ctx, initializer=_init_direct, initargs=init)
    # Ray starts its workers with OMP_NUM_THREADS set to their CPUs: the direct process too
    # (it is spawned at the first submit below, with this environment).
    os.environ["OMP_NUM_THREADS"] = str(cfg["cpus"])
    errors = 0

    def endpoint() -> tuple[float, float]:
        nonlocal errors
        before = cpu_seconds(replica)
        res = closed_loop_apart(url, headers, body, conc, secs)
        errors += res.errors
        images = res.ok * cfg["images_per_request"]
        return images / res.seconds, (cpu_seconds(replica) - before) * 1000 / max(1, images)

    def direct(size: int) -> tuple[float, float]:
        return pool.submit(_direct, [one] * size, secs).result()

    contenders = {
        "endpoint": endpoint,
        "direct": lambda: direct(batch),
        "direct_one_at_a_time": lambda: direct(1),
    }
    runs: dict[str, list[float]] = {n: [] for n in contenders}
    cpu_ms: dict[str, list[float]] = {n: [] for n in contenders}
    try:
        # Warm: the replica's first batches, the direct process's model and first calls.
        closed_loop(url, headers, body, conc, min(secs, 5.0))
        pool.submit(_direct, [one] * batch, 1.0).result()
        for i in range(cfg["rounds"]):
            for who in rotate(list(contenders), i):
                rate, ms = contenders[who]()
                runs[who].append(rate)
                cpu_ms[who].append(ms)
            print(
                f"  round {i + 1}: "
                + ", ".join(f"{k} {v[-1]:.2f}/s" for k, v in runs.items())
                + f" (load {load_average()})",
                flush=True,
            )
        stats = cloud.client.endpoints.stats("diffusion", window_s=3600)
    finally:
        pool.shutdown(cancel_futures=True)
        cloud.delete("diffusion")
    m = {k: rnd(med(v), 2) for k, v in runs.items()}
    ratio = m["endpoint"] / m["direct"]
    paired = [e / d for e, d in zip(runs["endpoint"], runs["direct"], strict=True)]
    return {
        "model": MODEL,
        "request": one,
        "batch_size": batch,
        "max_wait_ms": cfg["wait_ms"],
        "concurrency": conc,
        "cpus": cfg["cpus"],
        "replica_nice": nice,
        "images_per_s": m,
        "rounds": {k: [rnd(x, 2) for x in v] for k, v in runs.items()},
        "ratio_per_round": [rnd(x) for x in paired],
        # CPU the replica (endpoint) or the direct process spent per image.
        "cpu_ms_per_image": {k: rnd(med(v), 1) for k, v in cpu_ms.items()},
        "errors": errors,
        "served_batch_size_avg": stats.batch_size_avg,
        "ratio": rnd(ratio),
        "batching_gain_direct": rnd(m["direct"] / m["direct_one_at_a_time"]),
        "target": ">= 0.8",
        "met": ratio >= 0.8,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 6 s")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=12.0, help="per contender per round")
    ap.add_argument("--batch", type=int, default=8, help="max_batch_size; clients: twice it")
    ap.add_argument("--wait-ms", type=float, default=5.0, help="max_wait_ms")
    ap.add_argument("--steps", type=int, default=25, help="denoising steps per request")
    ap.add_argument("--images-per-request", type=int, default=1)
    ap.add_argument("--cpus", type=int, default=1, help="the replica's CPUs = torch threads")
    ap.add_argument("--count", type=int, default=40, help="garments pictures to train on")
    args = ap.parse_args()
    cfg = {
        "rounds": 2 if args.quick else args.rounds,
        "seconds": 6.0 if args.quick else args.seconds,
        "batch": args.batch,
        "wait_ms": args.wait_ms,
        "steps": args.steps,
        "images_per_request": args.images_per_request,
        "cpus": args.cpus,
    }
    exit_on_sigterm()  # unwinds through ServingCloud, which stops the Ray head
    results: dict[str, Any] = {"config": cfg, "load_before": load_average()}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gureum-bench-diffusion-") as tmp_name:
        tmp = Path(tmp_name)
        model_dir = train(tmp, args.count)
        with ServingCloud(tmp, NUM_CPUS) as cloud:
            cloud.register("diffusion", model_dir, NAME)
            results["throughput"] = r = measure(cloud, model_dir, cfg)
    results["load_after"] = load_average()
    results["total_s"] = rnd(time.perf_counter() - started, 1)
    print(
        f"image-diffusion sampling, {r['request']['steps']} steps, batch {r['batch_size']}, "
        f"{r['concurrency']} clients: images/s {r['images_per_s']}\n  endpoint / direct "
        f"{r['ratio']} (>= 0.8: {'met' if r['met'] else 'NOT met'}); per round "
        f"{r['ratio_per_round']}; served batch avg {r['served_batch_size_avg']}; CPU ms per "
        f"image {r['cpu_ms_per_image']}; errors {r['errors']}; load {results['load_before']} "
        f"-> {results['load_after']}"
    )
    name = "diffusion_serving_quick" if args.quick else "diffusion_serving"
    print(f"total {results['total_s']}s; saved {save(name, results)}")


if __name__ == "__main__":
    main()
