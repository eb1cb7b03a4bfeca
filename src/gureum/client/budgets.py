"""SDK for budgets: a workspace's monthly compute budget and per-job limit."""

from __future__ import annotations

from gureum.client.base import Transport, segment
from gureum.schemas.budgets import BudgetEventOut, BudgetOut


class BudgetsAPI:
    def __init__(self, t: Transport) -> None:
        self._t = t

    def get(self, workspace: str) -> BudgetOut:
        """Limits, this month's spend and reservations, percent and state (members)."""
        data = self._t.json("GET", f"/v1/workspaces/{segment(workspace)}/budget")
        return BudgetOut.model_validate(data)

    def set(
        self, workspace: str, monthly: float | None = None, per_job: float | None = None
    ) -> BudgetOut:
        """Replace both limits (owners, admins, site admins); None is no limit."""
        body = {"monthly": monthly, "per_job": per_job}  # the server validates (422)
        data = self._t.json("PUT", f"/v1/workspaces/{segment(workspace)}/budget", json=body)
        return BudgetOut.model_validate(data)

    def events(self, workspace: str) -> list[BudgetEventOut]:
        """Changes, warnings, stops and resumes of the budget, newest first."""
        data = self._t.json("GET", f"/v1/workspaces/{segment(workspace)}/budget/events")
        return [BudgetEventOut.model_validate(e) for e in data]
