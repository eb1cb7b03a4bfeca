"""The node controller: asks Ray's autoscaler for the nodes that queued jobs and endpoint
replicas wait for, and takes the request back when nothing waits, so idle nodes go away.

Every tick (and when woken) it reads the jobs table (queued jobs in the job controller's queue
order, their workspaces' quotas and budgets; active jobs) and Ray Serve's replica counts as the
endpoint controller last read them, and hands the bundles ``compute.node_demand`` makes of them
to ``ray.autoscaler.sdk.request_resources``, only when they changed (and again now and then, in
case the head restarted). A replica Ray has not placed asks at once, so its node is on the way
during the ``preempt_after_s`` the pool controller waits before preempting anyone. It runs under
the one leader, like every controller; a deposed leader sends nothing, and a leader that stops
cleanly empties the request (the next leader sends its own).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from ray.autoscaler.sdk import request_resources
from sqlalchemy import select

from gureum.compute import node_demand
from gureum.compute.node_demand import Bundle, JobLoad, Limits
from gureum.compute.resources import NodeInfo
from gureum.schemas.endpoints import EndpointConfig
from gureum.schemas.jobs import ACTIVE_STATES, Resources
from gureum.server.controllers.loop import ControlLoop, Looped
from gureum.server.db.session import Database
from gureum.server.db.tables import Job, Workspace
from gureum.server.services import budget_enforce
from gureum.server.services.preemption import endpoint_apps, replica_demand
from gureum.serving.backend import AppState

log = logging.getLogger(__name__)
TICK_S = 1.0
# The request is sent again this often even unchanged (a restarted head forgot it).
RESEND_S = 60.0
Request = Callable[[list[Bundle]], None]


def ray_request(bundles: list[Bundle]) -> None:
    """Ray's autoscaler request (this process is a driver of the cluster); ``[]`` clears it."""
    request_resources(bundles=bundles)


class NodeController(Looped):
    def __init__(
        self,
        db: Database,
        request: Request,
        *,
        replicas: Callable[[], Mapping[str, AppState]] | None = None,
        nodes: Callable[[], Sequence[NodeInfo] | None] | None = None,
        tick_s: float = TICK_S,
    ) -> None:
        """``request``: sends bundles to Ray's autoscaler (tests record them); ``replicas``:
        Ray Serve's applications as the endpoint controller last read them; ``nodes``: the
        nodes present and possible (bundles none could hold are not asked for)."""
        self.db, self.request = db, request
        self.replicas, self.nodes = replicas, nodes
        self.sent: list[Bundle] | None = None  # what Ray's autoscaler was last asked for
        self._sent_at = 0.0
        self.loop = ControlLoop("gureum-nodes", self.tick, tick_s)
        self.loop.on_term = self.take_over

    def take_over(self) -> None:
        """A new term: whatever an earlier term sent is sent again from the tables."""
        self.sent = None

    def stop(self) -> None:
        self.loop.stop()
        if self.sent and self.loop.current():
            try:
                self.request([])
                self.sent = []
            except Exception:
                log.warning("cannot clear the request for nodes", exc_info=True)

    def wanted(self) -> list[Bundle]:
        """What the cluster should hold now: active and admitted queued jobs, and replicas."""
        with self.db.read() as s:
            rows = s.execute(
                select(Job.id, Job.workspace_id, Job.state, Job.resources, Job.workers, Job.recipe)
                .where(Job.state.in_(["queued", *sorted(ACTIVE_STATES)]))
                .order_by(Job.priority.desc(), Job.created_at, Job.id)
            ).all()
            workspaces = {r.workspace_id for r in rows}
            limits = {
                w.id: Limits(w.max_cpus, w.max_gpus, w.max_concurrent_jobs)
                for w in s.scalars(select(Workspace).where(Workspace.id.in_(workspaces)))
            }
            held = budget_enforce.held_reasons(s, workspaces)
            endpoints = endpoint_apps(s) if self.replicas is not None else {}
        jobs = [
            JobLoad(
                job_id=r.id,
                workspace_id=r.workspace_id,
                resources=Resources.model_validate(r.resources),
                workers=r.workers,
                active=r.state in ACTIVE_STATES,
                recipe=r.recipe,
            )
            for r in rows
        ]
        bundles = node_demand.replicas_demand(self._replicas(endpoints))
        bundles += node_demand.jobs_demand(jobs, limits, held)
        nodes = self.nodes() if self.nodes is not None else None
        return node_demand.request(bundles, nodes or ())

    def _replicas(
        self, endpoints: Mapping[str, tuple[int, object]]
    ) -> list[tuple[dict[str, float], int]]:
        if self.replicas is None:
            return []
        out = []
        for name, st in self.replicas().items():
            known = endpoints.get(name)
            if known is None or st.endpoint_id not in (None, known[0]):
                continue  # not one of this control plane's endpoints
            config = EndpointConfig.model_validate(known[1])
            out.append((replica_demand(config.resources), st.running + st.starting))
        return out

    def tick(self) -> None:
        bundles = self.wanted()
        stale = time.monotonic() - self._sent_at > RESEND_S
        if bundles == self.sent and not stale:
            return
        if not self.loop.current():
            return  # deposed since the tick began: the new leader asks
        self.request(bundles)
        if bundles != self.sent:
            total = node_demand.summary(bundles)
            log.info("asked Ray's autoscaler for %d bundle(s): %s", len(bundles), total)
        self.sent, self._sent_at = bundles, time.monotonic()
