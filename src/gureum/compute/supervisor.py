"""One attempt of a job on Ray: a small detached actor that owns the work and keeps its reports.

The actor is named after the job and attempt, so a restarted control plane finds it again
(``ray.get_actor``) and carries on polling; it keeps every report until the control plane has
stored it, so nothing is lost while no one is listening. The work itself runs with exactly the
job's resources: one Ray task for one worker, a Ray Train ``TorchTrainer`` for N workers. The
actor asks for no CPU of its own, so it never takes resources from the work.

A stop may come with a grace (a preemption): the work is first asked to checkpoint, through
the answer to its next report (``STOP`` and the checkpoint request's number, see ``signals``),
and stopped once a checkpoint arrived, the work ended or the grace ran out, whichever is first.
The supervisor keeps that wait itself, so a control plane that restarts meanwhile loses nothing.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import threading
import time
import traceback
from collections import deque
from typing import Any

import ray
from ray import exceptions as rex

from gureum.compute import fence
from gureum.compute.entry import noop, run_one, train_loop
from gureum.compute.resources import (
    NodeInfo,
    ray_options,
    train_resources,
    unplaceable,
    whole_job,
)
from gureum.compute.spec import Item, JobSpec, Outcome


def one_node(spec: JobSpec) -> bool:
    """A script job's ranks run as one task, in one sandbox, meeting on its private loopback.
    Only where a site admin allowed unsandboxed code, and no node can hold all ranks, do they
    spread over nodes with Ray Train (unsandboxed: they need the host network)."""
    if spec.recipe != "script":
        return False
    if not spec.unsandboxed_ok:
        return True
    nodes = [
        NodeInfo(node_id=n["NodeID"], total=dict(n.get("Resources", {})))
        for n in ray.nodes()  # type: ignore[no-untyped-call]
        if n.get("Alive")
    ]
    return unplaceable(whole_job(spec.resources, spec.workers), 1, nodes) is None


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
# The answer to a report: bit 0 asks the work to stop, the rest counts the checkpoint requests
# (a work that has saved a checkpoint since the Nth request knows not to save again for it).
STOP = 1
# How often a running attempt's reports look whether the control plane gave it up.
FENCE_CHECK_S = 2.0
log = logging.getLogger(__name__)


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


def _is(e: BaseException, names: tuple[str, ...]) -> bool:
    """By class name, so the supervisor never imports the recipes (torch) to classify."""
    return any(c.__name__ in names for c in type(e).__mro__)


def classify(exc: BaseException, stop_requested: bool) -> tuple[Outcome, str]:
    """How an attempt ended, and the message a user should read."""
    chain = _causes(exc)
    # Asked to stop, whatever the work raised on its way out is the stop's doing (a script
    # killed under it exits with a signal and its runner calls that a failure).
    if stop_requested:
        return "cancelled", "stopped on request"
    user = next((e for e in chain if _is(e, ("RecipeError",))), None)
    if user is not None:
        return "failed", str(user)
    if any(isinstance(e, rex.TaskCancelledError) or _is(e, ("Cancelled",)) for e in chain):
        return "cancelled", "stopped on request"
    lost = next((e for e in chain if isinstance(e, _LOST)), None)
    if lost is not None:
        first = str(lost).strip().splitlines()[0] if str(lost).strip() else ""
        return "lost", f"{type(lost).__name__}: {first}"[:MAX_ERROR_CHARS]
    innermost = chain[-1] if len(chain) > 1 else exc
    text = "".join(traceback.format_exception_only(innermost)).strip()
    return "failed", text[-MAX_ERROR_CHARS:]


def checkpoint_asked(grace_s: float) -> Item:
    return {
        "type": "event",
        "kind": "checkpoint-ask",
        "message": f"asked to save a checkpoint before it is stopped (grace {grace_s:g}s)",
        "data": {"grace_s": grace_s},
    }


def checkpoint_answered(saved: bool, grace_s: float) -> Item:
    message = (
        "checkpoint saved on request: stopping"
        if saved
        else f"no checkpoint within {grace_s:g}s: stopping; it resumes from its last one"
    )
    return {"type": "event", "kind": "info", "message": message, "data": {"saved": saved}}


@ray.remote(num_cpus=0, max_restarts=0)
class JobSupervisor:
    """Created ahead of need (a worker process takes a second or more to start) and given
    its attempt by ``start``; ``whoami`` lets a restarted control plane map it back."""

    def __init__(self) -> None:
        self.spec: JobSpec | None = None
        self._lock = threading.Lock()
        self._items: list[Item] = []
        self._seq = 0
        self._stop = threading.Event()
        self._ref: ray.ObjectRef[Any] | None = None
        self._result: dict[str, Any] | None = None
        self._done = False
        self._fence_at = 0.0  # when its work's next report looks at the fence
        self._asked = 0  # checkpoint requests made of this attempt (a preemption's grace)
        self._saved = threading.Event()  # a checkpoint arrived since the last request

    def warm(self) -> None:
        """Run one no-op task so a worker process is already there, leased to this
        supervisor, when its first job comes (that job then starts in milliseconds)."""
        ray.get(noop.remote())

    def start(self, spec: JobSpec) -> None:
        if fence.superseded(spec.job_id, spec.attempt):
            # A deposed leader's late launch: the new leader already retried this attempt.
            raise RuntimeError(f"{spec.attempt_name} was superseded; not starting it")
        with self._lock:
            if self.spec is not None and not self._done:
                raise RuntimeError(f"this supervisor already runs {self.spec.attempt_name}")
            self._clear()
            self.spec = spec
        threading.Thread(target=self._run, args=(spec,), name="gureum-attempt", daemon=True).start()

    def whoami(self) -> tuple[str, int] | None:
        spec = self.spec
        return None if spec is None else (spec.job_id, spec.attempt)

    # -- called by the work ----------------------------------------------------------------

    def report(self, items: list[Item], attempt: tuple[str, int] | None = None) -> int:
        """``attempt`` names the sender: late items of an earlier attempt are dropped. The
        answer is ``signals``: whether to stop, and how many checkpoints were asked for."""
        with self._lock:
            spec = self.spec
            if attempt is not None and (spec is None or attempt != (spec.job_id, spec.attempt)):
                return STOP  # that attempt is over: tell its work to stop
            for item in items:
                self._seq += 1
                self._items.append({**item, "seq": self._seq})
                if self._asked and item["type"] == "event" and item.get("kind") == "checkpoint":
                    self._saved.set()
            check = spec is not None and time.monotonic() >= self._fence_at
            if check:
                self._fence_at = time.monotonic() + FENCE_CHECK_S
        if check and spec is not None and fence.superseded(spec.job_id, spec.attempt):
            log.warning("%s was superseded: stopping it", spec.attempt_name)
            self.stop()
        return self.signals()

    def signals(self) -> int:
        """``STOP`` when the work should stop, plus twice the checkpoint requests made."""
        return (STOP if self._stop.is_set() else 0) | (self._asked << 1)

    def set_result(self, result: dict[str, Any], attempt: tuple[str, int]) -> None:
        spec = self.spec
        if spec is not None and attempt == (spec.job_id, spec.attempt):
            self._result = result

    # -- called by the control plane ---------------------------------------------------------

    def poll(self, ack: int, attempt: tuple[str, int] | None = None) -> list[Item]:
        """The reports after ``ack``; of ``attempt`` only. Calls to this threaded actor may run
        out of order: a poll for a new attempt can overtake its ``start`` on a reused
        supervisor, and must not be answered with the previous attempt's end."""
        with self._lock:
            spec = self.spec
            if attempt is not None and (spec is None or attempt != (spec.job_id, spec.attempt)):
                return []
            self._items = [i for i in self._items if i["seq"] > ack]
            return list(self._items)

    def reset(self, attempt: tuple[str, int] | None = None) -> None:
        """Become idle again for the next attempt. A supervisor is reused rather than
        replaced because the workers its tasks ran on belong to it: a new one would wait for
        a new worker process (a second or more), a reused one gets the warm worker back.
        With ``attempt``, only that attempt is reset: a later ``start`` may have run first."""
        with self._lock:
            spec = self.spec
            if attempt is not None and spec is not None and attempt != (spec.job_id, spec.attempt):
                return
            stop, ref = self._stop, self._ref
            self._clear()
        stop.set()
        if ref is not None:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)

    def _clear(self) -> None:
        self.spec, self._ref, self._result, self._done = None, None, None, False
        self._items, self._seq = [], 0
        self._stop = threading.Event()
        self._asked, self._saved = 0, threading.Event()

    def close(self) -> None:
        ray.actor.exit_actor()  # type: ignore[no-untyped-call]

    def stop(self, grace_s: float = 0.0) -> None:
        """Stop the attempt; with ``grace_s`` (a preemption), ask it to checkpoint first and
        stop it once it saved one, ended, or ``grace_s`` passed. Asked again (a new leader
        carrying out the same preemption), the wait already under way goes on."""
        if grace_s > 0:
            with self._lock:
                spec, first = self.spec, self._asked == 0
                if spec is not None and not self._done and not self._stop.is_set() and first:
                    self._asked += 1
                    self._saved.clear()
                    self._add(checkpoint_asked(grace_s))
                    threading.Thread(
                        target=self._stop_after_checkpoint,
                        args=(spec, grace_s),
                        name="gureum-preempt",
                        daemon=True,
                    ).start()
                    return
                if spec is not None and not first and not self._stop.is_set():
                    return  # the grace of the first request is running
        self._stop.set()
        if self._ref is not None:
            with contextlib.suppress(Exception):
                ray.cancel(self._ref, force=True)

    def _add(self, item: Item) -> None:
        """An item of the supervisor's own (under ``_lock``)."""
        self._seq += 1
        self._items.append({**item, "seq": self._seq})

    def _stop_after_checkpoint(self, spec: JobSpec, grace_s: float) -> None:
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and not self._done and self.spec is spec:
            if self._saved.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
                break
        with self._lock:
            if self.spec is not spec or self._done:
                return  # it ended by itself (or was reset): nothing to stop
            self._add(checkpoint_answered(self._saved.is_set(), grace_s))
        self.stop()

    # -- the attempt -------------------------------------------------------------------------

    def _run(self, spec: JobSpec) -> None:
        try:
            if spec.workers == 1 or one_node(spec):
                self._ref = run_one.options(
                    **ray_options(whole_job(spec.resources, spec.workers)),
                    name=f"gureum-{spec.attempt_name}",
                ).remote(spec, ray.get_runtime_context().current_actor)
                if self._stop.is_set():
                    self.stop()
                result = ray.get(self._ref)
            else:
                result = self._run_trainer(spec)
            end: Item = {"type": "end", "outcome": "succeeded", "result": result}
        except BaseException as exc:
            outcome, message = classify(exc, self._stop.is_set())
            end = {"type": "end", "outcome": outcome, "error": message}
        if self.spec is spec:  # not reset meanwhile
            self.report([end])
            self._done = True

    def _run_trainer(self, spec: JobSpec) -> dict[str, Any]:
        # Ray Train pulls in pandas and pyarrow; only data-parallel attempts pay for that.
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        r = spec.resources
        storage = tempfile.mkdtemp(prefix="gureum-train-")
        trainer = TorchTrainer(
            train_loop,
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
                storage_path=storage,
                failure_config=FailureConfig(max_failures=0),
            ),
        )
        try:
            trainer.fit()
        finally:
            shutil.rmtree(storage, ignore_errors=True)
        if self._result is None:
            raise RuntimeError("the data-parallel run ended without a result from rank 0")
        return self._result
