"""The budget controller: every tick, each workspace with a budget is re-evaluated against its
spend (``services.budget_enforce.reconcile``): a warning at 80% once a month; at 100% running
jobs are asked to stop (queued again with their checkpoints) and endpoints are held at their
minimum replicas; below it again, all of it is lifted. The job and endpoint controllers carry
the changes out; they are woken when there is something to do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select

from gureum.schemas.consumers import Prices
from gureum.server.controllers.loop import ControlLoop, Looped, each
from gureum.server.db.session import Database
from gureum.server.db.tables_budgets import WorkspaceBudget
from gureum.server.services.budget_enforce import reconcile

log = logging.getLogger(__name__)
# Spend grows by the second while work runs; a few seconds late is a few seconds' cost.
TICK_S = 5.0


class BudgetController(Looped):
    def __init__(
        self,
        db: Database,
        prices: Callable[[], Prices],
        wake: Callable[[], None],
        tick_s: float = TICK_S,
    ) -> None:
        self.db, self.prices, self.wake_others = db, prices, wake
        self.loop = ControlLoop("gureum-budgets", self.tick, tick_s)

    def tick(self) -> None:
        with self.db.read() as s:
            workspaces = list(s.scalars(select(WorkspaceBudget.workspace_id)))
        changed: list[int] = []
        prices = self.prices()

        def one(workspace_id: int) -> None:
            with self.db.write() as s:
                if reconcile(s, workspace_id, prices):
                    changed.append(workspace_id)

        each(workspaces, one, "budget of workspace")
        if changed:
            log.info("budgets changed the work of workspaces %s", changed)
            self.wake_others()
