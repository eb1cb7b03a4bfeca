"""The consumer portal through the front door (no browser): a customer signs in with its
consumer key into a portal session of its own kind, sees only its own usage, invoices and
limits, and rotates its key (CSRF-protected; the old key stops working on the data plane).
A portal session never reaches the members' API, and a member never reaches the portal."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from gureum.server.db.tables_web import PortalSession
from gureum.server.services import endpoints as endpoints_service
from gureum.server.services import models as models_service
from gureum.serving.access import Denied
from tests.conftest import Cloud
from tests.integration.portal_helpers import (
    admitted,
    data_plane_check,
    make_consumer,
    portal_csrf,
    portal_sign_in,
    ship_consumer_usage,
)
from tests.integration.web_helpers import csrf_of, recorded_endpoint, sign_in

COOKIE = "gureum_portal"


@pytest.fixture(autouse=True)
def loadable_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    # The endpoint here only needs to exist for metering and key snapshots; its stand-in
    # model files are not real models (that check is the models tests' concern).
    for module in (models_service, endpoints_service):
        monkeypatch.setattr(module, "require_loadable", lambda *a, **k: None)


def browser(cloud: Cloud) -> TestClient:
    return TestClient(cloud.app, base_url="http://testserver", raise_server_exceptions=True)


def portal_cookie(response: object) -> str:
    headers = response.headers  # type: ignore[attr-defined]
    values = [v for v in headers.get_list("set-cookie") if v.startswith(f"{COOKIE}=")]
    assert len(values) == 1, values
    return str(values[0])


def test_a_consumer_key_opens_a_portal_session_scoped_to_that_consumer(cloud: Cloud) -> None:
    admin = cloud.http()
    recorded_endpoint(admin)
    key = make_consumer(admin, "acme", price_per_request=0.5, monthly_quota=100, rate_limit=5)
    make_consumer(admin, "other")
    ship_consumer_usage(cloud, "acme", 3)
    ship_consumer_usage(cloud, "other", 7)

    web = browser(cloud)
    response = portal_sign_in(web, key)
    assert response.status_code == 303
    assert response.headers["location"] == "/portal"
    cookie = portal_cookie(response).lower()
    for flag in ("httponly", "samesite=strict", "path=/portal", "max-age="):
        assert flag in cookie
    # Stored as a hash of the cookie's token, never the token itself.
    token = web.cookies[COOKIE]
    with cloud.app.state.db.read() as s:
        hashes = s.scalars(select(PortalSession.token_hash)).all()
    assert hashes == [hashlib.sha256(token.encode()).hexdigest()]

    page = web.get("/portal")
    assert page.status_code == 200
    assert "acme" in page.text and "other" not in page.text
    limits = web.get("/portal/api/limits").json()
    assert limits["consumer"] == "acme"
    assert limits["plan"]["monthly_quota"] == 100
    assert limits["plan"]["rate_limit"] == 5
    assert limits["used_this_month"] == 3  # served calls; the failed one is not counted
    assert limits["left_this_month"] == 97
    usage = web.get("/portal/api/usage").json()
    assert {r["endpoint"] for r in usage["rows"]} == {"shop"}
    assert sum(r["requests"] for r in usage["rows"]) == 4  # its own calls only (3 + 1 error)
    assert sum(r["amount"] for r in usage["rows"]) == pytest.approx(1.5)
    invoices = web.get("/portal/api/invoices").json()["invoices"]
    assert [i["consumer"] for i in invoices] == ["acme"]
    assert invoices[0]["requests"] == 3
    assert invoices[0]["total"] == pytest.approx(1.5)
    bad = web.get("/portal/api/invoices", params={"period": "2026-13"})
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize(
    ("mangle", "status"),
    [
        (lambda key: key[:-4] + "AAAA", 401),  # the right key id, a wrong secret
        (lambda key: "gck_000000000000_nosuchkey", 401),
        (lambda key: "not a key", 401),
        (lambda key: "", 422),
    ],
)
def test_a_wrong_consumer_key_is_refused_with_no_cookie(
    cloud: Cloud, mangle: object, status: int
) -> None:
    key = make_consumer(cloud.http(), "acme")
    web = browser(cloud)
    response = portal_sign_in(web, mangle(key))  # type: ignore[operator]
    assert response.status_code == status
    assert 'type="password"' in response.text
    assert not response.headers.get_list("set-cookie")
    assert web.get("/portal/api/limits").status_code == 401


def test_member_keys_and_revoked_or_disabled_consumers_cannot_sign_in(cloud: Cloud) -> None:
    admin = cloud.http()
    web = browser(cloud)
    assert portal_sign_in(web, cloud.admin_key).status_code == 401  # a member's API key
    key = make_consumer(admin, "acme")
    assert admin.delete("/v1/consumers/acme").status_code == 200  # disables, revokes its keys
    refused = portal_sign_in(web, key)
    assert refused.status_code == 401
    assert "not accepted" in refused.text


def test_rotating_needs_the_csrf_token(cloud: Cloud) -> None:
    admin = cloud.http()
    recorded_endpoint(admin)
    key = make_consumer(admin, "acme")
    web = browser(cloud)
    portal_sign_in(web, key)
    for headers in ({}, {"X-CSRF-Token": "0" * 64}):
        refused = web.post("/portal/api/key/rotate", headers=headers)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden"
    # A member session's CSRF token is not the portal's either.
    member = browser(cloud)
    sign_in(member, cloud.admin_key)
    member_csrf = csrf_of(member)
    assert (
        web.post("/portal/api/key/rotate", headers={"X-CSRF-Token": member_csrf}).status_code == 403
    )
    assert admitted(data_plane_check(cloud, key))  # nothing changed
    keys = admin.get("/v1/consumers/acme/keys").json()["items"]
    assert [k["revoked_at"] for k in keys] == [None]


def test_rotation_invalidates_the_old_key_on_the_data_plane(cloud: Cloud) -> None:
    admin = cloud.http()
    recorded_endpoint(admin)
    old = make_consumer(admin, "acme")
    assert admitted(data_plane_check(cloud, old))
    web, elsewhere = browser(cloud), browser(cloud)
    portal_sign_in(web, old)
    portal_sign_in(elsewhere, old)  # a second browser on the same key

    rotated = web.post("/portal/api/key/rotate", headers={"X-CSRF-Token": portal_csrf(web)})
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["token"]
    assert new.startswith("gck_") and new != old
    assert rotated.json()["key_id"] == new.split("_")[1]

    denied = data_plane_check(cloud, old)
    assert isinstance(denied, Denied) and denied.status == 401
    assert admitted(data_plane_check(cloud, new))
    # This session follows the new key; the other session of the old key has ended.
    assert web.get("/portal/api/limits").status_code == 200
    assert new.split("_")[1] in web.get("/portal").text
    assert elsewhere.get("/portal/api/limits").status_code == 401
    assert (
        elsewhere.get("/portal", follow_redirects=False)
        .headers["location"]
        .startswith("/portal/login?next=%2Fportal&ended=1")
    )
    assert portal_sign_in(browser(cloud), old).status_code == 401
    assert portal_sign_in(browser(cloud), new).status_code == 303
    keys = {
        k["key_id"]: k["revoked_at"] for k in admin.get("/v1/consumers/acme/keys").json()["items"]
    }
    assert keys[old.split("_")[1]] is not None and keys[new.split("_")[1]] is None
    # The team sees the rotation in its audit log.
    events = admin.get("/v1/audit", params={"action": "consumer_key.rotate"}).json()["items"]
    assert [e["target"] for e in events] == [new.split("_")[1]]


def test_a_portal_session_never_reaches_the_members_api(cloud: Cloud) -> None:
    key = make_consumer(cloud.http(), "acme")
    web = browser(cloud)
    portal_sign_in(web, key)
    token = web.cookies[COOKIE]
    assert web.get("/v1/whoami").status_code == 401  # the cookie is scoped to /portal
    raw = TestClient(cloud.app)
    for name in (COOKIE, "gureum_session"):  # sent anyway, under either name
        raw.cookies.clear()
        raw.cookies.set(name, token)
        for path in ("/v1/whoami", "/v1/consumers", "/v1/usage"):
            assert raw.get(path).status_code == 401, (name, path)
        assert raw.get("/", follow_redirects=False).status_code == 303  # the members' pages
    # And the consumer key itself is no API key.
    assert cloud.http(key).get("/v1/whoami").status_code == 401


def test_a_member_never_reaches_a_consumers_portal_data(cloud: Cloud) -> None:
    make_consumer(cloud.http(), "acme")
    member = browser(cloud)
    sign_in(member, cloud.admin_key)
    assert member.get("/").status_code == 200
    for path in ("/portal/api/usage", "/portal/api/limits", "/portal/api/invoices"):
        assert member.get(path).status_code == 401
        assert cloud.http().get(path).status_code == 401  # a bearer member key either
    assert member.post("/portal/api/key/rotate").status_code == 401
    page = member.get("/portal", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/portal/login?next=%2Fportal"


def test_portal_sign_out_ends_the_session(cloud: Cloud) -> None:
    key = make_consumer(cloud.http(), "acme")
    web = browser(cloud)
    portal_sign_in(web, key)
    csrf = portal_csrf(web)
    assert web.post("/portal/logout", data={"csrf_token": "x"}).status_code == 403
    out = web.post("/portal/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303
    assert out.headers["location"] == "/portal/login?out=1"
    with cloud.app.state.db.read() as s:
        assert s.scalars(select(PortalSession)).all() == []
    assert web.get("/portal/api/limits").status_code == 401
