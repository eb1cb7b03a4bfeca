"""`GET /v1/plan` and `POST /v1/plan`: recorded resource-seconds (written by the service jobs
and endpoints record them with) replayed hour by hour on elastic cloud and on a fleet for the
peak. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gureum.client.errors import NotFoundError
from gureum.schemas.endpoints import ReplicaResources
from gureum.schemas.planner import DemandSeries, PriceOverrides
from gureum.server.services import costs
from tests.conftest import Cloud
from tests.integration.test_consumers_api import db_of, member_key, workspace_id
from tests.integration.test_usage_api import _job

T0 = datetime(2025, 3, 10, tzinfo=UTC)
NO_LEAD = PriceOverrides(lead_time_months=0)


def record_march(cloud: Cloud, workspace: str = "default") -> None:
    """An endpoint on 2 CPUs for 10 hours, and a job of 2 workers (1 CPU and 1 GPU each) for
    the 3rd and 4th of those hours."""
    ws = workspace_id(cloud, workspace)
    with db_of(cloud).write() as s:
        costs.record_endpoint(
            s, ws, "gen", T0, T0 + timedelta(hours=10), 2, ReplicaResources(cpus=1)
        )
        costs.record_job(s, _job(ws, f"j-{workspace}", T0 + timedelta(hours=2), 7200, gpus=1))


def test_recorded_usage_is_replayed_hour_by_hour(cloud: Cloud) -> None:
    record_march(cloud)
    report = cloud.client().planner.replay("2025-03", months=1, prices=NO_LEAD)
    assert (report.workspace, report.source, report.period, report.months) == (
        "default",
        "recorded",
        "2025-03",
        1,
    )
    # From the first recorded hour to the end of March.
    assert report.start == T0 and report.end == datetime(2025, 4, 1, tzinfo=UTC)
    series = report.series
    assert series.hours == 22 * 24
    assert series.cpus[:5] == [2.0, 2.0, 4.0, 4.0, 2.0] and series.cpus[10:] == [0.0] * 518
    assert series.gpus[:5] == [0.0, 0.0, 2.0, 2.0, 0.0]
    assert series.preemptible_gpus is not None and series.preemptible_gpus[2] == 2.0
    assert series.preemptible_cpus is not None and series.preemptible_cpus[:2] == [0.0, 0.0]
    c, p = report.comparison, report.prices
    assert (c.peak_cpus, c.peak_gpus, c.fleet.cpus, c.fleet.gpus) == (4.0, 2.0, 4, 2)
    # Endpoint: 20 CPU-hours on demand; the job: 4 CPU-hours and 4 GPU-hours on spot.
    assert (p.on_demand_cpu_hour, p.spot_cpu_hour, p.spot_gpu_hour) == (0.05, 0.02, 1.0)
    assert c.cloud.on_demand == pytest.approx(20 * 0.05)
    assert c.cloud.spot == pytest.approx(4 * 0.02 + 4 * 1.0)
    # A fleet of 4 CPUs and 2 GPUs idles most of the month: the cloud is cheaper.
    assert c.fleet.purchase == pytest.approx(4 * 150 + 2 * 25_000)
    assert c.fleet.usable_from == T0 and c.fleet.usable_hours == series.hours
    assert c.cheaper == "cloud" and c.utilisation < (c.break_even_utilisation or 0)
    assert c.savings == pytest.approx(c.fleet.total - c.cloud.total, abs=1e-5)


def test_prices_come_from_settings_and_the_query(cloud: Cloud) -> None:
    cloud.settings.plan_purchase_per_gpu = 1.0
    record_march(cloud)
    cheap = cloud.client().planner.replay("2025-03", months=1, prices=NO_LEAD)
    assert cheap.prices.purchase_per_gpu == 1.0
    http = cloud.http()
    r = http.get(
        "/v1/plan",
        params={"period": "2025-03", "months": 1, "lead_time_months": 0, "gpu_hour": 1},
    )
    assert r.status_code == 422  # not a parameter: the name is on_demand_gpu_hour
    r = http.get(
        "/v1/plan",
        params={"period": "2025-03", "months": 2, "on_demand_cpu_hour": 1, "spot_share": 0},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["prices"]["on_demand_cpu_hour"] == 1.0 and body["prices"]["spot_share"] == 0
    assert body["comparison"]["cloud"]["spot"] == 0
    assert body["comparison"]["cloud"]["on_demand"] == pytest.approx(24 * 1.0 + 4 * 2.5)
    # Two months back from March is February on: the replay still starts at the first usage.
    assert body["start"] == "2025-03-10T00:00:00Z"


def test_viewers_read_it_and_other_workspaces_are_not_counted(cloud: Cloud) -> None:
    admin = cloud.client()
    admin.workspaces.create("other")
    ws = workspace_id(cloud, "other")
    with db_of(cloud).write() as s:  # 100 GPUs in the other workspace, the same day
        costs.record_endpoint(
            s, ws, "big", T0, T0 + timedelta(hours=1), 100, ReplicaResources(cpus=1, gpus=1)
        )
    record_march(cloud)
    viewer = cloud.client(member_key(cloud, "vic", "viewer"))
    mine = viewer.planner.replay("2025-03", months=1)
    assert (mine.comparison.peak_gpus, mine.comparison.peak_cpus) == (2.0, 4.0)
    other = cloud.client(admin.keys.create("o", workspace="other").token)
    theirs = other.planner.replay("2025-03", months=1)
    assert theirs.workspace == "other" and theirs.comparison.peak_gpus == 100.0
    assert theirs.series.hours == mine.series.hours


def test_no_recorded_usage_is_a_404_that_says_so(cloud: Cloud) -> None:
    record_march(cloud)
    for params in ({"period": "2025-02", "months": 12}, {"period": "2031-01"}):
        r = cloud.http().get("/v1/plan", params=params)
        assert r.status_code == 404, r.text
        error = r.json()["error"]
        assert error["code"] == "not_found"
        assert error["message"].startswith("no recorded usage in workspace 'default' in ")
    with pytest.raises(NotFoundError, match=r"in 2024-03 \.\. 2025-02"):
        cloud.client().planner.replay("2025-02", months=12)


@pytest.mark.parametrize(
    "params",
    [
        {"period": "2025-13"},
        {"period": "March"},
        {"months": 0},
        {"months": 37},
        {"months": "x"},
        {"spot_share": 2},
        {"amortisation_years": 0},
        {"purchase_per_gpu": -1},
        {"on_demand_cpu_hour": "nan"},
        {"lead_time_months": 121},
        {"colour": "blue"},
    ],
)
def test_bad_parameters_answer_422(cloud: Cloud, params: dict[str, object]) -> None:
    record_march(cloud)
    r = cloud.http().get("/v1/plan", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"


def test_a_trace_is_replayed_without_storing_anything(cloud: Cloud) -> None:
    trace = DemandSeries(start=T0, cpus=[0.0] * 24, gpus=[8.0] * 24)
    viewer = cloud.client(member_key(cloud, "vic", "viewer"))
    report = viewer.planner.trace(trace, PriceOverrides(lead_time_months=0, spot_gpu_hour=0))
    assert (report.source, report.period, report.months) == ("trace", None, None)
    assert report.end == T0 + timedelta(hours=24)
    c = report.comparison
    assert c.fleet.gpus == 8 and c.utilisation == 1.0
    assert c.cloud.total == pytest.approx(8 * 24 * 2.5)  # nothing preemptible: on-demand
    assert c.cheaper == "fleet"
    # The trace left nothing behind: the recorded replay still has no usage.
    with pytest.raises(NotFoundError):
        cloud.client().planner.replay()


@pytest.mark.parametrize(
    ("trace", "message"),
    [
        ({"start": "2025-03-10T00:00:00Z", "cpus": [1, 2], "gpus": [0]}, "gpus has 1 hours"),
        ({"start": "2025-03-10T00:30:00Z", "cpus": [1], "gpus": [0]}, "on the hour"),
        ({"start": "2025-03-10T00:00:00Z", "cpus": [-1], "gpus": [0]}, "greater than or equal"),
        ({"start": "2025-03-10T00:00:00Z", "cpus": [0, 0], "gpus": [0, 0]}, "no demand"),
        (
            {
                "start": "2025-03-10T00:00:00Z",
                "cpus": [1],
                "gpus": [0],
                "preemptible_cpus": [2],
                "preemptible_gpus": [0],
            },
            "exceeds the total",
        ),
    ],
)
def test_a_bad_trace_answers_422(cloud: Cloud, trace: dict[str, object], message: str) -> None:
    r = cloud.http().post("/v1/plan", json={"trace": trace})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and message in str(error), error


def test_the_plan_needs_a_key(cloud: Cloud) -> None:
    assert cloud.http(False).get("/v1/plan").status_code == 401  # type: ignore[arg-type]
    body = {"trace": {"start": "2025-03-10T00:00:00Z", "cpus": [1], "gpus": [0]}}
    assert cloud.http(False).post("/v1/plan", json=body).status_code == 401  # type: ignore[arg-type]
