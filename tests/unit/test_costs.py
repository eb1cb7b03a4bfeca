"""Pure pieces of metering and cost: parsing limits and periods, percentiles, pricing."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest

from gureum.config import Settings
from gureum.schemas.consumers import (
    Invoice,
    InvoiceLine,
    InvoiceList,
    parse_quota,
    parse_rate,
    split_consumer_key,
)
from gureum.server.auth import split_token
from gureum.server.db.tables_serving import ResourceUsage
from gureum.server.errors import Unprocessable
from gureum.server.services.consumers import month_start
from gureum.server.services.costs import _overlap, gpu_hour_price, prices_from
from gureum.server.services.invoices import to_csv
from gureum.server.services.usage import parse_group_by, percentile, period_bounds


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("10", 10.0),
        ("10/s", 10.0),
        ("2.5/sec", 2.5),
        ("120/min", 2.0),
        ("120 / minute", 2.0),
        ("7200/h", 2.0),
        ("86400/day", 1.0),
        ("0.5", 0.5),
    ],
)
def test_rate_limits_parse_to_requests_per_second(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["", "ten", "10/week", "-1/s", "10/s/s", "0", "0/min", "1e3"])
def test_bad_rate_limits_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        parse_rate(text)


def test_quotas_parse_per_month() -> None:
    assert parse_quota("1000/month") == 1000
    assert parse_quota("1000") == 1000
    assert parse_quota(" 5 / mo ") == 5
    for bad in ("1000/day", "lots", "-3", "1.5"):
        with pytest.raises(ValueError, match="quota"):
            parse_quota(bad)


def test_consumer_keys_and_api_keys_never_parse_as_each_other() -> None:
    assert split_consumer_key("gck_abc123_s3cr_et") == ("abc123", "s3cr_et")
    assert split_token("gck_abc123_s3cr_et") is None
    assert split_consumer_key("gk_abc123_secret") is None
    for bad in ("gck__secret", "gck_abc_", "gck_abc", "bearer"):
        assert split_consumer_key(bad) is None


def test_periods_are_calendar_months() -> None:
    start, end = period_bounds("2024-02")
    assert (start, end) == (datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC))
    assert period_bounds("2024-12")[1] == datetime(2025, 1, 1, tzinfo=UTC)
    for bad in ("2024-13", "2024-00", "2024-2", "24-02", "2024-02-01", "", "next"):
        with pytest.raises(Unprocessable, match="YYYY-MM"):
            period_bounds(bad)


def test_month_start_is_utc() -> None:
    late = datetime(2025, 3, 31, 23, 30, tzinfo=UTC)
    assert month_start(late) == datetime(2025, 3, 1, tzinfo=UTC)
    # 00:30 on April 1st in UTC+2 is still March in UTC.
    from_plus_two = datetime(2025, 4, 1, 0, 30, tzinfo=UTC) - timedelta(hours=2)
    assert month_start(from_plus_two) == datetime(2025, 3, 1, tzinfo=UTC)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 50) == 7.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([], 50) == 0.0


def test_group_by_keeps_a_fixed_order_and_refuses_unknown_keys() -> None:
    assert parse_group_by(None) == ["consumer", "endpoint", "day"]
    assert parse_group_by("day, consumer") == ["consumer", "day"]
    for bad in ("model", "consumer,,x", ","):
        with pytest.raises(Unprocessable):
            parse_group_by(bad)


def test_prices_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUREUM_PRICE_CPU_HOUR", "0.1")
    monkeypatch.setenv("GUREUM_PRICE_GPU_HOUR_BY_TYPE", '{"A100": 3.0, "H100": 5.0}')
    prices = prices_from(Settings())
    assert (prices.cpu_hour, prices.gpu_hour, prices.storage_gb_month) == (0.1, 2.5, 0.023)
    assert gpu_hour_price(prices, "H100") == 5.0
    assert gpu_hour_price(prices, "a100") == 3.0  # any case
    assert gpu_hour_price(prices, "T4") == 2.5  # unknown type: the default GPU-hour
    assert gpu_hour_price(prices, None) == 2.5


def test_usage_rows_are_split_by_their_overlap_with_a_period() -> None:
    t0 = datetime(2025, 1, 31, 22, tzinfo=UTC)
    row = ResourceUsage(start=t0, end=t0 + timedelta(hours=4))
    jan = (datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC))
    feb = (datetime(2025, 2, 1, tzinfo=UTC), datetime(2025, 3, 1, tzinfo=UTC))
    assert _overlap(row, *jan) == pytest.approx(0.5)
    assert _overlap(row, *feb) == pytest.approx(0.5)
    assert _overlap(row, datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC)) == 0
    instant = ResourceUsage(start=t0, end=t0)
    assert (_overlap(instant, *jan), _overlap(instant, *feb)) == (1.0, 0.0)


def test_invoice_csv_has_one_row_per_line_and_one_for_an_empty_invoice() -> None:
    line = InvoiceLine(
        endpoint="gen",
        requests=3,
        errors=1,
        units=6.0,
        unit="image",
        price_per_request=0.1,
        price_per_unit=0.0,
        amount=0.3,
    )
    invoices = InvoiceList(
        period="2025-01",
        invoices=[
            Invoice(
                consumer="acme",
                period="2025-01",
                plan="gold",
                currency="USD",
                lines=[line, line.model_copy(update={"endpoint": "chat", "amount": 0.2})],
                requests=6,
                total=0.5,
            ),
            Invoice(
                consumer="idle",
                period="2025-01",
                plan=None,
                currency="EUR",
                lines=[],
                requests=0,
                total=0.0,
            ),
        ],
    )
    rows = list(csv.DictReader(io.StringIO(to_csv(invoices))))
    assert [(r["consumer"], r["endpoint"], r["amount"]) for r in rows] == [
        ("acme", "gen", "0.3"),
        ("acme", "chat", "0.2"),
        ("idle", "", "0"),
    ]
    assert [r["invoice_total"] for r in rows] == ["0.5", "0.5", "0.0"]
    assert rows[2]["currency"] == "EUR" and rows[2]["plan"] == ""
