"""The capacity planner's arithmetic on hand-made series, the splitting of usage rows across
hours, and the strict reading of CSV traces. No database, no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from gureum.client.planner import TraceError, parse_trace
from gureum.config import Settings
from gureum.schemas.planner import DemandSeries, PlanPrices, PriceOverrides
from gureum.server.services.plan_replay import _Row, months_back, split_hourly
from gureum.server.services.planner import NoDemand, compare, resolve_prices

T0 = datetime(2026, 1, 1, tzinfo=UTC)
YEAR = 8760


def prices(**changes: float) -> PlanPrices:
    """Round numbers: a CPU-hour 1.0 on demand, a CPU bought for a year of that, no power, no
    lead time, no GPUs priced."""
    base = PlanPrices(
        currency="USD",
        on_demand_cpu_hour=1.0,
        on_demand_gpu_hour=10.0,
        spot_cpu_hour=0.5,
        spot_gpu_hour=5.0,
        spot_share=1.0,
        purchase_per_cpu=8760.0,
        purchase_per_gpu=87600.0,
        amortisation_years=1.0,
        power_per_cpu_hour=0.0,
        power_per_gpu_hour=0.0,
        lead_time_months=0.0,
    )
    return base.model_copy(update=changes)


def series(cpus: list[float], gpus: list[float] | None = None, **kw: list[float]) -> DemandSeries:
    return DemandSeries(start=T0, cpus=cpus, gpus=gpus or [0.0] * len(cpus), **kw)


def test_a_steady_full_load_favours_the_fleet() -> None:
    # 8 GPUs busy every hour of a year at the default prices.
    p = resolve_prices(Settings(), PriceOverrides())
    result = compare(series([0.0] * YEAR, [8.0] * YEAR), p)
    assert (result.fleet.cpus, result.fleet.gpus) == (0, 8)
    assert result.utilisation == pytest.approx(1.0)
    assert result.cloud.total == pytest.approx(8 * YEAR * p.on_demand_gpu_hour)
    assert result.cheaper == result.cheaper_per_year == "fleet"
    assert result.break_even_utilisation is not None and result.break_even_utilisation < 1
    assert result.savings == pytest.approx(result.cloud.total - result.fleet.total)


def test_a_spiky_load_favours_the_cloud() -> None:
    # The same 8 GPUs, one hour a day.
    day = [8.0] + [0.0] * 23
    p = resolve_prices(Settings(), PriceOverrides())
    result = compare(series([0.0] * YEAR, day * 365), p)
    assert result.fleet.gpus == 8
    assert result.utilisation == pytest.approx(1 / 24, abs=1e-6)
    assert result.cheaper == result.cheaper_per_year == "cloud"
    assert result.break_even_utilisation is not None
    assert result.utilisation < result.break_even_utilisation
    assert result.savings == pytest.approx(result.fleet.total - result.cloud.total)


def test_break_even_matches_a_hand_computation() -> None:
    # Owning a CPU: 4380 / 8760 h = 0.5 an hour amortised + 0.1 power = 0.6; the cloud charges
    # 1.0 an hour for it: break-even at 60 % utilisation.
    p = prices(purchase_per_cpu=4380.0, power_per_cpu_hour=0.1)
    half = compare(series([2.0, 0.0] * 50), p)  # 2 CPUs half the time: 50 %
    assert half.fleet.cpus == 2
    assert half.break_even_utilisation == pytest.approx(0.6)
    assert half.utilisation == pytest.approx(0.5) and half.cpu_utilisation == pytest.approx(0.5)
    assert half.cloud.total == pytest.approx(100.0)  # 2 CPUs x 50 h x 1.0
    assert half.fleet.total == pytest.approx(100 * 2 * 0.6)  # 120: cloud wins below 60 %
    assert half.cheaper == "cloud"
    busy = compare(series([2.0, 2.0, 2.0, 0.0] * 25), p)  # 75 % > 60 %
    assert busy.cheaper == "fleet" and busy.fleet.total == pytest.approx(120.0)
    assert busy.cloud.total == pytest.approx(150.0) and busy.savings == pytest.approx(30.0)
    assert busy.cloud.per_year == pytest.approx(150.0 / 100 * YEAR)
    assert busy.fleet.per_year == pytest.approx(2 * 0.6 * YEAR)


def test_spot_prices_the_preemptible_part_and_moves_the_break_even() -> None:
    # Half the load is jobs on spot at half price: the cloud charges 0.75 of on-demand, so
    # owning at 0.6 an hour breaks even at 0.6 / 0.75 = 80 %.
    p = prices(purchase_per_cpu=4380.0, power_per_cpu_hour=0.1)
    result = compare(series([2.0] * 10, preemptible_cpus=[1.0] * 10), p)
    assert result.cloud.on_demand == pytest.approx(10.0) and result.cloud.spot == pytest.approx(5)
    assert result.break_even_utilisation == pytest.approx(0.8)
    # With a spot share of 0, jobs pay on-demand too.
    none = compare(series([2.0] * 10, preemptible_cpus=[1.0] * 10), prices(spot_share=0.0))
    assert (none.cloud.on_demand, none.cloud.spot) == (pytest.approx(20.0), 0.0)


def test_the_lead_time_is_paid_on_the_cloud() -> None:
    # One month of lead time is 730 hours of a 1000-hour replay: those hours pay the cloud,
    # the other 270 pay the fleet.
    p = prices(lead_time_months=1.0, purchase_per_cpu=4380.0)
    result = compare(series([1.0] * 1000), p)
    assert result.fleet.usable_hours == 270
    assert result.fleet.usable_from == T0 + timedelta(hours=730)
    assert result.fleet.cloud_during_lead_time == pytest.approx(730.0)
    assert result.fleet.amortisation == pytest.approx(270 * 0.5)
    assert result.fleet.total == pytest.approx(730.0 + 135.0)
    # A lead time longer than the replay: the fleet never serves; the cloud is cheaper.
    late = compare(series([1.0] * 100), p)
    assert late.fleet.usable_from is None and late.fleet.usable_hours == 0
    assert late.fleet.total == pytest.approx(late.cloud.total) and late.cheaper == "cloud"
    # Once it is in service, though, owning at full load costs half the cloud.
    assert late.cheaper_per_year == "fleet"
    assert late.fleet.per_year == pytest.approx(0.5 * YEAR)


def test_the_fleet_covers_a_fractional_peak_with_whole_units() -> None:
    result = compare(series([0.25, 1.5, 0.0], [0.0, 0.5, 0.0]), prices())
    assert (result.fleet.cpus, result.fleet.gpus) == (2, 1)
    assert result.peak_cpus == 1.5 and result.mean_gpus == pytest.approx(0.5 / 3, abs=1e-6)


def test_a_series_without_demand_has_no_plan() -> None:
    with pytest.raises(NoDemand):
        compare(series([0.0, 0.0]), prices())


def test_overrides_win_over_the_settings() -> None:
    s = Settings(price_cpu_hour=0.07, plan_lead_time_months=2.0)
    p = resolve_prices(s, PriceOverrides(spot_cpu_hour=0.01, lead_time_months=0))
    assert (p.on_demand_cpu_hour, p.spot_cpu_hour, p.lead_time_months) == (0.07, 0.01, 0.0)
    assert p.on_demand_gpu_hour == s.price_gpu_hour and p.currency == "USD"


# -- usage rows split across hours ----------------------------------------------------------


def test_a_usage_row_is_split_across_the_hours_it_spans() -> None:
    # 2 CPUs from 00:30 to 02:15 (job) and 1 GPU for the whole of 01:00-02:00 (endpoint).
    start, end = T0, T0 + timedelta(hours=4)
    job = _Row("job", T0 + timedelta(minutes=30), T0 + timedelta(hours=2, minutes=15), 0, 0)
    seconds = (job.end - job.start).total_seconds()
    job = job._replace(cpu_seconds=2 * seconds)
    endpoint = _Row("endpoint", T0 + timedelta(hours=1), T0 + timedelta(hours=2), 0, 3600.0)
    s = split_hourly([job, endpoint], start, end)
    assert s.start == T0 and s.hours == 4
    assert s.cpus == pytest.approx([1.0, 2.0, 0.5, 0.0])
    assert s.gpus == pytest.approx([0.0, 1.0, 0.0, 0.0])
    assert s.preemptible_cpus == pytest.approx(s.cpus)
    assert s.preemptible_gpus == pytest.approx([0.0] * 4)
    # The window cuts a row: only its share inside counts.
    cut = split_hourly([job], T0 + timedelta(hours=1), T0 + timedelta(hours=2))
    assert cut.cpus == pytest.approx([2.0])


def test_the_replay_window_counts_whole_months_back() -> None:
    assert months_back("2026-11", 12) == (
        datetime(2025, 12, 1, tzinfo=UTC),
        datetime(2026, 12, 1, tzinfo=UTC),
    )
    assert months_back("2026-01", 1)[0] == datetime(2026, 1, 1, tzinfo=UTC)
    assert months_back("2026-01", 2)[0] == datetime(2025, 12, 1, tzinfo=UTC)


# -- CSV traces ----------------------------------------------------------------------------


def test_a_trace_is_read_as_a_dense_hourly_series() -> None:
    text = (
        "hour,cpus,gpus\n"
        "2026-01-01T00:00:00Z,4,0\n"
        "2026-01-01T01:00:00+00:00,2.5,1\n"
        "2026-01-01T04:00,1,0\n"  # no offset: UTC; 02:00 and 03:00 left out: nothing used
    )
    s = parse_trace(text)
    assert s.start == T0 and s.cpus == [4.0, 2.5, 0.0, 0.0, 1.0]
    assert s.gpus == [0.0, 1.0, 0.0, 0.0, 0.0] and s.preemptible_cpus is None
    pre = parse_trace(
        "hour,cpus,gpus,preemptible_cpus,preemptible_gpus\n2026-01-01T00:00Z,4,2,3,0\n"
    )
    assert (pre.preemptible_cpus, pre.preemptible_gpus) == ([3.0], [0.0])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the first line must be the header"),
        ("time,cpus,gpus\n2026-01-01T00:00Z,1,0\n", "the first line must be the header"),
        ("hour,cpus,gpus\n", "no hours after the header"),
        ("hour,cpus,gpus\nyesterday,1,0\n", "line 2: hour 'yesterday' is not an ISO 8601"),
        ("hour,cpus,gpus\n2026-01-01T00:30Z,1,0\n", "line 2: hour '2026-01-01T00:30Z' is not on"),
        ("hour,cpus,gpus\n2026-01-01T00:00Z,many,0\n", "line 2: cpus 'many' is not a number"),
        ("hour,cpus,gpus\n2026-01-01T00:00Z,1,-1\n", "line 2: gpus '-1' must be a number"),
        ("hour,cpus,gpus\n2026-01-01T00:00Z,nan,0\n", "cpus .nan. must be a number from 0 to 1e"),
        ("hour,cpus,gpus\n2026-01-01T00:00Z,2e6,0\n", "must be a number from 0 to"),
        ("hour,cpus,gpus\n2026-01-01T00:00Z,1\n", "line 2: 2 fields, the header has 3"),
        (
            "hour,cpus,gpus\n2026-01-01T01:00Z,1,0\n2026-01-01T00:00Z,1,0\n",
            "line 3: hour 2026-01-01T00:00Z is not after",
        ),
        (
            "hour,cpus,gpus\n2026-01-01T01:00Z,1,0\n2026-01-01T01:00Z,1,0\n",
            "is not after the line before",
        ),
        (
            "hour,cpus,gpus,preemptible_cpus,preemptible_gpus\n2026-01-01T00:00Z,1,0,2,0\n",
            "a preemptible column exceeds its total",
        ),
        ("hour,cpus,gpus\n2026-01-01T00:00Z,0,0\n", "no CPU or GPU is used"),
        ('hour,cpus,gpus\n2026-01-01T00:00Z,"1,0\n', "line 2: not CSV"),
        (
            "hour,cpus,gpus\n2020-01-01T00:00Z,1,0\n2026-01-01T00:00Z,1,0\n",
            "spans more than",
        ),
    ],
)
def test_a_malformed_trace_is_refused_with_its_line(text: str, message: str) -> None:
    with pytest.raises(TraceError, match=message.replace("(", r"\(")) as e:
        parse_trace(text, "t.csv")
    assert e.value.code == "invalid_trace" and e.value.message.startswith("t.csv")


def test_a_series_must_be_hourly_and_aligned() -> None:
    with pytest.raises(ValidationError, match="on the hour"):
        DemandSeries(start=T0 + timedelta(minutes=5), cpus=[1.0], gpus=[0.0])
    with pytest.raises(ValidationError, match="gpus has 1 hours, cpus has 2"):
        DemandSeries(start=T0, cpus=[1.0, 1.0], gpus=[0.0])
    with pytest.raises(ValidationError, match="no hours"):
        DemandSeries(start=T0, cpus=[], gpus=[])
