"""``ComputeBackend`` on a real Ray cluster: detached supervisor actors, one per attempt."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import ray
from ray import exceptions as rex
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from gureum.compute import fence
from gureum.compute.resources import NodeInfo
from gureum.compute.spec import NAMESPACE, RUNNER_PREFIX, JobSpec, Report
from gureum.compute.supervisor import JobSupervisor

log = logging.getLogger(__name__)
POLL_WAIT_S = 0.2
DISCOVER_WAIT_S = 5.0
MAX_IDLE = 2
# How long a released attempt's fence outlives its job (a late launch comes within seconds).
FENCE_KEEP_S = 600.0
_connect_lock = threading.Lock()
# The resource Ray gives the head node only.
HEAD_RESOURCE = "node:__internal_head__"


_connected: list[str] = []


def connect(address: str) -> None:
    """Join the cluster as a driver, once per process and address (``ray.init`` is global)."""
    with _connect_lock:
        if ray.is_initialized() and _connected == [address]:
            return
        if ray.is_initialized():
            ray.shutdown()  # another cluster (tests connect to several in turn)
        _connected[:] = [address]
        # Ray's C++ failure-signal handler would catch the server's SIGTERM and abort the
        # process at exit after a clean shutdown; the server handles its own signals.
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        ray.init(
            address=address,
            namespace=NAMESPACE,
            logging_level=logging.WARNING,
            log_to_driver=False,
            configure_logging=False,
        )


def disconnect() -> None:
    """Leave the cluster (jobs keep running: their supervisors are detached). Without it a
    process that connected aborts in Ray's teardown at exit."""
    with _connect_lock:
        if ray.is_initialized():
            ray.shutdown()
        _connected.clear()


def head_node_id() -> str | None:
    """The head node's id (None when Ray does not say which node is the head)."""
    for n in ray.nodes():  # type: ignore[no-untyped-call]
        if n.get("Alive") and HEAD_RESOURCE in n.get("Resources", {}):
            return str(n["NodeID"])
    return None


class RayBackend:
    """Attempts run in ``JobSupervisor`` actors named ``gureum-run-<hex>``. One idle supervisor
    is kept started ahead, so a job reaches "running" without waiting for a new worker
    process; which attempt an actor runs is asked of the actor itself (``whoami``), so a
    restarted control plane finds its attempts again with nothing stored on its side.

    Joining the cluster starts and kills nothing: of several API servers only the leader's
    job controller drives supervisors, from ``attempts()`` (the start of its term) on."""

    def __init__(self, address: str, spares: int = 1) -> None:
        connect(address)
        self._spares = spares
        self._runners: dict[tuple[str, int], tuple[str, Any]] = {}
        self._warm: list[tuple[str, Any]] = []
        self._pending: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()
        # Supervisors that did not say which attempt they run (still starting): an attempt
        # not found meanwhile may be theirs, so it is not declared lost.
        self._unsure = False
        self._head = head_node_id()

    def nodes(self) -> list[NodeInfo]:
        return [
            NodeInfo(node_id=n["NodeID"], total=dict(n.get("Resources", {})))
            for n in ray.nodes()  # type: ignore[no-untyped-call]
            if n.get("Alive")
        ]

    # Ray's available_resources() comes from its control service, which raylets update
    # asynchronously: on a busy 2-core machine it showed a just-started job's CPU free for
    # about a second, and the queue launched a second job into it.
    view_lag_s = 2.0

    def available(self) -> Mapping[str, float]:
        return dict(ray.available_resources())  # type: ignore[no-untyped-call]

    def _new_supervisor(self) -> tuple[str, Any]:
        name = f"{RUNNER_PREFIX}{uuid.uuid4().hex[:12]}"
        handle = JobSupervisor.options(  # type: ignore[attr-defined]
            name=name,
            namespace=NAMESPACE,
            lifetime="detached",
            max_concurrency=8,  # polls are answered while the attempt runs
            # On the head, which Ray's autoscaler never removes: on a worker node an idle
            # node's removal would take the attempts it supervises (running elsewhere) along,
            # and the actor alone would keep some autoscalers from finding the node idle.
            scheduling_strategy=NodeAffinitySchedulingStrategy(self._head, soft=True)
            if self._head
            else "DEFAULT",
        ).remote()
        handle.warm.remote()
        return name, handle

    def _refill(self) -> None:
        with self._lock:
            while len(self._warm) < self._spares:
                self._warm.append(self._new_supervisor())

    def launch(self, spec: JobSpec) -> None:
        with self._lock:
            name, handle = self._warm.pop() if self._warm else self._new_supervisor()
            self._runners[(spec.job_id, spec.attempt)] = (name, handle)
        handle.start.remote(spec)
        self._refill()

    def _handle(self, job_id: str, attempt: int) -> Any | None:
        runner = self._runners.get((job_id, attempt))
        if runner is None:
            self._discover()
            runner = self._runners.get((job_id, attempt))
        return None if runner is None else runner[1]

    def _discover(self) -> None:
        """Map every supervisor on the cluster to its attempt; kill idle ones that are not
        our spares (left by an earlier control plane)."""
        known = {name for name, _ in self._warm} | {name for name, _ in self._runners.values()}
        asked: list[tuple[str, Any, Any]] = []
        self._unsure = False
        for entry in ray.util.list_named_actors(all_namespaces=True):
            name = str(entry.get("name", ""))
            if entry.get("namespace") != NAMESPACE or not name.startswith(RUNNER_PREFIX):
                continue
            if name in known:
                continue
            with contextlib.suppress(ValueError):
                handle = ray.get_actor(name, namespace=NAMESPACE)
                asked.append((name, handle, handle.whoami.remote()))
        if not asked:
            return
        refs = [ref for _, _, ref in asked]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=DISCOVER_WAIT_S)
        done = set(ready)
        for name, handle, ref in asked:
            if ref not in done:
                self._unsure = True
                continue  # still starting; asked again next time
            try:
                key: tuple[str, int] | None = ray.get(ref)
            except (rex.RayActorError, rex.ActorUnavailableError):
                continue
            if key is not None:
                self._runners[(str(key[0]), int(key[1]))] = (name, handle)
            else:
                with contextlib.suppress(Exception):
                    ray.kill(handle, no_restart=True)

    def poll(self, attempts: Sequence[tuple[str, int, int]]) -> dict[tuple[str, int], Report]:
        """Never blocks on a slow actor (one still starting, one busy): its answer is picked
        up by a later poll, so one attempt cannot stall the loop for the others."""
        out: dict[tuple[str, int], Report] = {}
        for job_id, attempt, ack in attempts:
            key = (job_id, attempt)
            if key in self._pending:
                continue
            handle = self._handle(job_id, attempt)
            if handle is None:
                out[key] = Report(items=[], alive=self._unsure)
            else:
                self._pending[key] = handle.poll.remote(ack, key)
        wanted = {(j, a) for j, a, _ in attempts}
        refs = {k: r for k, r in self._pending.items() if k in wanted}
        if not refs:
            return out
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=POLL_WAIT_S)
        done = set(ready)
        for key, ref in refs.items():
            if ref not in done:
                out.setdefault(key, Report(items=[], alive=True))
                continue
            del self._pending[key]
            try:
                out[key] = Report(items=ray.get(ref), alive=True)
            except (rex.RayActorError, rex.ActorUnavailableError):
                self._runners.pop(key, None)
                out[key] = Report(items=[], alive=False)
        return out

    def stop(self, job_id: str, attempt: int, grace_s: float = 0.0) -> None:
        handle = self._handle(job_id, attempt)
        if handle is not None:
            handle.stop.remote(grace_s)

    def release(self, job_id: str, attempt: int) -> None:
        """The attempt's supervisor is reset and kept as a spare (up to ``MAX_IDLE``): it
        still holds the warm worker its task ran on, which the next job then gets."""
        # Before anything else: the next attempt may be launched as soon as this returns.
        fence.supersede(job_id, attempt)
        runner = self._runners.pop((job_id, attempt), None)
        self._pending.pop((job_id, attempt), None)
        if runner is None:
            return
        with self._lock:
            keep = len(self._warm) < self._spares + MAX_IDLE
            if keep:
                self._warm.append(runner)
        with contextlib.suppress(Exception):
            if keep:
                runner[1].reset.remote((job_id, attempt))
            else:
                runner[1].close.remote()

    def sweep(self, active: set[str]) -> None:
        try:
            fence.sweep(active, FENCE_KEEP_S)
        except Exception:
            log.warning("cannot sweep the attempts' fences", exc_info=True)

    def attempts(self) -> list[tuple[str, int]]:
        """Asked at the start of a term: what an earlier term of this process knew may be
        stale (another leader ran meanwhile), so everything is found again, spares made."""
        with self._lock:
            self._runners.clear()
            self._warm.clear()
            self._pending.clear()
        self._head = head_node_id()  # a restarted head has a new id
        self._discover()
        self._refill()
        return list(self._runners)
