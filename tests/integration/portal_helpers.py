"""Helpers of the consumer portal tests: a consumer with a key, its metered calls shipped the
way replicas ship them, a portal sign-in, and the data plane's own key check."""

from __future__ import annotations

import re
import secrets
from datetime import timedelta

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import select

from gureum.schemas.metering import AccessSnapshot, UsageIn
from gureum.server.db.base import utcnow
from gureum.server.db.tables_serving import Consumer, Endpoint
from gureum.server.services.endpoints import endpoint_token
from gureum.serving.access import AccessTable, Caller, NeedLease
from tests.conftest import Cloud

CSRF = re.compile(r'<meta name="csrf-token" content="([0-9a-f]{64})">')


def make_consumer(admin: TestClient | httpx.Client, name: str, **plan: object) -> str:
    """A consumer of the admin's workspace; its first key (shown once)."""
    made = admin.post("/v1/consumers", json={"name": name, **plan})
    assert made.status_code == 201, made.text
    return str(made.json()["token"])


def portal_sign_in(http: TestClient | httpx.Client, key: str) -> httpx.Response:
    return http.post(
        "/portal/login", data={"consumer_key": key, "next": "/portal"}, follow_redirects=False
    )


def portal_csrf(http: TestClient | httpx.Client) -> str:
    page = http.get("/portal")
    assert page.status_code == 200, page.text
    found = CSRF.search(page.text)
    assert found, "the portal page carries no CSRF token"
    return found.group(1)


def _replica(cloud: Cloud, endpoint: str) -> tuple[TestClient, Endpoint]:
    with cloud.app.state.db.read() as s:
        ep = s.scalars(select(Endpoint).where(Endpoint.name == endpoint)).one()
        s.expunge(ep)
    replica = TestClient(cloud.app)
    replica.headers["Authorization"] = (
        f"Bearer {endpoint_token(cloud.app.state.serving.secret, ep)}"
    )
    return replica, ep


def ship_consumer_usage(cloud: Cloud, consumer: str, calls: int, endpoint: str = "shop") -> None:
    """``calls`` served calls of ``consumer`` (one per day back from today, one unit each) and
    one failed call, shipped to the internal usage route as a replica would."""
    replica, ep = _replica(cloud, endpoint)
    with cloud.app.state.db.read() as s:
        cid = s.scalars(select(Consumer.id).where(Consumer.name == consumer)).one()
    now = utcnow()
    records = [
        UsageIn(
            id=secrets.token_hex(10),
            time=now - timedelta(minutes=i),
            consumer_id=cid,
            consumer_name=consumer,
            model_version_id=ep.version_id,
            model_label="m:1",
            route="predict",
            status=500 if i == calls else 200,
            units=1.0,
            unit="row",
            latency_ms=12.0,
        ).model_dump(mode="json")
        for i in range(calls + 1)
    ]
    shipped = replica.post(f"/v1/internal/endpoints/{endpoint}/usage", json={"records": records})
    assert shipped.status_code == 200, shipped.text


def data_plane_check(cloud: Cloud, key: str, endpoint: str = "shop") -> object:
    """What a replica of ``endpoint`` decides for ``key``: a fresh access snapshot from the
    control plane, loaded into the data plane's own table, then its check."""
    replica, _ = _replica(cloud, endpoint)
    got = replica.get(f"/v1/internal/endpoints/{endpoint}/access")
    assert got.status_code == 200, got.text
    table = AccessTable()
    table.load(AccessSnapshot.model_validate(got.json()))
    return table.check(f"Bearer {key}")


def admitted(decision: object) -> bool:
    """The key was accepted: served, or (with a monthly quota) off to lease its next block."""
    return isinstance(decision, Caller | NeedLease)
