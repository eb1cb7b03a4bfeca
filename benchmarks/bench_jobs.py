"""Jobs on Ray (issue 3): platform overhead, submit-to-running latency, data-parallel scaling.

One local Ray head (started on free ports, stopped at the end even on failure) with a gureum
server and its job controller in this process; every contender runs on the same machine in the
same run, alternating rounds, and we report medians and ratios.

1. Overhead: image-classifier on the ``digits`` sample as a gureum job (POST /v1/jobs until
   GET says succeeded; 2 CPUs) vs ``python -m gureum.recipes.run`` on the same folder.
   Target: job / plain <= 1.05.
2. Latency: POST /v1/jobs returned -> state "running" for a tiny tabular training on the idle
   cluster (median of N jobs), vs a bare 1-CPU Ray task from the driver (``.remote()`` -> body
   starts); then where a job's start goes (supervisor actor, imports, work task).
   Target: median < 1 s.
3. Scaling: the same training (same epochs, same global batch) with 1 and 2 workers of 1 CPU,
   as gureum jobs (a Ray task / Ray Train TorchTrainer with gloo) and under torchrun (gloo,
   OMP_NUM_THREADS=1). Efficiency = T1 / (2 * T2); gureum-2 / torchrun-2.

    .venv/bin/python -m benchmarks.bench_jobs [--quick] [--only overhead,latency,scaling]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks._jobs_util import (
    JobCluster,
    JobFailed,
    actor_start,
    bare_task_latency,
    fresh_import_seconds,
    host_task_latency,
    local_train_seconds,
    spare_task_latency,
    start_spans,
    task_worker_reuse,
    ts,
)
from benchmarks._util import ROOT, exit_on_sigterm, load_average, median, save

RECIPE = "image-classifier"
DATA = "digits"  # 1,797 8x8 digits as PNGs, 10 classes
NUM_CPUS = 2  # the machine's cores; the head gets exactly these

# Sized for this 2-core machine: the full overhead run takes about 60 s as a plain process.
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "overhead": {"epochs": 3, "batch_size": 32, "repeats": 1},
        "latency": {"jobs": 3, "probes": 2},
        "scaling": {"epochs": 2, "global_batch": 64, "repeats": 1},
    },
    "full": {
        "overhead": {"epochs": 22, "batch_size": 32, "repeats": 3},
        "latency": {"jobs": 10, "probes": 3},
        "scaling": {"epochs": 4, "global_batch": 64, "repeats": 2},
    },
}
TABULAR = {"target": "returned", "max_iter": 20}


def _params(values: dict[str, Any]) -> list[str]:
    return [arg for k, v in values.items() for arg in ("--param", f"{k}={v}")]


def plain_run(
    data: Path, out: Path, params: dict[str, Any], env: dict[str, str] | None = None, nproc: int = 0
) -> dict[str, float]:
    """``python -m gureum.recipes.run`` (or under torchrun with ``nproc`` processes): wall
    seconds from spawn to exit and the training loop's seconds."""
    shutil.rmtree(out, ignore_errors=True)
    args = ["--recipe", RECIPE, "--data", str(data), "--out", str(out), "--quiet", *_params(params)]
    if nproc:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "benchmarks._jobs_util",
            *args,
        ]
    else:
        cmd = [sys.executable, "-m", "gureum.recipes.run", *args]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    load = load_average()
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=full_env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return {"wall_s": wall, "train_s": local_train_seconds(out), "load": load}


def job_run(cluster: JobCluster, body: dict[str, Any]) -> dict[str, float]:
    """A gureum job: wall seconds from POST /v1/jobs to GET saying succeeded (polled every
    0.1 s), the server's finished_at - created_at, and the training loop's seconds."""
    load = load_average()
    job_id, t0, _ = cluster.submit(body)
    job, seen = cluster.wait_succeeded(job_id)
    return {
        "wall_s": seen - t0,
        "server_s": (ts(job["finished_at"]) or 0) - (ts(job["created_at"]) or 0),
        "queue_to_running_s": (ts(job["started_at"]) or 0) - (ts(job["created_at"]) or 0),
        "train_s": cluster.train_seconds(job_id),
        "load": load,
    }


def _med(runs: list[dict[str, float]], key: str) -> float:
    return round(median([r[key] for r in runs]), 3)


# -- 1. platform overhead --------------------------------------------------------------------


def overhead(cluster: JobCluster, data: Path, tmp: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    params = {"epochs": cfg["epochs"], "batch_size": cfg["batch_size"]}
    body = {
        "recipe": RECIPE,
        "dataset": DATA,
        "params": params,
        "resources": {"cpus": NUM_CPUS},
        "max_retries": 0,
    }
    plain: list[dict[str, float]] = []
    jobs: list[dict[str, float]] = []
    for i in range(cfg["repeats"]):
        order = ("plain", "job") if i % 2 == 0 else ("job", "plain")
        for who in order:
            if who == "plain":
                plain.append(plain_run(data, tmp / "plain-out", params))
                print(f"  overhead round {i + 1}: plain {plain[-1]['wall_s']:.1f}s", flush=True)
            else:
                jobs.append(job_run(cluster, body))
                print(f"  overhead round {i + 1}: job   {jobs[-1]['wall_s']:.1f}s", flush=True)
    ratio = _med(jobs, "wall_s") / _med(plain, "wall_s")
    # Each round's job / plain: the two ran back to back, so they met much the same noise.
    paired = [j["wall_s"] / p["wall_s"] for j, p in zip(jobs, plain, strict=True)]
    for r in plain + jobs:
        r["outside_loop_s"] = r["wall_s"] - r["train_s"]  # start-up, data, evaluation, upload
    return {
        "recipe": RECIPE,
        "data": DATA,
        "params": params,
        "cpus": NUM_CPUS,
        "repeats": cfg["repeats"],
        "plain": plain,
        "job": jobs,
        "plain_median_s": _med(plain, "wall_s"),
        "job_median_s": _med(jobs, "wall_s"),
        "job_server_median_s": _med(jobs, "server_s"),
        "job_queue_to_running_median_s": _med(jobs, "queue_to_running_s"),
        "plain_train_loop_median_s": _med(plain, "train_s"),
        "job_train_loop_median_s": _med(jobs, "train_s"),
        "ratio": round(ratio, 3),
        "train_loop_ratio": round(_med(jobs, "train_s") / _med(plain, "train_s"), 3),
        "paired_ratios": [round(x, 3) for x in paired],
        "paired_ratio_median": round(median(paired), 3),
        "plain_outside_loop_median_s": _med(plain, "outside_loop_s"),
        "job_outside_loop_median_s": _med(jobs, "outside_loop_s"),
        "target": "<= 1.05",
        "met": ratio <= 1.05,
    }


# -- 2. submit-to-running latency --------------------------------------------------------------


def latency(cluster: JobCluster, cfg: dict[str, Any]) -> dict[str, Any]:
    """Submit-to-running of tiny jobs one after another on the idle cluster, and where each
    job's start went (the controller's events and Ray's task timeline, one clock)."""
    body = {
        "recipe": "tabular",
        "dataset": "tab",
        "params": TABULAR,
        "resources": {"cpus": 1},
        "max_retries": 0,
    }
    runs = []
    ids = []
    for i in range(cfg["jobs"]):
        load = load_average()
        job_id, _, posted = cluster.submit(body)
        job, seen = cluster.wait(job_id, until=("running",), poll_s=0.02)
        cluster.wait_succeeded(job_id)
        job = cluster.get(job_id)
        at = {
            e["message"].split(" ")[0]: ts(e["time"])
            for e in cluster.events(job_id)
            if e["kind"] == "state"
        }
        created = ts(job["created_at"]) or 0.0
        ids.append(job_id)
        runs.append(
            {
                "polled_s": seen - posted,  # POST returned -> GET first says running
                "server_s": (ts(job["started_at"]) or 0) - created,  # started_at - created_at
                "created": created,
                "starting": at.get("starting") or created,  # the controller launched it
                "running": ts(job["started_at"]) or 0.0,
                "load": load,
            }
        )
        print(f"  latency job {i + 1}: {runs[-1]['server_s']:.2f}s", flush=True)
    spans = start_spans(ids)
    workers = set()
    nan = float("nan")
    for run, job_id in zip(runs, ids, strict=True):
        sp = spans[job_id]
        workers |= {sp.get("actor_worker"), sp.get("work_worker")} - {None}
        run["queued_s"] = run["starting"] - run["created"]
        run["launch_to_work_s"] = sp.get("work_start", nan) - run["starting"]
        run["actor_start_s"] = sp.get("actor_init", nan) - run["starting"]
        run["report_s"] = run["running"] - sp.get("work_start", nan)
    bare = bare_task_latency(max(10, cfg["jobs"]))
    med = _med(runs, "server_s")
    return {
        "jobs": cfg["jobs"],
        "runs": runs,
        "job_median_s": med,
        "job_polled_median_s": _med(runs, "polled_s"),
        "job_first_s": round(runs[0]["server_s"], 3),
        "bare_task_median_s": round(median(bare), 4),
        "bare_task_s": [round(b, 4) for b in bare],
        "ratio": round(med / median(bare), 1),
        "target": "median < 1 s",
        "met": med < 1.0,
        "parts_median_s": {
            "queued (created -> controller launches)": _med(runs, "queued_s"),
            "launch -> work task body runs": _med(runs, "launch_to_work_s"),
            "  of which: launch -> a supervisor created for the job runs __init__": _med(
                runs, "actor_start_s"
            ),
            "report (task body -> state running)": _med(runs, "report_s"),
        },
        "worker_processes_used": len(workers),
    }


def breakdown(cfg: dict[str, Any]) -> dict[str, Any]:
    """Probes for why a job's start costs what it does, on the idle cluster."""
    n = cfg["probes"]
    empty = [actor_start(None, f"probe-empty-{i}-{os.getpid()}") for i in range(n)]
    heavy = [
        actor_start("gureum.compute.supervisor", f"probe-sup-{i}-{os.getpid()}") for i in range(n)
    ]
    host = host_task_latency("gureum.compute.supervisor", n + 3)
    entry = "gureum.compute.entry" if importlib.util.find_spec("gureum.compute.entry") else None
    cold = spare_task_latency(entry or "gureum.compute.supervisor", False, 5.0, n)
    warm = spare_task_latency(entry or "gureum.compute.supervisor", True, 5.0, n)
    return {
        "spare_supervisor_task_start_median_s": _med(cold, "start_s"),
        "warmed_spare_supervisor_task_start_median_s": _med(warm, "start_s"),
        "warmed_spare_reused_its_worker": all(w["reused_warm_worker"] for w in warm),
        "one_host_actor_task_start_first_s": round(host[0], 3),
        "one_host_actor_task_start_warm_median_s": round(median(host[1:]), 4),
        "empty_actor_ready_median_s": _med(empty, "ready_s"),
        "supervisor_import_in_ray_worker_median_s": _med(heavy, "import_s"),
        "actor_importing_supervisor_ready_median_s": _med(heavy, "ready_s"),
        "fresh_process_import": fresh_import_seconds("gureum.compute.supervisor", repeats=n),
        "task_workers_for_3_detached_owners": task_worker_reuse(True, 3),
        "task_workers_for_3_plain_owners": task_worker_reuse(False, 3),
        "runs": {
            "empty_actor": empty,
            "importing_actor": heavy,
            "one_host_actor": host,
            "spare": cold,
            "warmed_spare": warm,
        },
    }


# -- 3. data-parallel scaling ------------------------------------------------------------------


def scaling(cluster: JobCluster, data: Path, tmp: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {
        "gureum-1": [],
        "gureum-2": [],
        "torchrun-1": [],
        "torchrun-2": [],
    }
    gb = cfg["global_batch"]

    def params(workers: int) -> dict[str, Any]:
        return {"epochs": cfg["epochs"], "batch_size": gb // workers}

    one_thread = {"OMP_NUM_THREADS": "1"}  # what Ray gives a 1-CPU worker, and torchrun's default
    for i in range(cfg["repeats"]):
        order = ["gureum-1", "torchrun-1", "gureum-2", "torchrun-2"]
        if i % 2:
            order.reverse()
        for who in order:
            kind, workers = who.split("-")[0], int(who.split("-")[1])
            if kind == "gureum":
                body = {
                    "recipe": RECIPE,
                    "dataset": DATA,
                    "params": params(workers),
                    "resources": {"cpus": 1},
                    "workers": workers,
                    "max_retries": 0,
                }
                runs[who].append(job_run(cluster, body))
            else:
                out = tmp / f"torchrun-{workers}"
                runs[who].append(plain_run(data, out, params(workers), one_thread, nproc=workers))
            print(
                f"  scaling round {i + 1}: {who} {runs[who][-1]['wall_s']:.1f}s "
                f"(loop {runs[who][-1]['train_s']:.1f}s)",
                flush=True,
            )
    med = {who: _med(r, "wall_s") for who, r in runs.items()}
    loop = {who: _med(r, "train_s") for who, r in runs.items()}

    def eff(t: dict[str, float], kind: str) -> float:
        return round(t[f"{kind}-1"] / (2 * t[f"{kind}-2"]), 3)

    return {
        "recipe": RECIPE,
        "data": DATA,
        "epochs": cfg["epochs"],
        "global_batch": gb,
        "cpus_per_worker": 1,
        "repeats": cfg["repeats"],
        "runs": runs,
        "wall_median_s": med,
        "train_loop_median_s": loop,
        "gureum_efficiency_wall": eff(med, "gureum"),
        "torchrun_efficiency_wall": eff(med, "torchrun"),
        "gureum_efficiency_loop": eff(loop, "gureum"),
        "torchrun_efficiency_loop": eff(loop, "torchrun"),
        "gureum2_vs_torchrun2_wall": round(med["gureum-2"] / med["torchrun-2"], 3),
        "gureum2_vs_torchrun2_loop": round(loop["gureum-2"] / loop["torchrun-2"], 3),
        "gureum1_vs_torchrun1_wall": round(med["gureum-1"] / med["torchrun-1"], 3),
    }


# -- main ------------------------------------------------------------------------------------


def _section(results: dict[str, Any], name: str, fn: Any, *args: Any) -> None:
    print(f"{name}...", flush=True)
    t = time.perf_counter()
    try:
        results[name] = fn(*args)
    except (JobFailed, RuntimeError) as exc:
        traceback.print_exc()
        results[name] = {"error": str(exc)}
    results[name]["section_s"] = round(time.perf_counter() - t, 1)


def report(results: dict[str, Any]) -> None:
    o = results.get("overhead")
    if o and "error" not in o:
        print(
            f"overhead: job {o['job_median_s']}s vs plain {o['plain_median_s']}s -> ratio "
            f"{o['ratio']} (target <= 1.05, {'met' if o['met'] else 'NOT met'}); training loop "
            f"{o['job_train_loop_median_s']}s vs {o['plain_train_loop_median_s']}s "
            f"({o['train_loop_ratio']}); per-round ratios {o['paired_ratios']} (median "
            f"{o['paired_ratio_median']}); outside the loop {o['job_outside_loop_median_s']}s vs "
            f"{o['plain_outside_loop_median_s']}s; job created->running "
            f"{o['job_queue_to_running_median_s']}s"
        )
    lat = results.get("latency")
    if lat and "error" not in lat:
        print(
            f"latency: submit->running median {lat['job_median_s']}s (polled "
            f"{lat['job_polled_median_s']}s, first job {lat['job_first_s']}s) vs bare Ray task "
            f"{lat['bare_task_median_s']}s -> {lat['ratio']}x (target < 1 s, "
            f"{'met' if lat['met'] else 'NOT met'})\n  parts: {lat['parts_median_s']}; "
            f"{lat['worker_processes_used']} worker processes for {lat['jobs']} jobs"
        )
    b = results.get("breakdown")
    if b and "error" not in b:
        print(
            f"breakdown: empty detached actor ready {b['empty_actor_ready_median_s']}s; "
            f"importing gureum.compute.supervisor in a Ray worker "
            f"{b['supervisor_import_in_ray_worker_median_s']}s; distinct task workers for 3 "
            f"detached owners {b['task_workers_for_3_detached_owners']}, for 3 plain owners "
            f"{b['task_workers_for_3_plain_owners']}; one long-lived host actor: task start "
            f"{b['one_host_actor_task_start_first_s']}s cold, "
            f"{b['one_host_actor_task_start_warm_median_s']}s warm; spare supervisor -> task "
            f"start {b['spare_supervisor_task_start_median_s']}s, warmed spare "
            f"{b['warmed_spare_supervisor_task_start_median_s']}s\n  fresh process: "
            f"{b['fresh_process_import']}"
        )
    s = results.get("scaling")
    if s and "error" not in s:
        print(
            f"scaling: wall {s['wall_median_s']}; loop {s['train_loop_median_s']}\n"
            f"  efficiency T1/(2*T2): gureum {s['gureum_efficiency_wall']} wall, "
            f"{s['gureum_efficiency_loop']} loop; torchrun {s['torchrun_efficiency_wall']} wall, "
            f"{s['torchrun_efficiency_loop']} loop; gureum-2/torchrun-2 "
            f"{s['gureum2_vs_torchrun2_wall']} wall, {s['gureum2_vs_torchrun2_loop']} loop"
        )
    for name, r in results.items():
        if isinstance(r, dict) and "error" in r:
            print(f"{name} FAILED: {r['error'][:2000]}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="one short round of everything")
    ap.add_argument(
        "--only",
        default="overhead,latency,scaling",
        help="comma-separated parts: overhead, latency, scaling",
    )
    args = ap.parse_args()
    profile = PROFILES["quick" if args.quick else "full"]
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    exit_on_sigterm()  # unwinds through JobCluster, which stops the Ray head
    from gureum import samples

    results: dict[str, Any] = {
        "profile": "quick" if args.quick else "full",
        "config": profile,
        "load_before": load_average(),
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gureum-bench-jobs-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        samples.write(DATA, data / DATA)
        samples.write("tabular", data / "tab")
        with JobCluster(NUM_CPUS, tmp) as cluster:
            cluster.push(DATA, data / DATA)
            cluster.push("tab", data / "tab")
            if "overhead" in parts:
                _section(
                    results, "overhead", overhead, cluster, data / DATA, tmp, profile["overhead"]
                )
            if "latency" in parts:
                _section(results, "latency", latency, cluster, profile["latency"])
                _section(results, "breakdown", breakdown, profile["latency"])
            if "scaling" in parts:
                _section(results, "scaling", scaling, cluster, data / DATA, tmp, profile["scaling"])
    results["load_after"] = load_average()
    results["total_s"] = round(time.perf_counter() - started, 1)
    report(results)
    name = "jobs_quick" if args.quick else "jobs"
    if parts != {"overhead", "latency", "scaling"}:
        name += "_" + "_".join(sorted(parts))  # a partial run never overwrites a whole one
    print(f"total {results['total_s']}s; saved {save(name, results)}")
    if any(isinstance(r, dict) and "error" in r for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
