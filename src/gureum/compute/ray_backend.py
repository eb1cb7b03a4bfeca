"""``ComputeBackend`` on a real Ray cluster: detached supervisor actors, one per attempt."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import ray
from ray import exceptions as rex

from gureum.compute.resources import NodeInfo
from gureum.compute.spec import NAMESPACE, JobSpec, Report, attempt_name, parse_attempt_name
from gureum.compute.supervisor import JobSupervisor

log = logging.getLogger(__name__)
POLL_TIMEOUT_S = 10.0
_connect_lock = threading.Lock()


_connected: list[str] = []


def connect(address: str) -> None:
    """Join the cluster as a driver, once per process and address (``ray.init`` is global)."""
    with _connect_lock:
        if ray.is_initialized() and _connected == [address]:
            return
        if ray.is_initialized():
            ray.shutdown()  # another cluster (tests connect to several in turn)
        _connected[:] = [address]
        ray.init(
            address=address,
            namespace=NAMESPACE,
            logging_level=logging.WARNING,
            log_to_driver=False,
            configure_logging=False,
        )


class RayBackend:
    def __init__(self, address: str) -> None:
        connect(address)
        self._handles: dict[str, Any] = {}

    def nodes(self) -> list[NodeInfo]:
        return [
            NodeInfo(node_id=n["NodeID"], total=dict(n.get("Resources", {})))
            for n in ray.nodes()  # type: ignore[no-untyped-call]
            if n.get("Alive")
        ]

    def available(self) -> Mapping[str, float]:
        return dict(ray.available_resources())  # type: ignore[no-untyped-call]

    def launch(self, spec: JobSpec) -> None:
        handle = JobSupervisor.options(  # type: ignore[attr-defined]
            name=spec.attempt_name,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            max_concurrency=8,  # polls are answered while the attempt runs
        ).remote(spec)
        self._handles[spec.attempt_name] = handle

    def _handle(self, job_id: str, attempt: int) -> Any | None:
        name = attempt_name(job_id, attempt)
        handle = self._handles.get(name)
        if handle is None:
            try:
                handle = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                return None
            self._handles[name] = handle
        return handle

    def poll(self, attempts: Sequence[tuple[str, int, int]]) -> dict[tuple[str, int], Report]:
        out: dict[tuple[str, int], Report] = {}
        refs: dict[tuple[str, int], Any] = {}
        for job_id, attempt, ack in attempts:
            handle = self._handle(job_id, attempt)
            if handle is None:
                out[(job_id, attempt)] = Report(items=[], alive=False)
            else:
                refs[(job_id, attempt)] = handle.poll.remote(ack)
        for key, ref in refs.items():
            try:
                out[key] = Report(items=ray.get(ref, timeout=POLL_TIMEOUT_S), alive=True)
            except (rex.RayActorError, rex.ActorUnavailableError):
                self._handles.pop(attempt_name(*key), None)
                out[key] = Report(items=[], alive=False)
            except rex.GetTimeoutError:
                out[key] = Report(items=[], alive=True)  # busy; ask again next time
        return out

    def stop(self, job_id: str, attempt: int) -> None:
        handle = self._handle(job_id, attempt)
        if handle is not None:
            handle.stop.remote()

    def release(self, job_id: str, attempt: int) -> None:
        handle = self._handle(job_id, attempt)
        self._handles.pop(attempt_name(job_id, attempt), None)
        if handle is not None:
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)

    def attempts(self) -> list[tuple[str, int]]:
        found = []
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry.get("namespace") != NAMESPACE:
                continue
            parsed = parse_attempt_name(entry.get("name", ""))
            if parsed is not None:
                found.append(parsed)
        return found
