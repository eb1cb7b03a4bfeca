"""Budget arithmetic: states, reservations as time limits, job prices, held autoscaling."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gureum.schemas.budgets import BudgetSet
from gureum.schemas.consumers import Prices
from gureum.schemas.endpoints import Autoscaling
from gureum.schemas.jobs import Resources
from gureum.server.services.budget_enforce import capped
from gureum.server.services.budget_ledger import Reservation, classify, remaining, reservation
from gureum.server.services.costs import hourly

PRICES = Prices(
    currency="USD",
    cpu_hour=0.05,
    gpu_hour=2.5,
    gpu_hour_by_type={"A100": 3.0},
    memory_gb_hour=0.01,
    storage_gb_month=0.023,
)


@pytest.mark.parametrize(
    ("spend", "monthly", "state"),
    [
        (0.0, None, "ok"),
        (1e9, None, "ok"),
        (79.99, 100.0, "ok"),
        (80.0, 100.0, "warning"),
        (99.99, 100.0, "warning"),
        (100.0, 100.0, "exceeded"),
        (150.0, 100.0, "exceeded"),
        (0.0, 0.0, "exceeded"),  # a budget of 0 lets nothing run
    ],
)
def test_the_state_follows_spend_over_the_monthly_budget(
    spend: float, monthly: float | None, state: str
) -> None:
    assert classify(spend, monthly) == state


def test_remaining_never_goes_below_zero() -> None:
    assert remaining(None, 5.0) is None
    assert remaining(10.0, 4.0) == 6.0
    assert remaining(10.0, 12.0) == 0.0


def test_a_reservation_is_the_per_job_limit_as_a_time_limit() -> None:
    # 5 at 2 an hour buys 2.5 hours.
    assert reservation(50.0, 5.0, 0.0, 2.0, None) == Reservation(5.0, 9000.0)
    # No monthly budget: the per-job limit alone.
    assert reservation(None, 5.0, 1e6, 2.0, None) == Reservation(5.0, 9000.0)


def test_a_reservation_takes_only_what_the_month_has_left() -> None:
    r = reservation(10.0, 5.0, 8.5, 1.0, None)
    assert r is not None and r.amount == pytest.approx(1.5)
    assert r.seconds == pytest.approx(1.5 * 3600)
    # No per-job limit: everything left.
    assert reservation(10.0, None, 4.0, 3.0, None) == Reservation(6.0, 7200.0)


def test_a_committed_month_refuses() -> None:
    assert reservation(10.0, 5.0, 10.0, 1.0, None) is None
    assert reservation(10.0, 5.0, 12.0, 1.0, None) is None
    assert reservation(0.0, None, 0.0, 1.0, None) is None


def test_a_shorter_limit_of_the_jobs_own_reserves_less() -> None:
    assert reservation(50.0, 5.0, 0.0, 3600.0, 2.0) == Reservation(2.0, 2.0)
    assert reservation(50.0, 5.0, 0.0, 3600.0, 60.0) == Reservation(5.0, 5.0)


def test_a_free_job_reserves_nothing_and_keeps_its_own_limit() -> None:
    assert reservation(10.0, 5.0, 0.0, 0.0, None) == Reservation(0.0, None)
    assert reservation(10.0, 5.0, 0.0, 0.0, 30.0) == Reservation(0.0, 30.0)


def test_a_reservation_needs_a_limit() -> None:
    with pytest.raises(ValueError, match="needs a monthly or a per-job limit"):
        reservation(None, None, 0.0, 1.0, None)


def test_a_jobs_hourly_price_counts_every_worker_and_resource() -> None:
    r = Resources(cpus=2, gpus=1, accelerator_type="a100", memory_gb=4)
    # 2 x 0.05 + 1 x 3.0 (the A100's price, any case) + 4 x 0.01, for 3 workers
    assert hourly(r, 3, PRICES) == pytest.approx(3 * (0.1 + 3.0 + 0.04))
    assert hourly(Resources(cpus=0), 1, PRICES) == pytest.approx(0.5 * 0.05)  # at least 0.5


def test_a_held_endpoint_keeps_its_minimum() -> None:
    assert capped(Autoscaling(min_replicas=2, max_replicas=8)).max_replicas == 2
    zero = capped(Autoscaling(min_replicas=0, max_replicas=8))
    assert (zero.min_replicas, zero.max_replicas) == (0, 1)  # Ray Serve needs at least one
    same = Autoscaling(min_replicas=1, max_replicas=1)
    assert capped(same) == same


@pytest.mark.parametrize(
    "body",
    [{"monthly": -1}, {"per_job": 0}, {"monthly": float("nan")}, {"monthly": float("inf")}],
)
def test_budget_amounts_are_validated(body: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        BudgetSet.model_validate(body)
