"""One attempt of a job on Ray: a small detached actor that owns the work and keeps its reports.

The actor is named after the job and attempt, so a restarted control plane finds it again
(``ray.get_actor``) and carries on polling; it keeps every report until the control plane has
stored it, so nothing is lost while no one is listening. The work itself runs with exactly the
job's resources: one Ray task for one worker, a Ray Train ``TorchTrainer`` for N workers. The
actor asks for no CPU of its own, so it never takes resources from the work.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
import traceback
from collections import deque
from typing import Any

import ray
from ray import exceptions as rex

from gureum.compute.resources import ray_options, train_resources
from gureum.compute.spec import Item, JobSpec, Outcome
from gureum.compute.work import execute
from gureum.recipes.base import Cancelled, RecipeError

# Ray errors that mean the work's process, node or owner went away: retried, not the user's fault.
_LOST = (
    rex.WorkerCrashedError,
    rex.NodeDiedError,
    rex.ActorDiedError,
    rex.ActorUnavailableError,
    rex.OwnerDiedError,
    rex.ObjectLostError,
    rex.RaySystemError,
    rex.OutOfMemoryError,
)
MAX_ERROR_CHARS = 8000


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything it wraps (causes, Ray task errors, Ray Train worker failures)."""
    seen: list[BaseException] = []
    todo: deque[BaseException] = deque([exc])
    while todo:
        e = todo.popleft()
        if any(e is s for s in seen) or len(seen) > 50:
            continue
        seen.append(e)
        nested: list[Any] = [e.__cause__, e.__context__, getattr(e, "cause", None)]
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            nested += list(failures.values())
        nested += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
        todo.extend(n for n in nested if isinstance(n, BaseException))
    return seen


def classify(exc: BaseException, stop_requested: bool) -> tuple[Outcome, str]:
    """How an attempt ended, and the message a user should read."""
    chain = _causes(exc)
    user = next((e for e in chain if isinstance(e, RecipeError)), None)
    if user is not None:
        return "failed", str(user)
    if stop_requested or any(isinstance(e, Cancelled | rex.TaskCancelledError) for e in chain):
        return "cancelled", "stopped on request"
    lost = next((e for e in chain if isinstance(e, _LOST)), None)
    if lost is not None:
        first = str(lost).strip().splitlines()[0] if str(lost).strip() else ""
        return "lost", f"{type(lost).__name__}: {first}"[:MAX_ERROR_CHARS]
    innermost = chain[-1] if len(chain) > 1 else exc
    text = "".join(traceback.format_exception_only(innermost)).strip()
    return "failed", text[-MAX_ERROR_CHARS:]


@ray.remote(max_retries=0)
def _run_one(spec: JobSpec, supervisor: Any) -> dict[str, Any]:
    """The work of a one-worker attempt, scheduled with the job's resources."""
    supervisor.report.remote([_started()])
    return execute(spec, _sender(supervisor))


def _started() -> Item:
    ctx = ray.get_runtime_context()
    return {
        "type": "started",
        "node_id": ctx.get_node_id(),
        "pid": os.getpid(),
        "time": time.time(),
    }


def _sender(supervisor: Any) -> Any:
    def send(items: list[Item]) -> bool:
        stop: bool = ray.get(supervisor.report.remote(items), timeout=60)
        return stop

    return send


def _train_loop(config: dict[str, Any]) -> None:
    """Each Ray Train worker: rank 0 reports the result, every rank runs the same recipe."""
    from ray import train  # Ray Train imports pandas/pyarrow; only its workers need it

    rank = train.get_context().get_world_rank()
    spec: JobSpec = config["spec"]
    supervisor = config["supervisor"]
    if rank == 0:
        supervisor.report.remote([_started()])
    device = "cuda" if spec.resources.gpus > 0 else "cpu"
    result = execute(spec, _sender(supervisor), rank=rank, device=device)
    if rank == 0:
        ray.get(supervisor.set_result.remote(result))


@ray.remote(num_cpus=0, max_restarts=0)
class JobSupervisor:
    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._items: list[Item] = []
        self._seq = 0
        self._stop = threading.Event()
        self._ref: ray.ObjectRef[Any] | None = None
        self._result: dict[str, Any] | None = None
        threading.Thread(target=self._run, name="gureum-attempt", daemon=True).start()

    # -- called by the work ----------------------------------------------------------------

    def report(self, items: list[Item]) -> bool:
        with self._lock:
            for item in items:
                self._seq += 1
                self._items.append({**item, "seq": self._seq})
        return self._stop.is_set()

    def set_result(self, result: dict[str, Any]) -> None:
        self._result = result

    # -- called by the control plane ---------------------------------------------------------

    def poll(self, ack: int) -> list[Item]:
        with self._lock:
            self._items = [i for i in self._items if i["seq"] > ack]
            return list(self._items)

    def stop(self) -> None:
        self._stop.set()
        if self._ref is not None:
            with contextlib.suppress(Exception):
                ray.cancel(self._ref, force=True)

    # -- the attempt -------------------------------------------------------------------------

    def _run(self) -> None:
        spec = self.spec
        try:
            if spec.workers == 1:
                self._ref = _run_one.options(
                    **ray_options(spec.resources), name=f"gureum-{spec.attempt_name}"
                ).remote(spec, ray.get_runtime_context().current_actor)
                if self._stop.is_set():
                    self.stop()
                result = ray.get(self._ref)
            else:
                result = self._run_trainer()
            end: Item = {"type": "end", "outcome": "succeeded", "result": result}
        except BaseException as exc:
            outcome, message = classify(exc, self._stop.is_set())
            end = {"type": "end", "outcome": outcome, "error": message}
        self.report([end])

    def _run_trainer(self) -> dict[str, Any]:
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        spec = self.spec
        r = spec.resources
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={
                "spec": spec,
                "supervisor": ray.get_runtime_context().current_actor,
            },
            scaling_config=ScalingConfig(
                num_workers=spec.workers,
                use_gpu=r.gpus > 0,
                resources_per_worker=train_resources(r),
                accelerator_type=r.accelerator_type,
            ),
            run_config=RunConfig(
                name=spec.attempt_name,
                storage_path=tempfile.mkdtemp(prefix="gureum-train-"),
                failure_config=FailureConfig(max_failures=0),
            ),
        )
        trainer.fit()
        if self._result is None:
            raise RuntimeError("the data-parallel run ended without a result from rank 0")
        return self._result
