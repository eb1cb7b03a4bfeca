"""The endpoints SDK and CLI without a server: control-plane calls, waiting for a rollover,
the data-plane client (retries, errors, cold starts) and `gureum deploy | endpoints | predict`,
all against httpx.MockTransport."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from gureum.cli import endpoints as cli_endpoints
from gureum.cli.main import app
from gureum.client import Client
from gureum.client import endpoints as endpoints_module
from gureum.client.base import Transport
from gureum.client.endpoints import EndpointFailed, EndpointsAPI, merge_config
from gureum.client.errors import (
    BadRequestError,
    ConnectionFailed,
    ForbiddenError,
    GureumError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    ServerError,
    UnauthorizedError,
)
from gureum.client.jobs import WaitTimeout
from gureum.client.serving import (
    EndpointClient,
    RateLimited,
    Unavailable,
    parse_retry_after,
    save_images,
)
from gureum.schemas.endpoints import EndpointConfig

Handler = Callable[[httpx.Request], httpx.Response]
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
DATA_URL = "http://data:8100/v1/endpoints/garments"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00fake image"
runner = CliRunner()


def endpoint(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "garments",
        "workspace": "default",
        "model": "garments",
        "version": 1,
        "model_label": "garments:1",
        "recipe": "image-generator",
        "canary": None,
        "shadow": None,
        "previous": None,
        "config": EndpointConfig().model_dump(mode="json"),
        "state": "ready",
        "message": "",
        "url": DATA_URL,
        "replicas": {"primary": 1, "canary": 0, "shadow": 0},
        "created_at": NOW.isoformat(),
        "updated_at": NOW.isoformat(),
    }
    data.update(over)
    return data


def stats() -> dict[str, Any]:
    return {
        "window_s": 3600,
        "versions": [
            {
                "label": "garments:1",
                "role": "primary",
                "requests": 120,
                "errors": 3,
                "error_rate": 0.025,
                "p50_ms": 12.5,
                "p95_ms": 40.0,
                "p99_ms": 81.25,
            }
        ],
        "cold_starts": 2,
        "last_cold_start_ms": 4200.0,
        "replicas": {"primary": 1, "canary": 0, "shadow": 0},
        "queue_depth": 3,
        "batch_size_avg": 2.5,
    }


def error(status: int, code: str, message: str, **headers: str) -> httpx.Response:
    body = {"error": {"code": code, "message": message, "details": None}}
    return httpx.Response(status, json=body, headers=headers)


def prediction(n: int = 1, **headers: str) -> httpx.Response:
    body = {
        "outputs": [{"images": [base64.b64encode(PNG).decode()], "seed": i} for i in range(n)],
        "model": "garments:1",
        "units": float(n),
        "unit": "image",
    }
    return httpx.Response(200, json=body, headers={"X-Gureum-Model": "garments:1", **headers})


def api(handler: Handler, data: Handler | None = None) -> EndpointsAPI:
    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://cp")
    plane = httpx.MockTransport(data or handler)
    return EndpointsAPI(Transport("http://cp", "gk_team", http=http), data_transport=plane)


def data_client(handler: Handler, **kw: Any) -> tuple[EndpointClient, list[float]]:
    slept: list[float] = []
    kw.setdefault("sleep", slept.append)
    client = EndpointClient(DATA_URL, "gck_consumer", transport=httpx.MockTransport(handler), **kw)
    return client, slept


def never(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"nothing should be sent, got {request.method} {request.url}")


# -- control plane -----------------------------------------------------------------------------


def test_deploy_sends_the_request_and_checks_it_first() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(201, json=endpoint(state="deploying"))

    ep = api(handler).deploy("garments", "garments:1", canary_percent=None)
    assert ep.state == "deploying" and ep.url == DATA_URL
    assert sent[0].method == "POST" and sent[0].url.path == "/v1/endpoints"
    assert sent[0].headers["Authorization"] == "Bearer gk_team"
    assert json.loads(sent[0].content) == {
        "name": "garments",
        "model": "garments:1",
        "shadow": False,
    }

    bad = api(never)
    with pytest.raises(BadRequestError, match="name"):
        bad.deploy("Not A Name", "garments")
    with pytest.raises(BadRequestError, match="canary or as a shadow"):
        bad.deploy("garments", "garments:2", canary_percent=10, shadow=True)
    with pytest.raises(BadRequestError, match="canary_percent"):
        bad.deploy("garments", "garments:2", canary_percent=100)
    with pytest.raises(BadRequestError, match="min_replicas must not exceed"):
        bad.deploy("garments", "garments", config={"autoscaling": {"min_replicas": 3}})


def test_deploy_changes_keep_the_endpoints_other_settings() -> None:
    current = EndpointConfig.model_validate(
        {"resources": {"cpus": 2}, "autoscaling": {"min_replicas": 2, "max_replicas": 4}}
    )
    posted: list[dict[str, Any]] = []
    exists = [True]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            if not exists[0]:
                return error(404, "not_found", "endpoint garments not found")
            return httpx.Response(200, json=endpoint(config=current.model_dump(mode="json")))
        posted.append(json.loads(request.content))
        return httpx.Response(200, json=endpoint(state="updating"))

    eps = api(handler)
    eps.deploy("garments", "garments:2", changes={"autoscaling": {"min_replicas": 0}})
    config = posted[-1]["config"]
    assert config["autoscaling"]["min_replicas"] == 0
    assert config["autoscaling"]["max_replicas"] == 4
    assert config["resources"]["cpus"] == 2

    exists[0] = False  # a new endpoint: the changes apply to the defaults
    eps.deploy("garments", "garments:2", changes={"batching": {"max_batch_size": 16}})
    config = posted[-1]["config"]
    assert config["batching"]["max_batch_size"] == 16
    assert config["resources"]["cpus"] == EndpointConfig().resources.cpus


def test_deploy_wait_follows_the_rollover_to_ready() -> None:
    polls = iter(
        [
            endpoint(version=2, model_label="garments:2", state="updating"),
            endpoint(version=2, model_label="garments:2", state="ready"),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json=endpoint(version=2, state="updating"))
        return httpx.Response(200, json=next(polls))

    seen: list[str] = []
    ep = api(handler).deploy(
        "garments", "garments:2", wait=True, on_update=lambda e: seen.append(e.state)
    )
    assert ep.version == 2 and ep.state == "ready"
    assert seen == ["updating", "ready"]


def test_deploy_wait_reports_a_version_that_did_not_load() -> None:
    """The old version goes on serving, but the deploy must not look like a success."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            canary = {"version": 2, "label": "garments:2", "percent": 10}
            return httpx.Response(200, json=endpoint(state="updating", canary=canary))
        reason = "garments:2 failed to load: CUDA out of memory"
        return httpx.Response(200, json=endpoint(state="ready", message=reason))

    with pytest.raises(EndpointFailed, match=r"did not become the canary.*CUDA out of memory"):
        api(handler).deploy("garments", "garments:2", canary_percent=10, wait=True)


def test_wait_raises_the_failure_and_returns_none_when_gone() -> None:
    states = iter(["deploying", "failed"])

    def failing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=endpoint(state=next(states), message="no such model file"))

    with pytest.raises(EndpointFailed, match="endpoint garments failed: no such model file") as e:
        api(failing).wait("garments", poll_s=0)
    assert e.value.endpoint.state == "failed"

    answers = iter([httpx.Response(200, json=endpoint(state="deleting"))])

    def deleting(request: httpx.Request) -> httpx.Response:
        return next(answers, error(404, "not_found", "endpoint garments not found"))

    assert api(deleting).wait("garments", poll_s=0) is None


def test_wait_times_out_with_the_state_and_reason() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "GET"
        return httpx.Response(200, json=endpoint(state="deploying", message="waiting for a GPU"))

    with pytest.raises(WaitTimeout, match=r"still deploying after 0\.05 s: waiting for a GPU"):
        api(handler).wait("garments", 0.05, poll_s=0.01)


def test_update_and_configure() -> None:
    patched: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH":
            patched.append(json.loads(request.content))
            return httpx.Response(200, json=endpoint(state="updating"))
        cfg = {"autoscaling": {"min_replicas": 1, "max_replicas": 3}}
        return httpx.Response(200, json=endpoint(config=cfg))

    eps = api(handler)
    eps.update("garments", canary_percent=25)
    assert patched[-1] == {"canary_percent": 25}
    eps.configure("garments", {"autoscaling": {"max_replicas": 8}})
    assert patched[-1]["config"]["autoscaling"] == {
        **EndpointConfig().autoscaling.model_dump(exclude_none=True),
        "min_replicas": 1,
        "max_replicas": 8,
    }
    with pytest.raises(BadRequestError, match="nothing to change"):
        eps.update("garments")
    with pytest.raises(BadRequestError, match="min_replicas must not exceed"):
        eps.configure("garments", {"autoscaling": {"min_replicas": 5}})
    with pytest.raises(BadRequestError, match=r"batching\.nope"):
        merge_config(None, {"batching": {"nope": 1}})
    assert len(patched) == 2


def test_reads_and_actions_use_the_contract_routes() -> None:
    seen: list[tuple[str, str, dict[str, str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        path, params = request.url.raw_path.decode().partition("?")[0], dict(request.url.params)
        seen.append((request.method, path, params))
        if path == "/v1/endpoints":
            if "cursor" not in params:
                return httpx.Response(200, json={"items": [endpoint()], "next_cursor": "c2"})
            return httpx.Response(200, json={"items": [endpoint(name="b")], "next_cursor": None})
        if path.endswith("/events"):
            event = {
                "seq": 4,
                "time": NOW.isoformat(),
                "kind": "ready",
                "message": "up",
                "data": {},
            }
            return httpx.Response(200, json=[event])
        if path.endswith("/stats"):
            return httpx.Response(200, json=stats())
        if path.endswith("/shadow"):
            return httpx.Response(200, json=[])
        if request.method == "DELETE":
            return httpx.Response(202, json=endpoint(state="deleting"))
        return httpx.Response(200, json=endpoint())

    eps = api(handler)
    assert [e.name for e in eps.list()] == ["garments", "b"]
    assert eps.events("garments", after_seq=3)[0].seq == 4
    assert eps.stats("garments", window_s=60).versions[0].p99_ms == 81.25
    assert eps.shadow("garments", limit=5) == []
    assert eps.delete("garments").state == "deleting"
    eps.rollback("garments")
    eps.promote("garments")
    eps.get("a/b")
    assert seen[2:] == [
        ("GET", "/v1/endpoints/garments/events", {"after_seq": "3"}),
        ("GET", "/v1/endpoints/garments/stats", {"window_s": "60"}),
        ("GET", "/v1/endpoints/garments/shadow", {"limit": "5"}),
        ("DELETE", "/v1/endpoints/garments", {}),
        ("POST", "/v1/endpoints/garments/rollback", {}),
        ("POST", "/v1/endpoints/garments/promote", {}),
        ("GET", "/v1/endpoints/a%2Fb", {}),
    ]


def test_api_errors_carry_the_servers_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return error(409, "conflict", "no canary to promote")

    with pytest.raises(GureumError, match="no canary to promote") as e:
        api(handler).promote("garments")
    assert e.value.status == 409 and e.value.code == "conflict"


# -- data plane --------------------------------------------------------------------------------


def test_predict_returns_outputs_units_and_cold_start() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return prediction(2, **{"X-Gureum-Cold-Start": "1", "X-Gureum-Cold-Start-Ms": "3120.5"})

    client, _ = data_client(handler)
    with client:
        result = client.predict([{"class": "dress", "seed": 1}, {"class": "shirt", "seed": 2}])
    assert str(sent[0].url) == DATA_URL + "/predict"
    assert sent[0].headers["Authorization"] == "Bearer gck_consumer"
    assert json.loads(sent[0].content)["inputs"][1] == {"class": "shirt", "seed": 2}
    assert (result.model, result.units, result.unit) == ("garments:1", 2.0, "image")
    assert result.cold_start and result.cold_start_ms == 3120.5
    assert len(result.outputs) == 2 and result.latency_ms >= 0

    warm, _ = data_client(lambda r: prediction(1))
    assert warm.predict([{}]).cold_start is False
    assert warm.predict([{}]).cold_start_ms is None


def test_predict_retries_503_as_told_within_the_budget() -> None:
    answers = iter(
        [
            error(503, "unavailable", "no replica yet", **{"Retry-After": "2"}),
            error(503, "unavailable", "no replica yet", **{"Retry-After": "0"}),
            prediction(1),
        ]
    )
    client, slept = data_client(lambda r: next(answers))
    assert client.predict([{}]).model == "garments:1"
    assert slept == [2.0, 0.05]

    calls: list[int] = []

    def always_busy(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return error(503, "unavailable", "overloaded", **{"Retry-After": "4"})

    client, slept = data_client(always_busy, max_retry_wait_s=10)
    with pytest.raises(Unavailable, match="overloaded") as e:
        client.predict([{}])
    assert e.value.retry_after == 4 and isinstance(e.value, ServerError)
    assert slept == [4, 4] and len(calls) == 3  # a third wait would pass the 10 s budget


@pytest.mark.parametrize(
    "reply", [error(503, "unavailable", "down"), httpx.Response(502, text="Bad Gateway")]
)
def test_predict_does_not_retry_a_503_without_retry_after_or_other_5xx(
    reply: httpx.Response,
) -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return reply

    client, slept = data_client(handler)
    with pytest.raises(ServerError):
        client.predict([{}])
    assert calls == [1] and slept == []


@pytest.mark.parametrize(
    ("reply", "cls", "message"),
    [
        (error(400, "bad_request", "inputs[0].seed must be an integer"), BadRequestError, "seed"),
        (error(401, "unauthorized", "unknown or revoked key"), UnauthorizedError, "revoked"),
        (error(403, "forbidden", "plan does not include garments"), ForbiddenError, "plan"),
        (error(404, "not_found", "no endpoint garments"), NotFoundError, "no endpoint"),
        (error(413, "too_large", "body over 8 MiB"), PayloadTooLargeError, "8 MiB"),
        (error(415, "unsupported_media_type", "send JSON"), GureumError, "send JSON"),
        (error(422, "invalid_request", "inputs: field required"), BadRequestError, "required"),
    ],
)
def test_predict_never_retries_4xx(
    reply: httpx.Response, cls: type[Exception], message: str
) -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return reply

    client, slept = data_client(handler)
    with pytest.raises(cls, match=message) as e:
        client.predict([{}])
    assert calls == [1] and slept == []
    assert isinstance(e.value, GureumError) and e.value.status == reply.status_code


def test_rate_limited_carries_retry_after() -> None:
    client, slept = data_client(
        lambda r: error(429, "rate_limited", "over 5 requests/s", **{"Retry-After": "1.5"})
    )
    with pytest.raises(RateLimited, match="over 5 requests/s") as e:
        client.predict([{}])
    assert e.value.retry_after == 1.5 and isinstance(e.value, RateLimitedError)
    assert slept == []

    quota, _ = data_client(lambda r: error(429, "quota_exceeded", "monthly quota of 1000 used"))
    with pytest.raises(RateLimited, match="monthly quota") as e:
        quota.predict([{}])
    assert e.value.retry_after is None and e.value.code == "quota_exceeded"


def test_predict_refuses_what_is_not_a_prediction() -> None:
    client, _ = data_client(lambda r: httpx.Response(200, json={"result": 1}))
    with pytest.raises(GureumError, match="not a prediction") as e:
        client.predict([{}])
    assert e.value.code == "bad_response"

    nothing_sent, _ = data_client(never)
    bad_inputs: list[Any] = [{"inputs": []}, "a prompt", 3]
    for bad in bad_inputs:
        with pytest.raises(GureumError, match="must be a list"):
            nothing_sent.predict(bad)


def test_predict_network_failures() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    client, _ = data_client(refused)
    with pytest.raises(ConnectionFailed, match="cannot reach the endpoint at http://data:8100"):
        client.predict([{}])
    client, _ = data_client(slow)
    with pytest.raises(ConnectionFailed, match="did not answer in time") as e:
        client.predict([{}])
    assert e.value.code == "timeout"


def test_a_cut_connection_is_sent_again_with_the_same_idempotency_key() -> None:
    keys: list[str] = []

    def cut_once(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        if len(keys) == 1:
            raise httpx.RemoteProtocolError("Server disconnected", request=request)
        return prediction(1)

    client, slept = data_client(cut_once)
    assert client.predict([{}]).model == "garments:1"
    assert len(keys) == 2 and keys[0] == keys[1] and slept == [0.2]  # metered once
    client.predict([{}])
    assert keys[2] != keys[0]  # another call, another key

    def always_cut(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset", request=request)

    client, slept = data_client(always_cut, max_retry_wait_s=1)
    with pytest.raises(ConnectionFailed, match="cut the connection"):
        client.predict([{}])
    assert len(slept) == 5  # 5 pauses of 0.2 s fill the 1 s budget


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-2") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=7), usegmt=True), now) == 7
    assert parse_retry_after(format_datetime(now - timedelta(seconds=7), usegmt=True), now) == 0
    for junk in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(junk) is None


def test_sdk_predict_looks_up_the_url_and_picks_the_key() -> None:
    keys: list[str] = []

    def control(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=endpoint())

    def data(request: httpx.Request) -> httpx.Response:
        assert str(request.url) == DATA_URL + "/predict"
        keys.append(request.headers["Authorization"])
        return prediction(1)

    eps = api(control, data)
    assert eps.predict("garments", [{}], key="gck_customer").units == 1
    eps.predict("garments", [{}])
    assert keys == ["Bearer gck_customer", "Bearer gk_team"]

    no_url = api(lambda r: httpx.Response(200, json=endpoint(url=None, state="deploying")), never)
    with pytest.raises(GureumError, match="has no URL yet") as e:
        no_url.predict("garments", [{}])
    assert e.value.code == "not_ready"


def test_save_images_numbers_on_and_refuses_what_is_not_png(tmp_path: Path) -> None:
    blob = base64.b64encode(PNG).decode()
    (tmp_path / "garments-007.png").write_bytes(b"older")
    outputs = [{"images": [blob, "data:image/png;base64," + blob], "seed": 1}, {"label": "x"}]
    shown = save_images(outputs, tmp_path, "garments")
    paths = [Path(p) for p in shown[0]["images"]]
    assert [p.name for p in paths] == ["garments-008.png", "garments-009.png"]
    assert all(p.read_bytes() == PNG for p in paths)
    assert shown[0]["seed"] == 1 and shown[1] == {"label": "x"}
    assert (tmp_path / "garments-007.png").read_bytes() == b"older"

    for bad in ("not base64!", base64.b64encode(b"GIF89a...").decode()):
        with pytest.raises(GureumError, match="output 0 image 0 is not a base64 PNG"):
            save_images([{"images": [bad]}], tmp_path / "new", "garments")
        assert not list((tmp_path / "new").iterdir())


# -- the CLI -----------------------------------------------------------------------------------


class FakeCloud:
    """One endpoint's control plane and data plane, recording what the CLI sent."""

    def __init__(self) -> None:
        self.ep = endpoint()
        self.requests: list[tuple[str, str, Any]] = []
        self.predict_reply: httpx.Response = prediction(2)
        self.polls: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body: Any = json.loads(request.content) if request.content else None
        path = request.url.path
        self.requests.append((request.method, path, body))
        if request.url.host == "data":
            self.requests[-1] = (request.headers["Authorization"], path, body)
            return self.predict_reply
        if request.method == "GET" and self.polls and path == "/v1/endpoints/garments":
            return httpx.Response(200, json=self.polls.pop(0))
        if request.method == "GET" and path == "/v1/endpoints":
            return httpx.Response(200, json={"items": [self.ep] if self.ep else []})
        if not self.ep and path.startswith("/v1/endpoints/"):
            return error(404, "not_found", "endpoint garments not found")
        if path.endswith("/stats"):
            return httpx.Response(200, json=stats())
        if request.method == "POST" and path == "/v1/endpoints":
            self.ep = endpoint(config=body.get("config") or self.ep["config"], state="updating")
            return httpx.Response(200, json=self.ep)
        if request.method == "PATCH":
            self.ep = endpoint(config=body["config"])
            return httpx.Response(200, json=self.ep)
        if request.method == "DELETE":
            self.polls, self.ep = [endpoint(state="deleting")], {}
            return httpx.Response(202, json=endpoint(state="deleting"))
        return httpx.Response(200, json=self.ep)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCloud]:
    cloud = FakeCloud()

    def client() -> Client:
        transport = httpx.MockTransport(cloud)
        c = Client(
            "http://cp", "gk_team", http=httpx.Client(transport=transport, base_url="http://cp")
        )
        c.endpoints = EndpointsAPI(c._t, data_transport=transport)
        return c

    monkeypatch.setattr(cli_endpoints, "Client", client)
    monkeypatch.setattr(endpoints_module, "POLL_S", 0)
    monkeypatch.delenv("GUREUM_CONSUMER_KEY", raising=False)
    yield cloud


def gureum(*args: str) -> Result:
    return runner.invoke(app, list(args))


def test_cli_deploy_merges_flags_and_waits(fake: FakeCloud) -> None:
    fake.polls = [endpoint(state="updating"), endpoint(state="ready")]
    result = gureum(
        "deploy", "garments:1", "--endpoint", "garments", "--min-replicas", "0",
        "--max-replicas", "3", "--max-batch-size", "4", "--cold-start-timeout", "30",
        "--wait", "-o", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["state"] == "ready"
    posted = next(b for m, p, b in fake.requests if m == "POST")
    assert posted["model"] == "garments:1"
    config = posted["config"]
    assert config["autoscaling"]["min_replicas"] == 0 and config["autoscaling"]["max_replicas"] == 3
    assert config["batching"]["max_batch_size"] == 4 and config["cold_start_timeout_s"] == 30


def test_cli_deploy_refuses_bad_input_before_sending(fake: FakeCloud) -> None:
    result = gureum("deploy", "garments:v2", "--endpoint", "garments", "-o", "json")
    assert result.exit_code == 1
    assert "version 'v2'" in json.loads(result.stdout)["error"]["message"]
    result = gureum("deploy", "garments", "--endpoint", "garments", "--canary", "100")
    assert result.exit_code == 1 and "canary_percent" in result.output
    result = gureum("deploy", "garments", "--endpoint", "g", "--canary", "5", "--shadow")
    assert result.exit_code == 1 and "not both" in result.output
    assert not [r for r in fake.requests if r[0] == "POST"]


def test_cli_deploy_wait_fails_with_the_reason(fake: FakeCloud) -> None:
    fake.polls = [endpoint(state="failed", message="model file is corrupt")]
    result = gureum("deploy", "garments:1", "--endpoint", "garments", "--wait")
    assert result.exit_code == 1
    assert "model file is corrupt" in result.output


def test_cli_show_prints_endpoint_and_stats(fake: FakeCloud) -> None:
    result = gureum("endpoints", "show", "garments")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    for expected in ("garments:1", DATA_URL, "2.50%", "81.2", "cold starts 2 (last 4.2 s)"):
        assert expected in text
    assert "queue depth 3" in text and "2.5 on average" in text
    data = json.loads(gureum("endpoints", "show", "garments", "-o", "json").stdout)
    assert data["name"] == "garments" and data["stats"]["queue_depth"] == 3


def test_cli_list(fake: FakeCloud) -> None:
    fake.ep = endpoint(canary={"version": 2, "label": "garments:2", "percent": 10})
    result = gureum("endpoints", "list")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "garments:1 + canary" in text and "garments:2 (10 %)" in text
    assert [e["name"] for e in json.loads(gureum("endpoints", "list", "-o", "json").stdout)] == [
        "garments"
    ]
    fake.ep = {}
    assert "no endpoints" in gureum("endpoints", "list").stdout


def test_cli_update_keeps_other_settings(fake: FakeCloud) -> None:
    fake.ep = endpoint(config={"resources": {"cpus": 4}})
    result = gureum("endpoints", "update", "garments", "--gpus", "1", "-o", "json")
    assert result.exit_code == 0, result.output
    patched = next(b for m, p, b in fake.requests if m == "PATCH")
    assert patched["config"]["resources"]["cpus"] == 4
    assert patched["config"]["resources"]["gpus"] == 1
    result = gureum("endpoints", "update", "garments")
    assert result.exit_code == 1 and "nothing to change" in result.output


def test_cli_prewarm_flags_turn_prewarm_on_and_off(fake: FakeCloud) -> None:
    result = gureum("deploy", "garments:1", "-e", "garments", "--prewarm", "--prewarm-lead", "120")
    assert result.exit_code == 0, result.output
    posted = next(b for m, p, b in fake.requests if m == "POST")
    autoscaling = posted["config"]["autoscaling"]
    assert autoscaling["prewarm"] is True and autoscaling["prewarm_lead_s"] == 120
    result = gureum("endpoints", "update", "garments", "--no-prewarm", "-o", "json")
    assert result.exit_code == 0, result.output
    patched = next(b for m, p, b in fake.requests if m == "PATCH")
    assert patched["config"]["autoscaling"]["prewarm"] is False
    result = gureum("endpoints", "update", "garments", "--prewarm-lead", "-5")
    assert result.exit_code != 0 and not [r for r in fake.requests if r[0] == "PATCH"][1:]


def test_cli_delete_wait_and_actions(fake: FakeCloud) -> None:
    result = gureum("endpoints", "delete", "garments", "--wait", "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"name": "garments", "deleted": True}
    assert [m for m, p, b in fake.requests] == ["DELETE", "GET", "GET"]  # deleting, then gone
    result = gureum("endpoints", "rollback", "garments")
    assert result.exit_code == 1 and "not found" in result.output


def test_cli_predict_saves_images_and_prints_json_without_blobs(
    fake: FakeCloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUREUM_CONSUMER_KEY", "gck_env")
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"inputs": [{"class": "dress", "seed": 1}, {"seed": 2}]}))
    out = tmp_path / "images"
    result = gureum(
        "predict", "garments", "--input", f"@{request}", "--save", str(out), "-o", "json"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == "garments:1" and data["units"] == 2 and data["unit"] == "image"
    saved = [Path(p) for o in data["outputs"] for p in o["images"]]
    assert [p.name for p in saved] == ["garments-001.png", "garments-002.png"]
    assert all(p.read_bytes() == PNG for p in saved)
    assert base64.b64encode(PNG).decode() not in result.stdout
    auth, path, body = fake.requests[-1]
    assert (auth, path) == ("Bearer gck_env", "/v1/endpoints/garments/predict")
    assert body == {"inputs": [{"class": "dress", "seed": 1}, {"seed": 2}]}

    result = gureum("predict", "garments", "-i", '{"seed": 3}', "--key", "gck_flag")
    assert result.exit_code == 0, result.output
    assert "bytes of PNG: use --save DIR" in result.stdout
    assert "metered 2 images" in result.stdout
    assert fake.requests[-1][0] == "Bearer gck_flag" and fake.requests[-1][2] == {
        "inputs": [{"seed": 3}]
    }


def test_cli_predict_uses_the_api_key_and_reports_errors(fake: FakeCloud, tmp_path: Path) -> None:
    fake.predict_reply = error(429, "rate_limited", "over 2 requests/s", **{"Retry-After": "1"})
    result = gureum("predict", "garments", "--input", "[1, 2]", "-o", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"] == {
        "code": "rate_limited",
        "message": "over 2 requests/s",
    }
    assert fake.requests[-1][0] == "Bearer gk_team"
    result = gureum("predict", "garments", "--input", "{not json")
    assert result.exit_code == 1 and "input is not JSON" in result.output
    result = gureum("predict", "garments", "--input", f"@{tmp_path / 'missing.json'}")
    assert result.exit_code == 1 and "missing.json" in result.output


def test_an_answers_request_id_is_what_feedback_rates() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path.endswith("/predict"):
            body = {"outputs": [1], "model": "garments:1", "units": 1, "unit": "image"}
            return httpx.Response(200, json=body, headers={"x-request-id": "18c.c7.ab.cd"})
        if json.loads(request.content)["request_id"] == "18c.c7.ab.cd":
            return httpx.Response(202, json={"accepted": True, "request_id": "18c.c7.ab.cd"})
        error = {"code": "request_not_found", "message": "no request with this id"}
        return httpx.Response(404, json={"error": error})

    client, _ = data_client(handler)
    answer = client.predict([{"x": 1}])
    assert answer.request_id == "18c.c7.ab.cd"
    client.feedback(answer.request_id, rating=4, label="dress")
    assert sent[-1].url.path.endswith("/garments/feedback")
    assert json.loads(sent[-1].content) == {
        "request_id": "18c.c7.ab.cd",
        "rating": 4,
        "label": "dress",
    }
    with pytest.raises(NotFoundError):
        client.feedback("someone-elses", rating=1)
