"""When a canary must go: compared with the primary on error rate and p95 latency, and only
once it has served enough requests to judge."""

from __future__ import annotations

from gureum.schemas.endpoints import CanaryLimits
from gureum.server.services.endpoint_stats import percentile, verdict

LIMITS = CanaryLimits(min_requests=20, max_error_rate_increase=0.05, max_latency_ratio=2.0)


def served(n: int, latency_ms: float = 10.0, errors: int = 0) -> tuple[list[float], int]:
    return [latency_ms] * n, errors


def test_no_verdict_without_canary_traffic_or_with_too_few_requests() -> None:
    assert verdict(None, served(100), LIMITS) is None
    # 19 requests, all failed and slow: still too few to judge.
    assert verdict(served(19, 500.0, errors=19), served(100), LIMITS) is None


def test_an_error_rate_over_the_primarys_plus_the_limit_rolls_back() -> None:
    why = verdict(served(20, errors=2), served(100, errors=1), LIMITS)
    assert why is not None
    assert why.startswith("error rate 10.0% over 20 requests vs 1.0% for the primary")
    assert "(limit +5.0%)" in why


def test_an_error_rate_within_the_limit_is_tolerated() -> None:
    # 6 % against the primary's 2 %: +4 points, within +5.
    assert verdict(served(50, errors=3), served(100, errors=2), LIMITS) is None
    # A primary that fails as often as the canary: the canary is not the problem.
    assert verdict(served(20, errors=10), served(20, errors=10), LIMITS) is None


def test_errors_count_against_a_primary_without_traffic() -> None:
    why = verdict(served(20, errors=2), None, LIMITS)
    assert why is not None and "vs 0.0% for the primary" in why


def test_latency_breach_with_enough_primary_requests() -> None:
    why = verdict(served(20, 25.0), served(20, 10.0), LIMITS)
    assert why == "p95 latency 25.0 ms vs 10.0 ms for the primary (limit 2x)"


def test_latency_within_the_ratio_is_tolerated() -> None:
    assert verdict(served(20, 19.9), served(20, 10.0), LIMITS) is None


def test_no_latency_verdict_while_the_primary_has_too_few_requests() -> None:
    assert verdict(served(20, 100.0), served(19, 10.0), LIMITS) is None
    assert verdict(served(20, 100.0), None, LIMITS) is None


def test_p95_decides_not_a_few_slow_outliers() -> None:
    # One slow request in 40 is above p95; the canary stays.
    canary = ([10.0] * 39 + [900.0], 0)
    assert verdict(canary, served(40, 10.0), LIMITS) is None
    # Three in 40 are not.
    canary = ([10.0] * 37 + [900.0] * 3, 0)
    assert verdict(canary, served(40, 10.0), LIMITS) is not None


def test_limits_are_configurable() -> None:
    loose = CanaryLimits(min_requests=5, max_error_rate_increase=0.5, max_latency_ratio=10.0)
    assert verdict(served(5, 50.0, errors=2), served(5, 10.0), loose) is None
    strict = CanaryLimits(min_requests=5, max_error_rate_increase=0.0, max_latency_ratio=1.0)
    assert verdict(served(5, errors=1), served(5), strict) is not None
    assert verdict(served(5, 10.5), served(5, 10.0), strict) is not None


def test_percentile() -> None:
    assert percentile([], 0.95) is None
    assert percentile([5.0], 0.5) == 5.0
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.5) == 51.0  # nearest rank over 0..99
    assert percentile(values, 0.95) == 95.0
    assert percentile(values, 1.0) == 100.0
