"""The boundary between the job controller and the compute engine.

The controller decides what should run (queue order, quotas, retries, timeouts) and talks to the
engine only through this protocol, so it is tested without a cluster against a fake and runs for
real against ``RayBackend``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from gureum.compute.resources import NodeInfo
from gureum.compute.spec import JobSpec, Report


class ComputeBackend(Protocol):
    # How long after an attempt has reported ``started`` ``available`` may still show its
    # resources free (Ray's view of the cluster catches up asynchronously); the job queue
    # counts such an attempt as holding its room for that long.
    view_lag_s: float

    def nodes(self) -> list[NodeInfo]:
        """Alive nodes and their total resources."""
        ...

    def available(self) -> Mapping[str, float]:
        """Resources free right now across the cluster."""
        ...

    def launch(self, spec: JobSpec) -> None:
        """Start one attempt; returns at once (the work reports ``started`` when it runs)."""
        ...

    def poll(self, attempts: Sequence[tuple[str, int, int]]) -> dict[tuple[str, int], Report]:
        """For each (job id, attempt, last stored item seq): the items after it."""
        ...

    def stop(self, job_id: str, attempt: int, grace_s: float = 0.0) -> None:
        """Ask an attempt to stop; it reports ``end`` with outcome ``cancelled``. With
        ``grace_s`` (a preemption) it is first asked to save a checkpoint, and stopped once
        it saved one, ended, or ``grace_s`` passed."""
        ...

    def release(self, job_id: str, attempt: int) -> None:
        """Kill whatever is left of an attempt and free its resources (idempotent); the
        attempt may never start again, not even from a deposed leader's late launch."""
        ...

    def sweep(self, active: set[str]) -> None:
        """Drop what ``release`` kept to refuse the attempts of jobs no longer active, once
        it is old enough that no late launch can come."""
        ...

    def attempts(self) -> list[tuple[str, int]]:
        """Every attempt the cluster still holds, finished or not (for sweeping)."""
        ...
