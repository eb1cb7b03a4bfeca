"""The pool controller: one pool for serving and training, serving first.

Every tick it looks for endpoint replicas that Ray Serve has asked for but Ray has not placed
(no node has room) for longer than ``preempt_after_s`` (the time a node the autoscaler adds
would take to come). When the cluster's free resources, counting what jobs already asked to
stop will free, cannot hold one such replica, it preempts the lowest-priority running
training jobs that are preemptible and past ``preempt_min_run_s`` (``services.preemption``),
in one fenced write: the job controller stops them and queues them again with their
checkpoints, and Ray then places the replica in the room they left. Ray decides placement; this
decides who yields.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from gureum.config import Settings
from gureum.schemas.endpoints import EndpointConfig
from gureum.server.controllers.loop import ControlLoop, Looped
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables_serving import Endpoint
from gureum.server.services import preemption
from gureum.serving.backend import AppState

log = logging.getLogger(__name__)
TICK_S = 1.0
# After room is made for a replica, how long (beyond the victims' checkpoint grace) Ray and the
# endpoint controller's view get to show it placed before that replica may preempt again.
SETTLE_S = 15.0


class PoolController(Looped):
    def __init__(
        self,
        db: Database,
        states: Callable[[], Mapping[str, AppState]],
        available: Callable[[], Mapping[str, float]],
        settings: Settings,
        wake: Callable[[], None],
        tick_s: float = TICK_S,
    ) -> None:
        """``states``: Ray Serve's applications as the endpoint controller last read them;
        ``available``: the cluster's free resources; ``wake``: the job controller's."""
        self.db, self.states, self.available = db, states, available
        self.settings, self.wake_jobs = settings, wake
        self.preempted = 0  # jobs this server's pool preempted (for logs and tests)
        # Per application, when room was made for each of its waiting replicas: the view of
        # Ray Serve lags a tick, and a replica already placed must not preempt twice.
        self._granted: dict[str, list[float]] = {}
        self.loop = ControlLoop("gureum-pool", self.tick, tick_s)

    def starving(self, now_s: float | None = None) -> dict[str, AppState]:
        """Applications with a replica waiting for room longer than ``preempt_after_s``."""
        now_s = time.time() if now_s is None else now_s
        after = self.settings.preempt_after_s
        return {
            name: st
            for name, st in self.states().items()
            if st.starting > 0
            and st.starting_since is not None
            and now_s - st.starting_since >= after
        }

    def tick(self) -> None:
        now_s = time.time()
        starving = self.starving(now_s)
        window = self.settings.preempt_grace_s + SETTLE_S
        self._granted = {
            name: recent
            for name, times in self._granted.items()
            if name in starving and (recent := [t for t in times if now_s - t < window])
        }
        if not starving:
            return
        with self.db.read() as s:
            endpoints = preemption.endpoint_apps(s)
            candidates, stopping = preemption.running_candidates(s)
        free = preemption.plus(self.available(), stopping)
        now = utcnow()
        oldest_first = sorted(starving.items(), key=lambda kv: kv[1].starting_since or 0.0)
        for name, st in oldest_first:
            known = endpoints.get(name)
            if known is None or st.endpoint_id not in (None, known[0]):
                continue  # not one of this control plane's endpoints
            ep_id, config = known
            need = preemption.replica_demand(EndpointConfig.model_validate(config).resources)
            granted = self._granted.setdefault(name, [])
            for _ in range(max(0, st.starting - len(granted))):
                victims = preemption.choose_victims(
                    need, free, candidates, now, self.settings.preempt_min_run_s
                )
                if victims is None:
                    break  # no room to be made for it: nothing is stopped in vain
                for v in victims:
                    free = preemption.plus(free, v.need)
                    candidates.remove(v)
                free = preemption.plus(free, {k: -v for k, v in need.items()})
                if victims:
                    self._preempt(ep_id, victims, need)
                    granted.append(now_s)

    def _preempt(
        self, ep_id: int, victims: list[preemption.Candidate], need: Mapping[str, float]
    ) -> None:
        with self.db.write() as s:  # fenced: a deposed leader preempts nothing
            ep = s.get(Endpoint, ep_id, with_for_update=True)
            if ep is None or ep.state == "deleting":
                return
            marked = preemption.preempt(s, victims, ep, need)
        if marked:
            self.preempted += len(marked)
            log.info("preempted %s for endpoint %s", ", ".join(marked), ep_id)
            self.wake_jobs()
