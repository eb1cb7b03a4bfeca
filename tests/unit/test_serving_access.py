"""The replica's key check, rate limit and monthly quota, in memory, with a clock we move."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from gureum.schemas.metering import AccessKey, AccessSnapshot
from gureum.serving import access
from gureum.serving.access import (
    AccessTable,
    Caller,
    Denied,
    NeedLease,
    next_month,
    split_bearer,
)

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


def member(key_id: str = "m1", secret: str = "team", rate_limit: float | None = None) -> AccessKey:
    return AccessKey(
        key_id=key_id,
        secret_hash=hashlib.sha256(secret.encode()).hexdigest(),
        kind="member",
        consumer_id=None,
        consumer_name="member:ann",
        rate_limit=rate_limit,
    )


def snapshot(*keys: AccessKey, replicas: int = 1, staleness: float = 300.0) -> AccessSnapshot:
    return AccessSnapshot(
        endpoint="shop",
        keys=list(keys),
        replicas=replicas,
        generated_at=datetime.now(UTC),
        max_staleness_s=staleness,
    )


def table(*keys: AccessKey, replicas: int = 1) -> AccessTable:
    t = AccessTable()
    t.load(snapshot(*keys, replicas=replicas))
    return t


def denied(result: Caller | Denied | NeedLease) -> Denied:
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


def test_member_keys_use_no_quota_of_a_consumer(clock: Clock) -> None:
    t = table(member(), consumer(rate_limit=1, monthly_quota=1))
    t.granted(CONSUMER_ID, 1)
    for _ in range(50):
        caller = t.check("Bearer gk_m1_team")
        assert caller == Caller(None, "member:ann", "m1")
        t.served(caller)
    # The members' traffic used none of the consumer's quota or rate.
    assert isinstance(t.check("Bearer gck_k1_s3cret"), Caller)


def test_a_data_plane_member_key_is_rate_limited_per_key(clock: Clock) -> None:
    t = table(member(rate_limit=2), member("m2", "other", rate_limit=2))
    assert isinstance(t.check("Bearer gk_m1_team"), Caller)
    assert isinstance(t.check("Bearer gk_m1_team"), Caller)
    d = denied(t.check("Bearer gk_m1_team"))
    assert (d.status, d.code) == (429, "rate_limited")
    assert isinstance(t.check("Bearer gk_m2_other"), Caller)  # another key, its own bucket


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


def test_a_quota_is_spent_from_leased_blocks_that_a_refresh_never_refills(clock: Clock) -> None:
    t = table(consumer(monthly_quota=100, used=0))
    assert t.check("Bearer gck_k1_s3cret") == NeedLease(CONSUMER_ID)  # nothing leased yet
    t.granted(CONSUMER_ID, 2)
    for _ in range(2):
        caller = t.check("Bearer gck_k1_s3cret")
        assert isinstance(caller, Caller) and caller.leased
        t.served(caller)
    # A refresh (the ledger still says 0 used) gives no calls back: the old code reset here.
    t.load(snapshot(consumer(monthly_quota=100, used=0)))
    assert t.check("Bearer gck_k1_s3cret") == NeedLease(CONSUMER_ID)


def test_a_refused_lease_is_429_until_asked_again(clock: Clock) -> None:
    t = table(consumer(monthly_quota=5, used=3))
    t.granted(CONSUMER_ID, 0)
    assert denied(t.check("Bearer gck_k1_s3cret")).code == "quota_exhausted"
    clock.now += access.EXHAUSTED_RECHECK_S + 1
    assert t.check("Bearer gck_k1_s3cret") == NeedLease(CONSUMER_ID)


def test_a_failed_call_gives_its_leased_call_back(clock: Clock) -> None:
    t = table(consumer(monthly_quota=5))
    t.granted(CONSUMER_ID, 1)
    caller = t.check("Bearer gck_k1_s3cret")
    assert isinstance(caller, Caller)
    t.served(caller, 500)  # not billed, so not counted
    assert isinstance(t.check("Bearer gck_k1_s3cret"), Caller)
    assert t.check("Bearer gck_k1_s3cret") == NeedLease(CONSUMER_ID)


def test_the_next_block_is_wanted_when_a_quarter_is_left(clock: Clock) -> None:
    t = table(consumer(monthly_quota=500))
    t.granted(CONSUMER_ID, 8)
    for _ in range(5):
        assert isinstance(t.check("Bearer gck_k1_s3cret"), Caller)
    assert not t.running_low(CONSUMER_ID)
    assert isinstance(t.check("Bearer gck_k1_s3cret"), Caller)
    assert t.running_low(CONSUMER_ID)  # 2 of 8 left
    assert t.unused() == {CONSUMER_ID: 2}
    assert t.unused() == {}


def test_quota_is_checked_before_the_rate_and_spends_no_token(clock: Clock) -> None:
    t = table(consumer(rate_limit=1, monthly_quota=5, used=5))
    assert denied(t.check("Bearer gck_k1_s3cret")).code == "quota_exhausted"
    t.load(snapshot(consumer(rate_limit=1, monthly_quota=50, used=5)))
    t.granted(CONSUMER_ID, 1)
    assert isinstance(t.check("Bearer gck_k1_s3cret"), Caller)


def test_a_rate_limited_call_keeps_its_leased_call(clock: Clock) -> None:
    t = table(consumer(rate_limit=1, monthly_quota=50))
    t.granted(CONSUMER_ID, 2)
    assert isinstance(t.check("Bearer gck_k1_s3cret"), Caller)
    assert denied(t.check("Bearer gck_k1_s3cret")).code == "rate_limited"
    clock.now += 1
    assert isinstance(t.check("Bearer gck_k1_s3cret"), Caller)  # the second leased call


def test_an_old_table_refuses_every_call_with_503(clock: Clock) -> None:
    t = AccessTable()
    t.load(snapshot(consumer(), member(), staleness=30))
    assert isinstance(t.check("Bearer gck_k1_s3cret"), Caller)
    clock.now += 31
    for header in ("Bearer gck_k1_s3cret", "Bearer gk_m1_team"):
        d = denied(t.check(header))
        assert (d.status, d.code) == (503, "keys_stale")
        assert d.retry_after is not None
    t.load(snapshot(consumer(), staleness=30))
    assert isinstance(t.check("Bearer gck_k1_s3cret"), Caller)


def test_unknown_keys_are_remembered_for_a_while_and_bounded(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(access, "UNKNOWN_KEYS", 3)
    t = table(consumer())
    for key_id in ("a", "b", "c", "d"):
        t.mark_unknown(key_id)
    assert not t.known_unknown("a")  # the oldest went first
    assert all(t.known_unknown(k) for k in ("b", "c", "d"))
    clock.now += access.UNKNOWN_KEY_TTL_S + 1
    assert not t.known_unknown("d")


def test_split_bearer_and_next_month() -> None:
    assert split_bearer("Bearer gck_abc_de_f") == ("abc", "de_f")  # secrets may hold "_"
    assert split_bearer("Bearer gk_abc_x") == ("abc", "x")
    assert next_month(datetime(2025, 12, 31, 23, 59, tzinfo=UTC)) == datetime(
        2026, 1, 1, tzinfo=UTC
    )
    assert next_month(datetime(2025, 2, 1, tzinfo=UTC)) == datetime(2025, 3, 1, tzinfo=UTC)
