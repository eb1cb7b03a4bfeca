"""Workspace keys on the data plane (only made with ``data_plane``, developer or above, rate
limited), and the quota leases replicas take, through REST and the CLI. SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from gureum.cli.main import app as cli_app
from gureum.server.auth import hash_secret
from gureum.server.db.tables import ApiKey
from gureum.server.db.tables_serving import Endpoint
from gureum.server.services.endpoints import token_hash
from tests.conftest import Cloud, LiveServer
from tests.integration.test_consumers_api import (
    consumer_id,
    db_of,
    ingest,
    make_endpoint,
    record,
    workspace_id,
)

TOKEN = "gst_replica_token_for_tests"


def endpoint_with_token(cloud: Cloud, name: str, workspace: str = "default") -> Endpoint:
    """An endpoint row whose replicas hold ``TOKEN`` (no Ray Serve involved)."""
    ep = make_endpoint(cloud, name, workspace)
    with db_of(cloud).write() as s:
        row = s.get(Endpoint, ep.id)
        assert row is not None
        row.token_hash = token_hash(TOKEN)
    return ep


def replica(cloud: Cloud, token: str = TOKEN) -> TestClient:
    c = TestClient(cloud.app, raise_server_exceptions=False)
    c.headers["Authorization"] = f"Bearer {token}"
    return c


def access(cloud: Cloud, name: str = "shop") -> dict[str, Any]:
    r = replica(cloud).get(f"/v1/internal/endpoints/{name}/access")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def lease(cloud: Cloud, cid: int, name: str = "shop", **extra: Any) -> dict[str, Any]:
    r = replica(cloud).post(
        f"/v1/internal/endpoints/{name}/lease", json={"consumer_id": cid, **extra}
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def key_ids(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k["key_id"]: k for k in snapshot["keys"]}


# -- workspace keys ------------------------------------------------------------------------------


def test_only_keys_made_for_the_data_plane_reach_it(cloud: Cloud) -> None:
    endpoint_with_token(cloud, "shop")
    admin = cloud.client()
    admin.users.add("vic", role="viewer")
    admin.users.add("dev", role="developer")
    plain = admin.keys.create("plain")  # the admin's own key, not for the data plane
    viewer = admin.keys.create("vic-key", user="vic")
    dev = admin.keys.create("dev-dp", user="dev", data_plane=True)
    assert (plain.data_plane, viewer.data_plane, dev.data_plane) == (False, False, True)
    snap = access(cloud)
    members = {k: v for k, v in key_ids(snap).items() if v["kind"] == "member"}
    # Before: every workspace key (the viewer's and the bootstrap admin's too) was let in,
    # free and unlimited.
    assert set(members) == {dev.key_id}
    assert members[dev.key_id]["rate_limit"] == cloud.settings.data_plane_key_rate_limit
    assert members[dev.key_id]["consumer_name"] == "member:dev"
    assert snap["max_staleness_s"] == cloud.settings.max_key_staleness_s
    listed = {k.key_id: k.data_plane for k in admin.keys.list()}
    assert listed[dev.key_id] is True and listed[plain.key_id] is False


def test_a_viewer_key_cannot_be_made_for_the_data_plane(cloud: Cloud) -> None:
    admin = cloud.http()
    admin.post("/v1/users", json={"name": "vic", "role": "viewer"}).raise_for_status()
    r = admin.post("/v1/keys", json={"name": "k", "user": "vic", "data_plane": True})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"
    assert "developer" in r.json()["error"]["message"]
    # Nor a viewer-role key of someone above.
    r = admin.post("/v1/keys", json={"name": "k", "role": "viewer", "data_plane": True})
    assert r.status_code == 403, r.text
    with db_of(cloud).read() as s:
        assert s.scalar(select(ApiKey.id).where(ApiKey.data_plane.is_(True))) is None


def test_a_data_plane_key_stops_when_its_user_is_demoted_or_it_is_revoked(cloud: Cloud) -> None:
    endpoint_with_token(cloud, "shop")
    admin = cloud.client()
    admin.users.add("dev", role="developer")
    dev = admin.keys.create("dev-dp", user="dev", data_plane=True)
    assert dev.key_id in key_ids(access(cloud))
    admin.users.set_role("dev", "viewer")
    assert dev.key_id not in key_ids(access(cloud))
    admin.users.set_role("dev", "developer")
    assert dev.key_id in key_ids(access(cloud))
    admin.keys.revoke(dev.key_id)
    assert dev.key_id not in key_ids(access(cloud))


def test_another_workspaces_data_plane_key_is_not_let_in(cloud: Cloud) -> None:
    endpoint_with_token(cloud, "shop")
    admin = cloud.client()
    admin.workspaces.create("other")
    with db_of(cloud).write() as s:
        theirs = ApiKey(
            key_id="theirs1",
            secret_hash=hash_secret("x"),
            name="x",
            user_id=1,
            workspace_id=workspace_id(cloud, "other"),
            role="owner",
            data_plane=True,
        )
        s.add(theirs)
    assert "theirs1" not in key_ids(access(cloud))


def test_keys_create_data_plane_from_the_cli(live_server: LiveServer, tmp_path: Path) -> None:
    env = {
        "GUREUM_URL": live_server.url,
        "GUREUM_API_KEY": live_server.cloud.admin_key,
        "GUREUM_HOME": str(tmp_path / "cli-home"),
    }
    result = CliRunner().invoke(
        cli_app, ["keys", "create", "dp", "--data-plane", "-o", "json"], env=env
    )
    assert result.exit_code == 0, result.output
    assert '"data_plane": true' in result.stdout


# -- quota leases ----------------------------------------------------------------------------------


def test_a_lease_needs_the_endpoints_token(cloud: Cloud) -> None:
    endpoint_with_token(cloud, "shop")
    r = replica(cloud, "gst_wrong").post(
        "/v1/internal/endpoints/shop/lease", json={"consumer_id": 1}
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = replica(cloud).post("/v1/internal/endpoints/shop/lease", json={"consumer_id": "x"})
    assert r.status_code == 422 and "error" in r.json()


def test_leases_never_hand_out_more_than_the_quota_to_8_concurrent_replicas(
    cloud: Cloud,
) -> None:
    endpoint_with_token(cloud, "shop")
    acme = cloud.client().consumers.create("acme", monthly_quota=437)
    cid = consumer_id(cloud, acme.token)
    grants: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def replica_loop() -> None:
        client = replica(cloud)
        try:
            while True:
                r = client.post("/v1/internal/endpoints/shop/lease", json={"consumer_id": cid})
                assert r.status_code == 200, r.text
                granted = r.json()["granted"]
                if granted == 0:
                    return
                with lock:
                    grants.append(granted)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=replica_loop) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sum(grants) == 437  # exactly the quota, under concurrent leases
    assert max(grants) <= cloud.settings.quota_lease_calls
    assert lease(cloud, cid)["granted"] == 0


def test_what_the_ledger_counts_is_never_leased_again(cloud: Cloud) -> None:
    gen = endpoint_with_token(cloud, "shop")
    acme = cloud.client().consumers.create("acme", monthly_quota=30)
    cid = consumer_id(cloud, acme.token)
    ingest(cloud, gen, *[record(gen, cid, "acme") for _ in range(25)])
    ingest(cloud, gen, record(gen, cid, "acme", status=500))  # failed calls are free
    first = lease(cloud, cid)
    assert (first["granted"], first["monthly_quota"]) == (2, 30)  # 5 left, shared out
    assert sum(lease(cloud, cid)["granted"] for _ in range(10)) == 3
    # A replica that stops gives back what it did not serve; it takes nothing with it.
    assert lease(cloud, cid, release=2)["granted"] == 0
    assert lease(cloud, cid)["granted"] == 1


def test_no_lease_for_a_consumer_of_another_workspace_or_not_on_the_plan(cloud: Cloud) -> None:
    endpoint_with_token(cloud, "shop")
    admin = cloud.client()
    outsider = admin.consumers.create("outsider", monthly_quota=10, endpoints=["elsewhere"])
    unlimited = admin.consumers.create("big")
    assert lease(cloud, consumer_id(cloud, outsider.token))["granted"] == 0
    assert lease(cloud, 999_999)["granted"] == 0
    free = lease(cloud, consumer_id(cloud, unlimited.token))
    assert free["monthly_quota"] is None and free["granted"] > 0


@pytest.mark.parametrize("quota", [1, 3])
def test_the_last_calls_of_a_quota_are_leased_one_at_a_time(cloud: Cloud, quota: int) -> None:
    endpoint_with_token(cloud, "shop")
    acme = cloud.client().consumers.create("acme", monthly_quota=quota)
    cid = consumer_id(cloud, acme.token)
    assert [lease(cloud, cid)["granted"] for _ in range(quota + 1)] == [1] * quota + [0]
