"""Pre-warm and the autoscaling settings: the profile and decision (pure), the settings'
validation, what Ray Serve is given, and the endpoint controller raising and lowering the
minimum from usage history aggregated in SQL (against a fake Ray Serve, on SQLite and, when
GUREUM_TEST_DATABASE_URL is set, PostgreSQL)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from gureum.config import Settings
from gureum.schemas.endpoints import Autoscaling, EndpointConfig
from gureum.server.db.tables_serving import Endpoint, UsageRecord
from gureum.server.services import prewarm
from gureum.server.services.prewarm import (
    Decision,
    MinuteLoad,
    build_profile,
    decide,
    minute_of_week,
    replicas_needed,
    weeks_covered,
)
from gureum.serving.backend import autoscaling_config, max_ongoing_requests
from tests.integration.test_endpoints_api import Env, make_env

# A Friday, 13:58:30 UTC.
NOW = datetime(2026, 12, 4, 13, 58, 30, tzinfo=UTC)
PEAK = datetime(2026, 12, 4, 14, 2, tzinfo=UTC)


def warm(**kw: object) -> Autoscaling:
    base: dict[str, object] = {"min_replicas": 1, "max_replicas": 8, "prewarm": True}
    return Autoscaling.model_validate(base | kw)


# -- the profile and the decision -----------------------------------------------------------------


def test_minutes_of_the_week_start_on_sunday_midnight_as_sql_counts_days() -> None:
    assert minute_of_week(datetime(2026, 11, 29, 0, 0, tzinfo=UTC)) == 0  # a Sunday
    assert minute_of_week(datetime(2026, 11, 30, 1, 2, tzinfo=UTC)) == 1440 + 62
    assert minute_of_week(NOW) == 5 * 1440 + 13 * 60 + 58


def test_a_minute_needs_the_replicas_that_hold_its_requests_in_flight() -> None:
    # 600 requests in a minute (10/s) of 400 ms: 4 in flight, 2 replicas at 2 each.
    assert replicas_needed(MinuteLoad(600, 400.0), 2.0) == 2
    assert replicas_needed(MinuteLoad(601, 400.0), 2.0) == 3
    assert replicas_needed(MinuteLoad(1, 1.0), 2.0) == 1  # any traffic: one
    assert replicas_needed(None, 2.0) == 0
    assert replicas_needed(MinuteLoad(0, 100.0), 2.0) == 0


def test_the_profile_averages_over_the_weeks_the_history_covers() -> None:
    rows = [(5, 14, 2, 1200, 1200 * 500.0), (0, 0, 0, 0, 0.0)]
    profile = build_profile(rows, 2.0)
    assert profile == {minute_of_week(PEAK): MinuteLoad(600.0, 500.0)}
    assert weeks_covered(None, NOW, 4) == 1.0
    assert weeks_covered(NOW - timedelta(days=3), NOW, 4) == 1.0
    assert weeks_covered(NOW - timedelta(days=10), NOW, 4) == 2.0
    assert weeks_covered(NOW - timedelta(days=100), NOW, 4) == 4.0


def profile_needing(replicas: int, at: datetime = PEAK) -> prewarm.Profile:
    # replicas x 2 in flight at 500 ms: 4 x replicas requests a second.
    return {minute_of_week(at): MinuteLoad(4 * replicas * 60, 500.0)}


def test_the_minimum_rises_a_lead_time_before_a_recorded_peak_and_falls_after_it() -> None:
    a = warm(prewarm_lead_s=300)
    profile = profile_needing(5)
    assert decide(profile, NOW, a) == Decision(5, PEAK)
    assert "min replicas 5" in Decision(5, PEAK).message()
    assert "Fri 14:02 UTC" in Decision(5, PEAK).message()
    assert decide(profile, PEAK + timedelta(seconds=59), a) == Decision(5, PEAK)
    assert decide(profile, PEAK + timedelta(minutes=1), a) == Decision(1)  # after it
    assert decide(profile, PEAK - timedelta(seconds=301), a) == Decision(1)  # not yet
    assert decide(profile, NOW, warm(prewarm_lead_s=60)) == Decision(1)
    # The same minute a week later: the profile is weekly.
    assert decide(profile, NOW + timedelta(days=7), a).min_replicas == 5


def test_the_raise_stays_within_the_settings() -> None:
    profile = profile_needing(20)
    assert decide(profile, NOW, warm(max_replicas=6)).min_replicas == 6
    assert decide(profile_needing(2), NOW, warm(min_replicas=3)) == Decision(3)
    assert decide(profile, NOW, warm(prewarm=False)) == Decision(1)
    assert decide({}, NOW, warm()) == Decision(1)
    # The highest minute of the window counts.
    both = profile_needing(2) | profile_needing(4, PEAK - timedelta(minutes=2))
    assert decide(both, NOW, warm()) == Decision(4, PEAK - timedelta(minutes=2))


# -- the settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"prewarm_lead_s": -1},
        {"prewarm_lead_s": 100_000},
        {"prewarm_weeks": 0},
        {"prewarm_weeks": 53},
        {"prewarm": "often"},
        {"max_ongoing_requests": 0},
        {"max_ongoing_requests": 1, "target_ongoing_requests": 2},
        {"upscale_delay_s": -1},
        {"downscale_delay_s": -0.5},
        {"prewarm_days": 3},
    ],
)
def test_bad_autoscaling_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Autoscaling.model_validate(bad)


def test_settings_stored_before_these_fields_still_load() -> None:
    old = {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 2.0,
        "upscale_delay_s": 3.0,
        "downscale_delay_s": 60.0,
        "idle_timeout_s": 300.0,
    }
    a = EndpointConfig.model_validate({"autoscaling": old}).autoscaling
    assert a.downscale_delay_s == 60.0 and a.upscale_delay_s == 3.0  # kept as stored
    assert a.prewarm is False and a.max_ongoing_requests is None


def test_ray_serve_gets_defaults_that_follow_bursts() -> None:
    a = Autoscaling(min_replicas=1, max_replicas=4)
    cfg = autoscaling_config(a)
    assert cfg["upscale_delay_s"] == 1.0 and cfg["downscale_delay_s"] == 15.0
    assert float(str(cfg["look_back_period_s"])) <= 3.0
    # A replica takes 2.5 x its target at once, at least a full batch.
    assert max_ongoing_requests(a) == 5
    assert max_ongoing_requests(a, max_batch_size=8) == 8
    assert max_ongoing_requests(Autoscaling(target_ongoing_requests=0.5)) == 2
    assert max_ongoing_requests(Autoscaling(max_ongoing_requests=64), 8) == 64


# -- the controller -------------------------------------------------------------------------------


@pytest.fixture
def env(settings: Settings) -> Iterator[Env]:
    yield from make_env(settings)


def seed_usage(env: Env, at: datetime, per_minute: int, latency_ms: float, weeks: int) -> None:
    """``per_minute`` served requests in the minute at ``at``, one, two... weeks before."""
    with env.cloud.app.state.db.write() as s:
        ep = s.scalar(select(Endpoint).where(Endpoint.name == "shop"))
        assert ep is not None
        for w in range(1, weeks + 1):
            for i in range(per_minute):
                s.add(
                    UsageRecord(
                        id=secrets.token_hex(10),
                        workspace_id=ep.workspace_id,
                        time=at - timedelta(weeks=w) + timedelta(seconds=i * 50 / per_minute),
                        consumer_name="c",
                        endpoint_id=ep.id,
                        endpoint_name=ep.name,
                        model_label="m:1",
                        route="predict",
                        status=200,
                        latency_ms=latency_ms,
                    )
                )


def test_the_controller_raises_the_minimum_ahead_of_a_peak_and_lowers_it_after(env: Env) -> None:
    scaling = {"min_replicas": 1, "max_replicas": 6, "prewarm": True, "prewarm_lead_s": 300}
    env.ready("m:1", config={"autoscaling": scaling})
    assert env.fake.last("shop").autoscaling.min_replicas == 1
    # 240 requests a minute of 1 s over two weeks: 4 in flight, 2 replicas.
    seed_usage(env, PEAK, 240, 1000.0, weeks=2)
    env.controller.prewarm.step(now=NOW, force=True)
    env.tick()
    assert env.fake.last("shop").autoscaling.min_replicas == 2
    assert env.fake.last("shop").autoscaling.max_replicas == 6
    out = env.get()
    assert out["message"].startswith("pre-warmed: min replicas 2")
    assert out["config"]["autoscaling"]["min_replicas"] == 1  # the setting is unchanged
    kind, message = env.events()[-1]
    assert kind == "prewarm" and "Fri 14:02 UTC" in message
    applied = len(env.fake.applied)
    # Nothing changed: nothing recorded, nothing applied again.
    env.controller.prewarm.step(now=NOW + timedelta(seconds=30), force=True)
    env.tick()
    assert len(env.fake.applied) == applied
    # After the peak: back to the setting.
    env.controller.prewarm.step(now=PEAK + timedelta(minutes=2), force=True)
    env.tick()
    assert env.fake.last("shop").autoscaling.min_replicas == 1
    assert env.events()[-1] == ("prewarm", "pre-warm over: min replicas back to 1")
    assert env.get()["message"] == ""


def test_an_endpoint_without_prewarm_is_left_alone(env: Env) -> None:
    env.ready("m:1", config={"autoscaling": {"min_replicas": 1, "max_replicas": 6}})
    seed_usage(env, PEAK, 240, 1000.0, weeks=1)
    applied = len(env.fake.applied)
    env.controller.prewarm.step(now=NOW, force=True)
    env.tick()
    assert len(env.fake.applied) == applied
    assert all(kind != "prewarm" for kind, _ in env.events())


def test_bad_prewarm_settings_are_422(env: Env) -> None:
    bad = {"autoscaling": {"prewarm": True, "prewarm_lead_s": -5}}
    r = env.http.post("/v1/endpoints", json={"name": "shop", "model": "m:1", "config": bad})
    assert r.status_code == 422, r.text
    assert "prewarm_lead_s" in r.text
