"""Preempt to replica ready (issue 13 item 1): how long an endpoint's replica takes to be ready
on a full cluster, where the pool must first preempt a training job past its minimum run time
(asking it for a checkpoint of a fixed size and waiting for it), against the same replica's
start on an empty cluster. Target: at most 2x.

One local Ray head with ``--cpus`` CPUs and a live gureum server (job, endpoint and pool
controllers, as ``gureum up`` runs them), rounds alternating which side goes first:

- ``empty``: nothing runs; an endpoint of one 1-CPU replica is deployed; the time from the
  deploy call to the endpoint ``ready``;
- ``full``: a script job holding every CPU runs sleep-based training steps (``--step-s``) and,
  asked for a checkpoint (``gureum.run.should_checkpoint()``), saves one of ``--ckpt-mb`` MB;
  once it has run ``--min-run-s`` (the minimum run time) the same endpoint is deployed; the
  time from the deploy call to ``ready`` covers the replica waiting, the preemption, the
  checkpoint asked for, written and taken over, the job stopped and the replica placed and
  started.

Each round starts once Ray Serve has removed the previous round's application. The model is
the tabular sample's tiny classifier (its load takes well under a second); the
replica start is the same in both sides, so the ratio measures what the preemption adds. The
pool's settings are those of a fixed cluster (no node autoscaler to wait for):
``GUREUM_PREEMPT_AFTER_S`` 0; a preempted job is held (``GUREUM_PREEMPT_HOLD_S``) past the
round, then cancelled.

    flock /tmp/ray.lock .venv/bin/python -m benchmarks.bench_preempt [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._util import exit_on_sigterm, load_average, median, save

MACHINE = "python-svc, 2 cores"
TERMINAL = ("succeeded", "failed", "cancelled")

SCRIPT = """
import time
import torch
import gureum.run as run
params = run.params()
state = run.load_checkpoint() or {"step": 0}
weights = torch.zeros(int(params["ckpt_mb"]) * 1024 * 1024 // 4)  # the fixed checkpoint size
for step in range(state["step"], 100000):
    time.sleep(float(params["step_s"]))  # one training step
    if run.should_checkpoint():
        run.save_checkpoint({"step": step + 1, "weights": weights})
        print(f"checkpoint at step {step + 1}", flush=True)
    if run.should_stop():
        break
"""


def _ts(value: Any) -> float:
    return float(value.timestamp())


def _wait(pred: Any, timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(every)


def _delete(cloud: Any, name: str) -> None:
    """Delete endpoint ``name`` and wait until Ray Serve has removed its application too: a
    deploy while an application of the same name is being torn down waits for it (SQLite
    hands the next endpoint the same id, so the same application name)."""
    from ray import serve
    from sqlalchemy import select

    from gureum.server.db.tables_serving import Endpoint
    from gureum.serving.backend import app_name

    with cloud.app.state.db.read() as s:
        app = app_name(int(s.scalar(select(Endpoint.id).where(Endpoint.name == name))))
    cloud.delete(name)
    _wait(lambda: app not in serve.status().applications, 120, f"{app} removed", 0.2)


def _ready_after(cloud: Any, name: str) -> float:
    """Deploy endpoint ``name`` (one 1-CPU replica) and return seconds until it is ready."""
    config = {"resources": {"cpus": 1}, "autoscaling": {"min_replicas": 1, "max_replicas": 1}}
    began = time.monotonic()
    cloud.client.endpoints.deploy(name, "orders", config=config)
    _wait(lambda: cloud.client.endpoints.get(name).state == "ready", 300, f"{name} ready")
    return time.monotonic() - began


def _full_round(cloud: Any, code: Path, args: argparse.Namespace, i: int) -> dict[str, Any]:
    c = cloud.client
    job = c.jobs.train(
        "script",
        None,
        code_dir=code,
        resources={"cpus": args.cpus},
        priority=-1,
        params={"ckpt_mb": args.ckpt_mb, "step_s": args.step_s},
        max_retries=0,
    )
    _wait(lambda: c.jobs.get(job.id).state == "running", 300, "the job running", 0.1)
    started = c.jobs.get(job.id).started_at
    assert started is not None
    time.sleep(max(0.0, args.min_run_s + 0.5 - (time.time() - _ts(started))))
    seconds = _ready_after(cloud, f"full-{i}")
    events = c.jobs.events(job.id)
    at = {e.kind: _ts(e.time) for e in events}
    saved = [e for e in events if e.kind == "checkpoint"]
    out = {
        "ready_s": round(seconds, 3),
        "preempted": "preempted" in at,
        "checkpoint_ask_to_saved_s": round(_ts(saved[-1].time) - at["checkpoint-ask"], 3)
        if saved and "checkpoint-ask" in at
        else None,
    }
    _delete(cloud, f"full-{i}")
    c.jobs.cancel(job.id)
    _wait(lambda: c.jobs.get(job.id).state in TERMINAL, 120, "the job cancelled", 0.2)
    return out


def _empty_round(cloud: Any, i: int) -> dict[str, Any]:
    seconds = _ready_after(cloud, f"empty-{i}")
    _delete(cloud, f"empty-{i}")
    return {"ready_s": round(seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2, help="the cluster's CPUs (all the job's)")
    parser.add_argument("--ckpt-mb", type=int, default=16, help="the checkpoint's size")
    parser.add_argument("--step-s", type=float, default=0.5, help="one training step")
    parser.add_argument("--min-run-s", type=float, default=2.0, help="GUREUM_PREEMPT_MIN_RUN_S")
    args = parser.parse_args()
    exit_on_sigterm()
    os.environ.update(
        GUREUM_PREEMPT_AFTER_S="0",
        GUREUM_PREEMPT_MIN_RUN_S=str(args.min_run_s),
        GUREUM_PREEMPT_HOLD_S="3600",
        GUREUM_PREEMPT_GRACE_S="30",
    )
    from benchmarks._serving_util import ServingCloud, train_tabular

    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-preempt-") as tmp:
        root = Path(tmp)
        model_dir = train_tabular(root)
        code = root / "code"
        code.mkdir()
        (code / "main.py").write_text(SCRIPT)
        with ServingCloud(root, num_cpus=args.cpus) as cloud:
            cloud.register("orders", model_dir, "tabular")
            _empty_round(cloud, 0)  # warm-up: worker processes, imports (not counted)
            empty: list[dict[str, Any]] = []
            full: list[dict[str, Any]] = []
            for i in range(1, args.rounds + 1):
                if i % 2:
                    empty.append(_empty_round(cloud, i))
                    full.append(_full_round(cloud, code, args, i))
                else:
                    full.append(_full_round(cloud, code, args, i))
                    empty.append(_empty_round(cloud, i))
                print(f"round {i}: empty {empty[-1]}, full {full[-1]}", flush=True)
    empty_med = median([r["ready_s"] for r in empty])
    full_med = median([r["ready_s"] for r in full])
    asks = [r["checkpoint_ask_to_saved_s"] for r in full if r["checkpoint_ask_to_saved_s"]]
    result = {
        "machine": MACHINE,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "settings": vars(args),
        "empty": empty,
        "full": full,
        "empty_ready_median_s": round(empty_med, 3),
        "full_ready_median_s": round(full_med, 3),
        "checkpoint_ask_to_saved_median_s": round(median(asks), 3) if asks else None,
        "ratio": round(full_med / empty_med, 3),
        "target": "<= 2.0",
        "met": full_med / empty_med <= 2.0 and all(r["preempted"] for r in full),
    }
    print(json.dumps(result, indent=2))
    print(f"saved {save('bench_preempt', result)}")


if __name__ == "__main__":
    main()
