"""Prometheus gauges of the scraping workspace's budget: spend, limit, the share used and the
state, so an alert can fire at the 80% warning as well as on the budget's own event."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gureum.schemas.budgets import BudgetOut

STATES = ("ok", "warning", "exceeded")


class BudgetCollector(Collector):
    def __init__(self, budget: BudgetOut | None) -> None:
        self.budget = budget

    def collect(self) -> Iterator[Metric]:
        b = self.budget
        if b is None or (b.monthly is None and b.per_job is None):
            return
        labels = ["workspace", "currency"]
        key = [b.workspace, b.currency]
        spend = GaugeMetricFamily(
            "gureum_budget_spend", "Compute spend this month (finished and running).", labels=labels
        )
        spend.add_metric(key, b.spend)
        reserved = GaugeMetricFamily(
            "gureum_budget_reserved",
            "What admitted, unfinished jobs may still cost at most.",
            labels=labels,
        )
        reserved.add_metric(key, b.reserved)
        yield from (spend, reserved)
        if b.monthly is not None:
            limit = GaugeMetricFamily(
                "gureum_budget_monthly_limit", "The monthly compute budget.", labels=labels
            )
            limit.add_metric(key, b.monthly)
            ratio = GaugeMetricFamily(
                "gureum_budget_used_ratio",
                "Spend over the monthly budget: 0.8 warns, 1 stops new work.",
                labels=["workspace"],
            )
            ratio.add_metric([b.workspace], b.spend / b.monthly if b.monthly else 1.0)
            yield from (limit, ratio)
        state = GaugeMetricFamily(
            "gureum_budget_state",
            "1 for the budget's state (ok, warning at 80%, exceeded at 100%), else 0.",
            labels=["workspace", "state"],
        )
        for name in STATES:
            state.add_metric([b.workspace, name], 1.0 if b.state == name else 0.0)
        yield state
