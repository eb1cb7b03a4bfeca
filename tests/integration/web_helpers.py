"""Helpers of the dashboard tests: sign in through the form, read a page's CSRF token, make
keys of a role and a job to look at."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import select

from gureum import Client
from gureum.schemas.metering import UsageIn
from gureum.server.db.base import utcnow
from gureum.server.db.tables_serving import Endpoint
from gureum.server.services.endpoints import endpoint_token
from tests.conftest import Cloud

CSRF = re.compile(r'<meta name="csrf-token" content="([0-9a-f]{64})">')


def sign_in(http: TestClient | httpx.Client, key: str) -> httpx.Response:
    """Posts the sign-in form (redirects not followed); the client keeps the cookie."""
    return http.post("/login", data={"api_key": key, "next": "/"}, follow_redirects=False)


def csrf_of(http: TestClient | httpx.Client, path: str = "/") -> str:
    page = http.get(path)
    assert page.status_code == 200, page.text
    found = CSRF.search(page.text)
    assert found, "the page carries no CSRF token"
    return found.group(1)


def key_of_role(admin: TestClient | httpx.Client, name: str, role: str) -> tuple[str, str]:
    """A new key of the admin's workspace with ``role`` (admin: a bearer-key client)."""
    created = admin.post("/v1/keys", json={"name": name, "role": role})
    assert created.status_code == 201, created.text
    body = created.json()
    return body["token"], body["key_id"]


def queued_job(admin: Client, tmp: Path) -> str:
    """A training job on a small table; without a cluster it waits in the queue."""
    table = tmp / "rows.csv"
    table.write_text("x,y,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40)))
    admin.datasets.push("rows", table)
    return admin.jobs.train("tabular", "rows", model="rows", params={"target": "label"}).id


def recorded_endpoint(admin: TestClient | httpx.Client, name: str = "shop") -> None:
    """An endpoint with a canary, recorded (no cluster serves it) over two stand-in "tabular"
    versions; callers switch off the loadable-model check, which is the models tests' concern."""
    for _ in range(2):
        data = secrets.token_bytes(32)
        digest = hashlib.sha256(data).hexdigest()
        assert admin.put(f"/v1/blobs/{digest}", content=data).status_code in (200, 201)
        files = [{"path": "model.joblib", "sha256": digest, "size": len(data)}]
        made = admin.post("/v1/models/m/versions", json={"files": files, "recipe": "tabular"})
        assert made.status_code == 201, made.text
    for body in ({"model": "m:1"}, {"model": "m:2", "canary_percent": 10}):
        deployed = admin.post("/v1/endpoints", json={"name": name, **body})
        assert deployed.status_code in (200, 201), deployed.text


class LiveReplicas:
    """A cloud's endpoints as their replicas reach the control plane: the endpoint's row and a
    client holding its own token (what ``test_curate_api.Traffic`` ships captured calls with)."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud

    def row(self, name: str) -> Endpoint:
        with self.cloud.app.state.db.read() as s:
            ep: Endpoint = s.scalars(select(Endpoint).where(Endpoint.name == name)).one()
            s.expunge(ep)
        return ep

    def replica(self, name: str) -> TestClient:
        client = TestClient(self.cloud.app, raise_server_exceptions=False)
        token = endpoint_token(self.cloud.app.state.serving.secret, self.row(name))
        client.headers["Authorization"] = f"Bearer {token}"
        return client


def ship_usage(cloud: Cloud, name: str = "shop", per_day: int = 5) -> None:
    """Metered calls over the last three days, sent the way replicas send them (the
    endpoint's own token to the internal usage route)."""
    replicas = LiveReplicas(cloud)
    ep = replicas.row(name)
    replica = replicas.replica(name)
    now = utcnow()
    records = [
        UsageIn(
            id=secrets.token_hex(10),
            time=now - timedelta(days=day, minutes=i),
            consumer_id=None,
            consumer_name="member:admin",
            model_version_id=ep.version_id,
            model_label="m:1",
            route="predict",
            status=500 if i == 0 else 200,
            units=1.0,
            latency_ms=10.0 + 5 * i + day,
        ).model_dump(mode="json")
        for day in range(3)
        for i in range(per_day)
    ]
    shipped = replica.post(f"/v1/internal/endpoints/{name}/usage", json={"records": records})
    assert shipped.status_code == 200, shipped.text
