"""POST /v1/endpoints/{name}/try: the dashboard's "try it" panel. The control plane calls the
data plane as the signed-in member with a short-lived test key it holds, and the call is
metered as the member. A stand-in data plane (a real HTTP server) checks keys with the real
access table against the control plane's own snapshot and ships usage as replicas do, so the
test key is judged exactly as a replica judges it. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from sqlalchemy import select

from gureum.config import Settings
from gureum.schemas.metering import AccessSnapshot, UsageIn
from gureum.server.db.base import utcnow
from gureum.server.db.tables import ApiKey
from gureum.server.services.try_calls import KEY_NAME, KEY_TTL
from gureum.serving.access import AccessTable, Caller, Denied
from tests.conftest import ThreadedServer, free_port
from tests.integration.test_endpoints_api import Env, make_env
from tests.integration.web_helpers import csrf_of, key_of_role, sign_in


@dataclass
class Plane:
    """What the stand-in data plane saw: the Authorization headers of each call."""

    env: Env
    seen: list[str] = field(default_factory=list)

    def snapshot(self, name: str) -> AccessSnapshot:
        r = self.env.replica(name).get(f"/v1/internal/endpoints/{name}/access")
        assert r.status_code == 200, r.text
        return AccessSnapshot.model_validate(r.json())

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/endpoints/{name}/predict")
        async def predict(name: str, request: Request) -> JSONResponse:
            authorization = request.headers.get("authorization", "")
            self.seen.append(authorization)
            table = AccessTable()
            table.load(await asyncio.to_thread(self.snapshot, name))
            caller = table.check(authorization)
            if isinstance(caller, Denied):
                error = {"code": caller.code, "message": caller.message}
                return JSONResponse({"error": error}, status_code=caller.status)
            assert isinstance(caller, Caller)  # members lease no quota
            inputs = (await request.json())["inputs"]
            if not all(isinstance(i, dict) for i in inputs):
                error = {"code": "invalid_request", "message": "input 0: a row is an object"}
                return JSONResponse({"error": error}, status_code=422)
            record = UsageIn(
                id=secrets.token_hex(10),
                time=utcnow(),
                consumer_id=None,
                consumer_name=caller.name,
                model_version_id=self.env.row(name).version_id,
                model_label="m:1",
                route="predict",
                status=200,
                units=float(len(inputs)),
                latency_ms=3.0,
            )
            await asyncio.to_thread(self.env.ship, [record], name)
            outputs = [{"prediction": "yes"} for _ in inputs]
            return JSONResponse({"outputs": outputs, "model": "m:1", "units": len(inputs)})

        return app


@pytest.fixture
def plane(settings: Settings) -> Iterator[Plane]:
    for env in make_env(settings):
        env.deploy("m:1")
        p = Plane(env)
        server = ThreadedServer(p.app(), free_port())
        env.fake.data_url = server.url
        try:
            yield p
        finally:
            server.stop()


def _try(http: TestClient, body: Any, name: str = "shop", **headers: str) -> Any:
    return http.post(f"/v1/endpoints/{name}/try", json=body, headers=headers)


def _test_keys(plane: Plane) -> list[ApiKey]:
    with plane.env.cloud.app.state.db.read() as s:
        rows = list(s.scalars(select(ApiKey).where(ApiKey.name == KEY_NAME)))
        for r in rows:
            s.expunge(r)
        return rows


def test_a_member_tries_from_the_dashboard_metered_as_the_member(
    plane: Plane, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    web = TestClient(plane.env.cloud.app, base_url="http://testserver")
    assert sign_in(web, plane.env.cloud.admin_key).status_code == 303
    csrf = csrf_of(web, "/endpoints/shop")
    # The session without its CSRF token changes nothing (and calls nothing).
    assert _try(web, {"inputs": [{"price": 3}]}).status_code == 403
    assert plane.seen == []

    r = _try(web, {"inputs": [{"price": 3}, {"price": 4}]}, **{"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["outputs"] == [{"prediction": "yes"}, {"prediction": "yes"}]
    assert (out["model"], out["units"], out["metered_as"]) == ("m:1", 2, "member:admin")

    # The data plane got a key of the member's own: not the key the member signed in with,
    # shown nowhere (answer, logs), short-lived, a data-plane key.
    [sent] = set(plane.seen)
    token = sent.removeprefix("Bearer ")
    assert token.startswith("gk_") and token != plane.env.cloud.admin_key
    assert token not in r.text and token not in caplog.text
    [key] = _test_keys(plane)
    assert key.data_plane and key.role == "owner" and key.revoked_at is None
    assert key.expires_at is not None
    assert timedelta(0) < key.expires_at - utcnow() <= KEY_TTL

    # A second try reuses the held key (no new key per call).
    again = _try(web, {"inputs": [{"price": 5}]}, **{"X-CSRF-Token": csrf})
    assert again.status_code == 200, again.text
    assert set(plane.seen) == {sent} and len(_test_keys(plane)) == 1

    usage = plane.env.http.get("/v1/usage", params={"endpoint": "shop", "group_by": "consumer"})
    assert usage.status_code == 200, usage.text
    rows = {row["consumer"]: row for row in usage.json()["rows"]}
    assert rows["member:admin"]["requests"] == 2
    assert rows["member:admin"]["amount"] == 0  # a member's calls are metered, not charged


def test_a_viewer_cannot_try_and_no_key_is_made(plane: Plane) -> None:
    viewer, _ = key_of_role(plane.env.http, "watcher", "viewer")
    r = _try(plane.env.http, {"inputs": [{}]}, Authorization=f"Bearer {viewer}")
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"
    assert plane.seen == [] and _test_keys(plane) == []


def test_an_unknown_endpoint_is_404(plane: Plane) -> None:
    r = _try(plane.env.http, {"inputs": [{}]}, name="nowhere")
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "not_found"
    assert plane.seen == [] and _test_keys(plane) == []


@pytest.mark.parametrize(
    "body",
    [{}, {"inputs": []}, {"inputs": "a row"}, {"inputs": [{}] * 9}, {"inputs": [{}], "x": 1}],
)
def test_a_bad_body_is_422_before_the_data_plane(plane: Plane, body: Any) -> None:
    r = _try(plane.env.http, body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert plane.seen == []


def test_inputs_the_endpoint_refuses_come_back_as_its_422(plane: Plane) -> None:
    r = _try(plane.env.http, {"inputs": ["not a row"]})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == {
        "code": "invalid_request",
        "message": "input 0: a row is an object",
        "details": None,
    }


def test_a_revoked_test_key_is_replaced(plane: Plane) -> None:
    http = plane.env.http
    assert _try(http, {"inputs": [{}]}).status_code == 200
    [first] = _test_keys(plane)
    assert http.delete(f"/v1/keys/{first.key_id}").status_code == 200
    r = _try(http, {"inputs": [{}]})
    assert r.status_code == 200, r.text
    assert len(set(plane.seen)) == 2  # refused once with the revoked key, then a new one
    live = [k for k in _test_keys(plane) if k.revoked_at is None]
    assert len(live) == 1 and live[0].key_id != first.key_id


def test_without_a_cluster_a_try_is_409(plane: Plane) -> None:
    plane.env.cloud.app.state.serving.controller = None  # a server started with no cluster
    r = _try(plane.env.http, {"inputs": [{}]})
    assert r.status_code == 409, r.text
    assert "without a cluster" in r.json()["error"]["message"]
    assert plane.seen == []
