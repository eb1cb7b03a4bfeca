"""The replica's key check, rate limit and monthly quota, in memory, with a clock we move."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from gureum.schemas.metering import AccessKey, AccessSnapshot
from gureum.serving import access
from gureum.serving.access import AccessTable, Caller, Denied, next_month, split_bearer

CONSUMER_ID = 7


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Only the access module's notion of time moves: buckets refill when we say so."""
    c = Clock()
    monkeypatch.setattr(access, "time", SimpleNamespace(monotonic=c))
    return c


def consumer(
    key_id: str = "k1",
    secret: str = "s3cret",
    *,
    rate_limit: float | None = None,
    monthly_quota: int | None = None,
    used: int = 0,
    consumer_id: int = CONSUMER_ID,
) -> AccessKey:
    return AccessKey(
        key_id=key_id,
        secret_hash=hashlib.sha256(secret.encode()).hexdigest(),
        kind="consumer",
        consumer_id=consumer_id,
        consumer_name="acme",
        rate_limit=rate_limit,
        monthly_quota=monthly_quota,
        used_this_month=used,
    )


def member(key_id: str = "m1", secret: str = "team") -> AccessKey:
    return AccessKey(
        key_id=key_id,
        secret_hash=hashlib.sha256(secret.encode()).hexdigest(),
        kind="member",
        consumer_id=None,
        consumer_name="member:ann",
    )


def table(*keys: AccessKey, replicas: int = 1) -> AccessTable:
    t = AccessTable()
    t.load(
        AccessSnapshot(
            endpoint="shop", keys=list(keys), replicas=replicas, generated_at=datetime.now(UTC)
        )
    )
    return t


def denied(result: Caller | Denied) -> Denied:
    assert isinstance(result, Denied), result
    return result


def test_a_valid_consumer_key_is_let_in_as_its_consumer(clock: Clock) -> None:
    t = table(consumer())
    assert t.loaded and t.knows("k1") and not t.knows("k2")
    assert t.check("Bearer gck_k1_s3cret") == Caller(CONSUMER_ID, "acme", "k1")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "gck_k1_s3cret",  # no Bearer
        "Basic gck_k1_s3cret",
        "Bearer gck_k1",  # no secret
        "Bearer xyz_k1_s3cret",  # not a key prefix
        "Bearer gck__s3cret",  # empty key id
    ],
)
def test_a_missing_or_malformed_header_is_401(clock: Clock, header: str | None) -> None:
    d = denied(table(consumer()).check(header))
    assert (d.status, d.code, d.retry_after) == (401, "unauthorized", None)
    assert "Bearer" in d.message


def test_unknown_key_and_wrong_secret_are_401_alike(clock: Clock) -> None:
    t = table(consumer())
    unknown = denied(t.check("Bearer gck_nope_s3cret"))
    wrong = denied(t.check("Bearer gck_k1_guess"))
    for d in (unknown, wrong):
        assert (d.status, d.code) == (401, "unauthorized")
    # The caller cannot tell an unknown key from a wrong secret.
    assert unknown.message == wrong.message


def test_before_any_snapshot_nobody_is_let_in(clock: Clock) -> None:
    t = AccessTable()
    assert not t.loaded
    assert denied(t.check("Bearer gck_k1_s3cret")).status == 401


def test_a_new_snapshot_replaces_the_keys(clock: Clock) -> None:
    t = table(consumer())
    t.load(AccessSnapshot(endpoint="shop", keys=[], generated_at=datetime.now(UTC)))
    assert denied(t.check("Bearer gck_k1_s3cret")).status == 401  # revoked meanwhile


def test_member_keys_have_no_limits_and_use_no_quota(clock: Clock) -> None:
    t = table(member(), consumer(rate_limit=1, monthly_quota=1))
    for _ in range(50):
        caller = t.check("Bearer gk_m1_team")
        assert caller == Caller(None, "member:ann", "m1")
        t.served(caller)
    # The members' traffic used none of the consumer's quota or rate.
    assert isinstance(t.check("Bearer gck_k1_s3cret"), Caller)


def test_rate_limit_is_429_with_retry_after_in_whole_seconds(clock: Clock) -> None:
    t = table(consumer(rate_limit=2))
    assert isinstance(t.check("Bearer gck_k1_s3cret"), Caller)
    assert isinstance(t.check("Bearer gck_k1_s3cret"), Caller)  # a burst of the rate
    d = denied(t.check("Bearer gck_k1_s3cret"))
    assert (d.status, d.code) == (429, "rate_limited")
    assert "2 requests/s" in d.message
    assert d.retry_after == 1.0  # 0.5 s to the next token, rounded up
    clock.now += 0.5
    assert isinstance(t.check("Bearer gck_k1_s3cret"), Caller)
    assert denied(t.check("Bearer gck_k1_s3cret")).status == 429


def test_each_replica_enforces_its_share_of_the_rate(clock: Clock) -> None:
    # 2 requests/s over 4 replicas: 0.5/s here, a burst of one, then 2 s to the next token.
    t = table(consumer(rate_limit=2), replicas=4)
    assert isinstance(t.check("Bearer gck_k1_s3cret"), Caller)
    d = denied(t.check("Bearer gck_k1_s3cret"))
    assert d.status == 429 and d.retry_after == 2.0
    clock.now += 1.0
    assert denied(t.check("Bearer gck_k1_s3cret")).retry_after == 1.0
    clock.now += 1.0
    assert isinstance(t.check("Bearer gck_k1_s3cret"), Caller)


def test_buckets_are_per_consumer(clock: Clock) -> None:
    t = table(consumer(rate_limit=1), consumer("k2", "other", rate_limit=1, consumer_id=8))
    assert isinstance(t.check("Bearer gck_k1_s3cret"), Caller)
    assert denied(t.check("Bearer gck_k1_s3cret")).status == 429
    assert isinstance(t.check("Bearer gck_k2_other"), Caller)


def test_keys_of_one_consumer_share_its_bucket(clock: Clock) -> None:
    t = table(consumer(rate_limit=1), consumer("k2", "spare", rate_limit=1))
    assert isinstance(t.check("Bearer gck_k1_s3cret"), Caller)
    assert denied(t.check("Bearer gck_k2_spare")).status == 429


def test_exhausted_quota_is_429_naming_the_reset_date(clock: Clock) -> None:
    t = table(consumer(monthly_quota=10, used=10))
    d = denied(t.check("Bearer gck_k1_s3cret"))
    assert (d.status, d.code) == (429, "quota_exhausted")
    reset = next_month(datetime.now(UTC)).date().isoformat()
    assert "quota of 10 requests is used up" in d.message
    assert f"resets on {reset}" in d.message
    assert d.retry_after is not None and 0 < d.retry_after <= 31 * 86400


def test_requests_served_since_the_snapshot_count_toward_the_quota(clock: Clock) -> None:
    t = table(consumer(monthly_quota=3, used=1))
    for _ in range(2):
        caller = t.check("Bearer gck_k1_s3cret")
        assert isinstance(caller, Caller)
        t.served(caller)
    assert denied(t.check("Bearer gck_k1_s3cret")).code == "quota_exhausted"
    # The next snapshot carries the stored count; what was served before it is not counted twice.
    t.load(
        AccessSnapshot(
            endpoint="shop",
            keys=[consumer(monthly_quota=3, used=2)],
            generated_at=datetime.now(UTC),
        )
    )
    assert isinstance(t.check("Bearer gck_k1_s3cret"), Caller)


def test_quota_is_checked_before_the_rate_and_spends_no_token(clock: Clock) -> None:
    t = table(consumer(rate_limit=1, monthly_quota=5, used=5))
    assert denied(t.check("Bearer gck_k1_s3cret")).code == "quota_exhausted"
    t.load(
        AccessSnapshot(
            endpoint="shop",
            keys=[consumer(rate_limit=1, monthly_quota=50, used=5)],
            generated_at=datetime.now(UTC),
        )
    )
    assert isinstance(t.check("Bearer gck_k1_s3cret"), Caller)


def test_split_bearer_and_next_month() -> None:
    assert split_bearer("Bearer gck_abc_de_f") == ("abc", "de_f")  # secrets may hold "_"
    assert split_bearer("Bearer gk_abc_x") == ("abc", "x")
    assert next_month(datetime(2025, 12, 31, 23, 59, tzinfo=UTC)) == datetime(
        2026, 1, 1, tzinfo=UTC
    )
    assert next_month(datetime(2025, 2, 1, tzinfo=UTC)) == datetime(2025, 3, 1, tzinfo=UTC)
