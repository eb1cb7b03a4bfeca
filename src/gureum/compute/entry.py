"""The Ray entry points of a job's work, kept light to import.

A worker process imports this module before it runs anything; the work itself (recipes, torch)
is imported only once the task has told its supervisor it started, so a job reaches "running"
as soon as Ray gives it a worker, not after seconds of imports.
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Any

import ray

from gureum.compute.spec import Item, JobSpec


def started() -> Item:
    ctx = ray.get_runtime_context()
    return {
        "type": "started",
        "node_id": ctx.get_node_id(),
        "pid": os.getpid(),
        "time": time.time(),
    }


def sender(supervisor: Any, spec: JobSpec) -> Any:
    attempt = (spec.job_id, spec.attempt)

    def send(items: list[Item]) -> int:
        """The supervisor's answer: stop (bit 0), checkpoints asked for (the rest)."""
        signals: int = ray.get(supervisor.report.remote(items, attempt), timeout=60)
        return signals

    return send


def _execute() -> Any:
    # Deferred on purpose (start latency, see the module docstring), not to dodge a cycle.
    return importlib.import_module("gureum.compute.work").execute


@ray.remote(max_retries=0)
def run_one(spec: JobSpec, supervisor: Any) -> dict[str, Any]:
    """The work of a one-worker attempt, scheduled with the job's resources."""
    supervisor.report.remote([started()], (spec.job_id, spec.attempt))
    # A script job's N ranks may run as one task (one node, one sandbox): ranks=spec.workers.
    result: dict[str, Any] = _execute()(spec, sender(supervisor, spec), ranks=spec.workers)
    return result


def train_loop(config: dict[str, Any]) -> None:
    """Each Ray Train worker: every rank runs the same recipe; rank 0 reports the result."""
    train = importlib.import_module("ray.train")
    rank = train.get_context().get_world_rank()
    spec: JobSpec = config["spec"]
    supervisor = config["supervisor"]
    attempt = (spec.job_id, spec.attempt)
    if rank == 0:
        supervisor.report.remote([started()], attempt)
    device = "cuda" if spec.resources.gpus > 0 else "cpu"
    result = _execute()(spec, sender(supervisor, spec), rank=rank, device=device)
    if rank == 0:
        ray.get(supervisor.set_result.remote(result, attempt))


@ray.remote(num_cpus=0, max_retries=0)
def noop() -> None:
    """Starts a worker ahead of the first job (``JobSupervisor.warm``)."""
