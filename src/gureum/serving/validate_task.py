"""``gureum models validate`` on its own: the same load and smoke test a deploy's first replica
runs, as a Ray task on the cluster (never in the control plane: loading runs recipe code on
the version's files, or starts a user's sandboxed predictor)."""

from __future__ import annotations

import socket
from typing import Any

import ray

from gureum.recipes.specs import serving_of
from gureum.serving.replica import load_predictor
from gureum.serving.spec import ModelRef, ReplicaSpec
from gureum.serving.validation import Check, ValidationReport, ValidationSpec, validate

# What the task asks of Ray: a replica's default share of a CPU.
TASK_CPUS = 1.0
# Time for the task to be scheduled, import its recipe and load, besides the requests.
START_S = 300.0


def run_here(
    workspace_id: int, artifacts: str, cache_dir: str, model: ModelRef, spec: ValidationSpec
) -> ValidationReport:
    """Load and test the version in this process (a Ray worker's)."""
    replica = ReplicaSpec(
        endpoint="validate",
        endpoint_id=0,
        workspace_id=workspace_id,
        role="primary",
        artifacts=artifacts,
        control_url="http://127.0.0.1",
        token="",
        spool_dir=f"{cache_dir.rstrip('/')}/spool",
        max_request_bytes=1,
    )
    serving = serving_of(model.recipe)
    _, report = validate(
        lambda: load_predictor(replica, model),
        spec,
        output_schema=serving.output_schema if serving else None,
        count_units=serving.count if serving else None,
        where=f"ray task on {socket.gethostname()}",
    )
    return report


def _task(*args: Any) -> str:
    return run_here(*args).model_dump_json()


def run_on_cluster(
    workspace_id: int, model: ModelRef, spec: ValidationSpec, *, artifacts: str, cache_dir: str
) -> ValidationReport:
    """Run the validation as a Ray task and wait for its report (blocking: a thread's work).
    A task that does not finish in time is cancelled and reported as failed."""
    remote = ray.remote(num_cpus=TASK_CPUS, max_retries=0)(_task)
    ref = remote.remote(workspace_id, artifacts, cache_dir, model, spec)
    budget = START_S + len(spec.inputs) * spec.limits.max_latency_ms / 1000
    try:
        return ValidationReport.model_validate_json(ray.get(ref, timeout=budget))
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        detail = f"the validation task did not finish within {budget:.0f} s"
    except ray.exceptions.RayError as e:
        detail = f"the validation task failed: {type(e).__name__}: {str(e)[:400]}"
    check = Check(name="load", passed=False, detail=detail)
    return ValidationReport(id=spec.id, version_id=spec.version_id, passed=False, checks=[check])
