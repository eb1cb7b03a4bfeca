"""`PipelinesAPI.update | pause | resume`, `EndpointsAPI.drift_history` and `gureum pipelines
update | pause | resume` without a server: the PATCH each sends (only what was given, null to
clear), what is refused before sending, and the output, against httpx.MockTransport."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gureum.cli import pipelines_update as cli_update
from gureum.client import Client
from gureum.client.errors import BadRequestError, ConflictError
from tests.unit.test_pipelines_client import (
    FakeServer,
    api,
    error,
    flat,
    gureum,
    never,
    pipeline,
    route,
)


def test_update_sends_only_what_was_given() -> None:
    sent: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(route(request))
        config = {k: v for k, v in (sent[-1][3] or {}).items() if k != "model"}
        return httpx.Response(200, json=pipeline(config=config))

    out = api(handler).update("garments", canary_percent=20, schedule=None, enabled=False)
    assert out.config.canary_percent == 20 and out.config.enabled is False
    assert sent == [
        (
            "PATCH",
            "/v1/pipelines/garments",
            {},
            {"canary_percent": 20.0, "schedule": None, "enabled": False},
        )
    ]
    api(handler).pause("garments")
    api(handler).resume("garments")
    assert [body for *_, body in sent[1:]] == [{"enabled": False}, {"enabled": True}]


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"canary_percent": 100}, "canary_percent"),
        ({"name": "other"}, "name"),
        ({"approve": "maybe"}, "approve"),
        ({"on_drift": 0}, "on_drift"),
    ],
)
def test_update_checks_before_sending(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        api(never).update("garments", **changes)
    assert words in str(caught.value) and caught.value.status == 422


def test_update_surfaces_a_run_in_progress() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return error(409, "run_in_progress", "run 3 of 'garments' is in progress")

    with pytest.raises(ConflictError) as caught:
        api(handler).update("garments", canary_percent=5)
    assert caught.value.code == "run_in_progress"


def test_drift_history_reads_the_route() -> None:
    sent: list[Any] = []
    point = {"since": "2025-01-02T03:00:00Z", "until": "2025-01-02T04:00:00Z"}
    body = {
        "endpoint": "shop",
        "model": "returns:1",
        "recipe": "tabular",
        "window_s": 7200,
        "bucket_s": 3600,
        "min_samples": 50,
        "calls_per_bucket": 2000,
        "reference": {"dataset": "orders:1", "samples": 900, "total": 900},
        "points": [
            {**point, "captured_calls": 0, "samples": 0, "score": None, "verdict": None},
            {
                **point,
                "captured_calls": 90,
                "samples": 90,
                "score": 0.3,
                "verdict": "drift",
                "features": {"price": 0.3},
            },
        ],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(route(request))
        return httpx.Response(200, json=body)

    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://cp")
    out = Client("http://cp", "gk_team", http=http).endpoints.drift_history(
        "shop", window_s=7200, buckets=2
    )
    assert [p.score for p in out.points] == [None, 0.3]
    assert out.points[1].features == {"price": 0.3}
    assert sent == [
        (
            "GET",
            "/v1/endpoints/shop/drift/history",
            {"window_s": "7200", "buckets": "2"},
            None,
        )
    ]


# -- the CLI -----------------------------------------------------------------------------------


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    server = FakeServer()

    def client() -> Client:
        http = httpx.Client(transport=httpx.MockTransport(server), base_url="http://cp")
        return Client("http://cp", "gk_team", http=http)

    monkeypatch.setattr(cli_update, "Client", client)
    monkeypatch.setenv("COLUMNS", "200")
    yield server


def test_cli_update_maps_the_flags_given(fake: FakeServer) -> None:
    result = gureum(
        "pipelines", "update", "garments", "--canary", "25", "--schedule", "0 3 * * 1",
        "--on-drift", "0.3", "--approve", "manual", "--all-calls", "--pause",
        "--param", "epochs=3", "--clear", "min-rating", "--clear", "metric",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [(path, _, body)] = fake.sent("PATCH")
    assert path == "/v1/pipelines/garments"
    assert body == {
        "canary_percent": 25.0,
        "schedule": "0 3 * * 1",
        "on_drift": 0.3,
        "approve": "manual",
        "labelled_only": False,
        "enabled": False,
        "params": {"epochs": 3},
        "min_rating": None,
        "metric": None,
        "higher_is_better": None,
    }
    assert "updated pipeline garments" in flat(result.output)


def test_cli_pause_and_resume(fake: FakeServer) -> None:
    fake.pipeline = pipeline(config={"enabled": False, "schedule": "0 3 * * 1"})
    paused = gureum("pipelines", "pause", "garments")
    assert paused.exit_code == 0, paused.output
    assert "paused (pipelines resume)" in flat(paused.output)
    assert gureum("pipelines", "resume", "garments", "-o", "json").exit_code == 0
    assert [b for _, _, b in fake.sent("PATCH")] == [{"enabled": False}, {"enabled": True}]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--canary", "100"], "--canary:"),
        (["--on-drift", "0"], "--on-drift:"),
        (["--schedule", "0 3 * * 1", "--clear", "schedule"], "contradict"),
        ([], "say what to change"),
        (["--clear", "everything"], "everything"),
    ],
)
def test_cli_update_refuses_bad_flags_before_sending(
    fake: FakeServer, args: list[str], words: str
) -> None:
    result = gureum("pipelines", "update", "garments", *args)
    assert result.exit_code != 0
    assert words in result.output
    assert fake.sent("PATCH") == []


def test_cli_update_says_the_servers_refusal(fake: FakeServer) -> None:
    fake.refuse = error(409, "run_in_progress", "run 3 of 'garments' is in progress")
    result = gureum("pipelines", "update", "garments", "--canary", "30")
    assert result.exit_code != 0
    assert "run 3 of 'garments' is in progress" in result.output
