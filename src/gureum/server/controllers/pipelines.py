"""The pipeline controller: starts the runs that triggers ask for (a schedule, enough new
feedback, drift) and moves every active run along its steps (``services.pipeline_runner``).

Everything it knows is in the database, so a control plane restarted mid-run picks each run
up where its record says it is.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from sqlalchemy import func, select

from gureum.server.controllers.loop import ControlLoop, Looped, each
from gureum.server.db.base import utcnow
from gureum.server.db.tables_capture import Feedback
from gureum.server.db.tables_pipelines import Pipeline, PipelineRun
from gureum.server.db.tables_serving import Endpoint
from gureum.server.errors import ApiError
from gureum.server.services import drift
from gureum.server.services.pipeline_runner import advance, record_error
from gureum.server.services.pipeline_steps import Env
from gureum.server.services.pipelines import ACTIVE, RunInProgress, next_schedule, start

log = logging.getLogger(__name__)
TICK_S = 2.0
# Drift is computed from the captured calls of a window: not on every tick.
DRIFT_EVERY_S = 60.0


class PipelineController(Looped):
    def __init__(self, env: Env, tick_s: float = TICK_S) -> None:
        self.env = env
        self.loop = ControlLoop("gureum-pipelines", self.tick, tick_s)
        self._drift_checked: dict[int, float] = {}

    def tick(self) -> None:
        with self.env.db.read() as s:
            pipelines = list(s.scalars(select(Pipeline.id)))
        each(pipelines, self._trigger, "pipeline trigger")
        with self.env.db.read() as s:
            runs = list(
                s.scalars(
                    select(PipelineRun.id)
                    .where(PipelineRun.state.in_(ACTIVE))
                    .order_by(PipelineRun.id)
                )
            )
        each(runs, lambda run: advance(self.env, run), "pipeline run", self._failed)

    def _failed(self, run_id: int, exc: Exception) -> None:
        record_error(self.env, run_id, exc)

    # -- triggers ---------------------------------------------------------------------------------

    def _trigger(self, pipeline_id: int) -> None:
        why = self._why(pipeline_id)
        if why is None:
            return
        with self.env.db.write() as s:
            p = s.get(Pipeline, pipeline_id, with_for_update=True)
            if p is None:
                return
            if why.startswith("on schedule"):
                p.next_run_at = next_schedule(p.config, utcnow())
            try:
                run = start(s, p, why, None)
            except RunInProgress:
                log.info("pipeline %s: %s, but a run is in progress", p.name, why)
                return
            log.info("pipeline %s: run %d started (%s)", p.name, run.number, why)

    def _why(self, pipeline_id: int) -> str | None:
        """What asks for a run of the pipeline now, if anything."""
        now = utcnow()
        with self.env.db.read() as s:
            p = s.get(Pipeline, pipeline_id)
            if p is None:
                return None
            config = dict(p.config)
            if not config.get("enabled", True):  # paused: runs start by hand only
                return None
            if p.next_run_at is not None and p.next_run_at <= now:
                return f"on schedule {config.get('schedule')}"
            cooled = p.last_run_at is None or now - p.last_run_at >= timedelta(
                minutes=float(config.get("cooldown_minutes", 60.0))
            )
            if not cooled:
                return None
            busy = s.scalar(
                select(PipelineRun.id).where(
                    PipelineRun.pipeline_id == p.id, PipelineRun.state.in_(ACTIVE)
                )
            )
            if busy is not None:
                return None
            wanted = config.get("after_labels")
            if wanted:
                count = s.scalar(
                    select(func.count(Feedback.id))
                    .join(Endpoint, Endpoint.id == Feedback.endpoint_id)
                    .where(Endpoint.workspace_id == p.workspace_id)
                    .where(Endpoint.name == p.endpoint_name, Feedback.time > p.labels_since)
                )
                if (count or 0) >= int(wanted):
                    return f"after {count} new feedback items (at least {wanted})"
            threshold, endpoint = config.get("on_drift"), p.endpoint_name
        if (
            threshold
            and time.monotonic() - self._drift_checked.get(pipeline_id, 0) >= DRIFT_EVERY_S
        ):
            self._drift_checked[pipeline_id] = time.monotonic()
            try:
                score = drift.drift_score(self.env.db, self.env.store, endpoint)
            except ApiError as e:
                log.info("pipeline %d: no drift score for %s: %s", pipeline_id, endpoint, e)
                return None
            if score is not None and score >= float(threshold):
                return f"on drift: score {score:.3f} reached {float(threshold):g}"
        return None
