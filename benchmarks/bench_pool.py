"""One pool, serving first (issue 13): the shared pool against a static split of the same
cluster, on one mixed trace (bursty inference plus a queue of training jobs).

Fake CPUs share this machine's two real cores, so the model and the training steps sleep: the
policy is measured, not CPU contention. One local Ray head with ``--cpus`` CPUs, a live gureum
server (job, endpoint and pool controllers, the real data plane through HAProxy) and, in turn
on that same cluster, two configurations playing the same seeded trace:

- ``split``: a static split. The endpoint may grow to the serving part (``--serving-cpus``, its
  ``max_replicas``); training jobs are held to the rest by the workspace's CPU quota and are
  not preemptible, so neither side ever takes the other's part.
- ``pool``: one shared pool. No quota: training may use every CPU; the endpoint has the same
  autoscaling settings and, when a replica finds no room, the pool controller preempts
  training jobs (they checkpoint every step and resume when room returns).

Serving: a user predictor (``gureum.serve.Predictor``, registered through a script job, served
by its sandboxed worker, one per 1-CPU replica) whose batch sleeps ``base_s + item_s * n``,
autoscaled from 1 replica. Inference: the seeded open-loop bursty trace of ``_serving_load``
through the data plane from a process of its own. Training: ``--jobs`` script jobs of 1 CPU,
each ``--steps`` sleeps of ``--step-s`` with a checkpoint after every step, all submitted at
the start; the trace starts ``--lead-s`` later.

Measured per configuration, over its run (first submission until the trace has been played and
the last job has ended): utilisation (CPU-seconds Ray had handed out, sampled every 0.5 s, over
the cluster's CPU-seconds), the share of requests answered within ``--target-ms``, the training
makespan (first submission until the last job ended), preemptions (the jobs' "preempted"
events). Preemption settings are those of a fixed cluster (no node autoscaler to wait for):
``GUREUM_PREEMPT_AFTER_S`` 0 and the minimum run and hold of ``--min-run-s`` / ``--hold-s``;
the serving headroom (``GUREUM_SERVING_HEADROOM_REPLICAS``) is the server's default unless
``--headroom`` sets it (it changes nothing in ``split``, whose serving part is always free).

    flock /tmp/ray.lock .venv/bin/python -m benchmarks.bench_pool [--quick] [--runs 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from benchmarks._jobs_util import TERMINAL
from benchmarks._serving_load import Trace, open_loop_apart
from benchmarks._serving_util import (
    ReplicaSampler,
    ServingCloud,
    _epoch,
    med,
    pct,
    replica_counts,
    rnd,
    rotate,
    wait_route,
)
from benchmarks._util import exit_on_sigterm, load_average, save
from benchmarks.bench_autoscale import result
from gureum.server.services.bootstrap import DEFAULT_WORKSPACE

MODES = ("split", "pool")
BODY = json.dumps({"inputs": [{"x": 1.0}]}).encode()
MODEL = "sleeper"

PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "cpus": 8,
        "serving_cpus": 3,
        "jobs": 24,
        "steps": 20,
        "step_s": 2.0,
        "trace_s": 180.0,
        "bursts": 2,
        "burst_s": 20.0,
        "peak_rps": 12.0,
        "base_rps": 1.5,
        "lead_s": 20.0,
    },
    "quick": {
        "cpus": 8,
        "serving_cpus": 3,
        "jobs": 12,
        "steps": 10,
        "step_s": 2.0,
        "trace_s": 60.0,
        "bursts": 1,
        "burst_s": 15.0,
        "peak_rps": 12.0,
        "base_rps": 1.5,
        "lead_s": 15.0,
    },
}

PREDICTOR = """
import json
import time

from pydantic import BaseModel

from gureum.serve import Predictor


class In(BaseModel):
    x: float


class Out(BaseModel):
    y: float


class Sleeper(Predictor):
    \"\"\"A model whose work is sleeping: a batch of n takes base_s + item_s * n.\"\"\"

    Input, Output = In, Out

    def load(self, model_dir):
        cfg = json.loads((model_dir / "sleep.json").read_text())
        self.base_s, self.item_s = cfg["base_s"], cfg["item_s"]
        time.sleep(cfg["load_s"])  # the model load a real replica does

    def predict_batch(self, inputs):
        time.sleep(self.base_s + self.item_s * len(inputs))
        return [Out(y=i.x) for i in inputs]
"""

REGISTER = """
import json
import sys

import gureum.run as run

keys = ("base_s", "item_s", "load_s")
cfg = dict(zip(keys, map(float, sys.argv[1:4])))
(run.model_dir() / "sleep.json").write_text(json.dumps(cfg))
run.register_model()
"""

# A training job: STEPS steps of STEP_S seconds asleep, a checkpoint after each; a stop request
# (preemption) is seen within 0.1 s and loses at most the step under way.
TRAIN = """
import sys
import time

import gureum.run as run

steps, step_s = int(sys.argv[1]), float(sys.argv[2])
state = run.load_checkpoint()
start = 0 if state is None else int(state["step"])
for step in range(start, steps):
    end = time.monotonic() + step_s
    while (left := end - time.monotonic()) > 0:
        if run.should_stop():
            sys.exit(0)
        time.sleep(min(0.1, left))
    run.save_checkpoint({"step": step + 1})
"""


HELD = "cpus-held"  # the sampler's pseudo-app: CPUs Ray has handed out


class PoolSampler(ReplicaSampler):
    """The replica sampler that also records, as the pseudo-app ``HELD``, the CPUs Ray has
    handed out (to replicas in any state and to jobs' work): whole CPUs here, so its
    ``replica_seconds(HELD, ...)`` are CPU-seconds."""

    def __init__(self, apps: list[str], cpus: float, interval: float = 0.5) -> None:
        super().__init__(apps, interval)
        self.cpus = cpus

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                counts = replica_counts(self.apps)
                free = float(ray.available_resources().get("CPU", 0.0))  # type: ignore[no-untyped-call]
                held = round(self.cpus - free)
                counts[HELD] = (held, held)
                self.samples.append((time.time(), counts))
            self._stop.wait(self.interval)


def register_sleeper(cloud: ServingCloud, root: Path, cfg: dict[str, Any]) -> None:
    code = root / "predictor-code"
    code.mkdir()
    (code / "main.py").write_text(REGISTER)
    (code / "predictor.py").write_text(PREDICTOR)
    args = [str(cfg["base_s"]), str(cfg["item_s"]), str(cfg["load_s"])]
    job = cloud.client.jobs.train("script", None, model=MODEL, code_dir=code, args=args)
    done = cloud.client.jobs.wait(job.id, poll_s=0.5, timeout_s=600)
    if done.state != "succeeded":
        raise RuntimeError(f"registering the sleeper: job {done.state}: {done.error}")


def endpoint_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The same in both configurations: from 1 replica up to the serving part."""
    return {
        "resources": {"cpus": 1},
        "autoscaling": {"min_replicas": 1, "max_replicas": cfg["serving_cpus"]},
        "batching": {"max_batch_size": cfg["batch"], "max_wait_ms": 10},
    }


def wait_cluster_free(cpus: float, timeout: float = 120.0) -> float:
    """Seconds until Ray has every CPU back (the last configuration's replicas drained)."""
    start = time.monotonic()
    while ray.available_resources().get("CPU", 0.0) < cpus - 1e-6:  # type: ignore[no-untyped-call]
        if time.monotonic() - start > timeout:
            break
        time.sleep(0.5)
    return time.monotonic() - start


def wait_jobs(cloud: ServingCloud, ids: list[str], timeout: float) -> dict[str, Any]:
    """Poll until every job has ended; the last JobOut of each."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            job = cloud.client.jobs.get(job_id)
            last[job_id] = job
            if job.state in TERMINAL:
                pending.remove(job_id)
        time.sleep(1.0)
    for job_id in pending:  # out of time: stop them, reported as not finished
        with contextlib.suppress(Exception):
            cloud.client.jobs.cancel(job_id)
    return last


def one_config(
    cloud: ServingCloud,
    mode: str,
    run: int,
    cfg: dict[str, Any],
    code: Path,
    key: dict[str, str],
    arrivals: list[float],
) -> dict[str, Any]:
    split = mode == "split"
    training_part = cfg["cpus"] - cfg["serving_cpus"]
    cloud.client.workspaces.set_quotas(
        DEFAULT_WORKSPACE, {"max_cpus": training_part if split else None}
    )
    name = f"{mode}-{run + 1}"
    url = cloud.deploy(name, MODEL, endpoint_config(cfg)) + "/predict"
    wait_route(url, BODY, key)
    settle_s = wait_cluster_free(cfg["cpus"] - 1)  # only the endpoint's first replica holds CPU
    load = load_average()
    with PoolSampler([name], cfg["cpus"]) as sampler:
        t0 = time.time()
        ids = [
            cloud.client.jobs.train(
                "script",
                None,
                code_dir=code,
                args=[str(steps), str(cfg["step_s"])],
                resources={"cpus": 1},
                preemptible=not split,
            ).id
            for steps in cfg["job_steps"]
        ]
        submitted = time.time() - t0
        time.sleep(max(0.0, t0 + cfg["lead_s"] - time.time()))
        sent = open_loop_apart(url, key, BODY, arrivals, timeout=120)
        trace_end = time.time()
        jobs = wait_jobs(cloud, ids, cfg["job_timeout_s"])
        ends = [_epoch(j.finished_at) for j in jobs.values() if j.finished_at is not None]
        t1 = max([trace_end, *ends])
        time.sleep(max(0.0, t1 + 1.0 - time.time()))  # one sample past the end
    states: dict[str, int] = {}
    for j in jobs.values():
        states[j.state] = states.get(j.state, 0) + 1
    why: list[tuple[float, str]] = []  # seconds after the first submission, what the pool said
    resumed = 0
    for job_id in ids:
        for e in cloud.client.jobs.events(job_id):
            if e.kind == "preempted":
                why.append((rnd(_epoch(e.time) - t0, 1), e.message))
            resumed += e.kind == "resume"
    why.sort()
    endpoint_events = [
        (rnd(_epoch(e.time) - t0, 1), e.kind)
        for e in cloud.client.endpoints.events(name)
        if _epoch(e.time) >= t0
    ]
    cloud.delete(name)
    window = t1 - t0
    held = sampler.replica_seconds(HELD, t0, t1)
    served = result(sent, sampler, name, t0, t1, cfg["target_ms"])  # bench_autoscale's
    work = sum(cfg["job_steps"]) * cfg["step_s"]
    makespan = max(ends) - t0 if ends else float("nan")
    return {
        "mode": mode,
        "run": run + 1,
        "jobs": states,
        "submit_s": rnd(submitted, 1),
        "makespan_s": rnd(makespan, 1),
        "mean_job_completion_s": rnd(sum(e - t0 for e in ends) / len(ends), 1) if ends else None,
        # Per job, last attempt: started (Ray gave it its CPU) to ended, and submitted to
        # started: what a job costs beyond its steps on this machine, and how long it queued.
        "median_job_last_attempt_s": rnd(med(_spans(jobs, "started_at", "finished_at")), 1),
        "median_job_queued_s": rnd(med(_spans(jobs, "created_at", "started_at")), 1),
        "run_s": rnd(window, 1),
        "utilisation": rnd(held / (cfg["cpus"] * window), 3),
        "cpu_seconds_held": rnd(held, 1),
        "training_cpu_seconds_held": rnd(held - served["replica_seconds"], 1),
        "training_work_cpu_s": work,
        "training_goodput_cpus": rnd(work / makespan, 2) if ends else None,
        "cpus_held_every_5s": sampler.timeline(HELD, t0),
        "preemptions": len(why),
        "preempted_at_s": [t for t, _ in why],
        "preempted_why": why,
        # Replicas (running, any state) and CPUs held, every sample from 5 s before the first
        # burst to 20 s after it: when Serve asked, when Ray placed, what the pool did.
        "burst_timeline_s": [
            (rnd(t - t0, 1), c.get(name), c.get(HELD, (0, 0))[0])
            for t, c in sampler.samples
            if cfg["burst_starts_s"][0] - 5 <= t - t0 <= cfg["burst_starts_s"][0] + 20
        ],
        "resumes": resumed,
        "endpoint_events_s": endpoint_events,
        **served,
        "p50_ms_every_10s": [  # by when they were sent: where in the trace the slow ones were
            rnd(pct([x.latency_ms for x in sent if w <= x.at < w + 10 and x.status == 200], 50), 0)
            for w in range(0, int(cfg["trace_s"]), 10)
        ],
        "load": [load, load_average()],
        "waited_for_free_cluster_s": rnd(settle_s, 1),
    }


def _spans(jobs: dict[str, Any], start: str, end: str) -> list[float]:
    return [
        _epoch(getattr(j, end)) - _epoch(getattr(j, start))
        for j in jobs.values()
        if getattr(j, start) is not None and getattr(j, end) is not None
    ]


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("utilisation", "within_target", "makespan_s", "preemptions", "p95_ms")
    out: dict[str, Any] = {
        m: {k: rnd(med([r[k] for r in runs if r["mode"] == m]), 4) for k in keys} for m in MODES
    }
    pairs = [
        (a, b)
        for a in runs
        for b in runs
        if a["mode"] == "pool" and b["mode"] == "split" and a["run"] == b["run"]
    ]
    out["ratios_pool_vs_split"] = {
        "utilisation": rnd(med([a["utilisation"] / b["utilisation"] for a, b in pairs])),
        "makespan": rnd(med([a["makespan_s"] / b["makespan_s"] for a, b in pairs])),
        "within_target_difference": rnd(
            med([a["within_target"] - b["within_target"] for a, b in pairs]), 4
        ),
    }
    return out


def table(runs: list[dict[str, Any]]) -> str:
    head = (
        "| run | config | utilisation | within target | p50 / p95 ms | makespan s "
        "| preemptions | replica-s | jobs |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in runs:
        lines.append(
            f"| {r['run']} | {r['mode']} | {r['utilisation']:.3f} | {r['within_target']:.2%} "
            f"| {r['p50_ms']:.0f} / {r['p95_ms']:.0f} | {r['makespan_s']:.1f} "
            f"| {r['preemptions']} | {r['replica_seconds']:.0f} | {r['jobs']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a shorter trace and fewer jobs")
    ap.add_argument("--runs", type=int, default=1, help="each runs both configurations")
    ap.add_argument("--jobs", type=int, help="training jobs (1 CPU each)")
    ap.add_argument("--steps", type=int, help="mean steps per job")
    ap.add_argument("--trace-s", type=float, help="seconds of the inference trace")
    ap.add_argument("--target-ms", type=float, default=1000.0)
    ap.add_argument("--min-run-s", type=float, default=5.0, help="GUREUM_PREEMPT_MIN_RUN_S")
    ap.add_argument("--hold-s", type=float, default=5.0, help="GUREUM_PREEMPT_HOLD_S")
    ap.add_argument(
        "--headroom",
        type=int,
        default=None,
        help="GUREUM_SERVING_HEADROOM_REPLICAS (the server's default, 1, if unset; 0: none)",
    )
    ap.add_argument(
        "--drain-s",
        type=float,
        default=None,
        help="RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S for the head (Ray's 30 s if unset)",
    )
    args = ap.parse_args()
    cfg: dict[str, Any] = dict(PROFILES["quick" if args.quick else "full"])
    for k in ("jobs", "steps", "trace_s"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    cfg |= {
        "base_s": 0.1,
        "item_s": 0.1,
        "load_s": 1.0,
        "batch": 4,
        "target_ms": args.target_ms,
        "preempt_after_s": 0.0,
        "preempt_min_run_s": args.min_run_s,
        "preempt_hold_s": args.hold_s,
        "drain_s": args.drain_s,
        "serving_headroom_replicas": args.headroom,
        "job_timeout_s": 900.0,
    }
    # The server reads its settings from GUREUM_* (a fixed cluster: nothing to wait for).
    os.environ["GUREUM_PREEMPT_AFTER_S"] = str(cfg["preempt_after_s"])
    os.environ["GUREUM_PREEMPT_MIN_RUN_S"] = str(cfg["preempt_min_run_s"])
    os.environ["GUREUM_PREEMPT_HOLD_S"] = str(cfg["preempt_hold_s"])
    if args.headroom is not None:
        os.environ["GUREUM_SERVING_HEADROOM_REPLICAS"] = str(args.headroom)
    if args.drain_s is not None:
        os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = str(args.drain_s)
    exit_on_sigterm()  # unwinds through ServingCloud, which stops the Ray head
    trace = Trace(cfg["trace_s"], cfg["peak_rps"], cfg["base_rps"], cfg["bursts"], cfg["burst_s"])
    arrivals = trace.arrivals(seed=1)
    cfg["requests"] = len(arrivals)
    # Jobs of different lengths (0.5x to 1.5x --steps, seeded): they end, and the next start,
    # spread out, as in a real queue; the same list in both configurations.
    rng = random.Random(7)
    cfg["job_steps"] = [
        max(1, round(cfg["steps"] * rng.uniform(0.5, 1.5))) for _ in range(cfg["jobs"])
    ]
    cfg["burst_starts_s"] = [rnd(s + cfg["lead_s"], 1) for s in trace.burst_starts()]
    print(
        f"trace: {len(arrivals)} requests over {cfg['trace_s']:.0f}s, bursts at "
        f"{cfg['burst_starts_s']}s after the submissions; {cfg['jobs']} jobs of "
        f"{sum(cfg['job_steps']) / cfg['jobs']:.1f} x {cfg['step_s']}s (mean) on "
        f"{cfg['cpus']} CPUs "
        f"(serving part {cfg['serving_cpus']})",
        flush=True,
    )
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gureum-bench-pool-") as tmp_name:
        tmp = Path(tmp_name)
        with ServingCloud(tmp, cfg["cpus"]) as cloud:
            register_sleeper(cloud, tmp, cfg)
            key = cloud.consumer("bench-pool")
            code = tmp / "train-code"
            code.mkdir()
            (code / "main.py").write_text(TRAIN)
            for run in range(args.runs):
                for mode in rotate(list(MODES), run):
                    r = one_config(cloud, mode, run, cfg, code, key, arrivals)
                    runs.append(r)
                    print(
                        f"run {run + 1} {mode}: utilisation {r['utilisation']:.3f}, within "
                        f"{r['within_target']:.2%}, makespan {r['makespan_s']}s, preemptions "
                        f"{r['preemptions']}, jobs {r['jobs']}, load {r['load']}",
                        flush=True,
                    )
    result = {
        "profile": "quick" if args.quick else "full",
        "config": cfg,
        "total_s": rnd(time.perf_counter() - started, 1),
        "summary_medians": summary(runs),
        "runs": runs,
    }
    print(table(runs))
    print(json.dumps(result["summary_medians"], indent=1))
    print(f"saved {save('pool_quick' if args.quick else 'pool', result)}")
    if any(r["jobs"].get("succeeded", 0) != cfg["jobs"] for r in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
