"""The dashboard's security boundary, through the front door (no browser): signing in with a key,
the session cookie, CSRF on cookie-authenticated changes, roles, revocation, security headers
and how sessions are stored."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from gureum.server.db.base import utcnow
from gureum.server.db.tables_web import WebSession
from gureum.server.services import endpoints as endpoints_service
from gureum.server.services import models as models_service
from tests.conftest import Cloud
from tests.integration.web_helpers import (
    csrf_of,
    key_of_role,
    queued_job,
    recorded_endpoint,
    sign_in,
)

COOKIE = "gureum_session"


def browser(cloud: Cloud, base_url: str = "http://testserver") -> TestClient:
    """A client with no Authorization header: only what a browser would send."""
    return TestClient(cloud.app, base_url=base_url, raise_server_exceptions=True)


def set_cookie_header(response: object) -> str:
    headers = response.headers  # type: ignore[attr-defined]
    values = [v for v in headers.get_list("set-cookie") if v.startswith(f"{COOKIE}=")]
    assert len(values) == 1, values
    return str(values[0])


def test_a_good_key_opens_a_session_with_a_strict_http_only_cookie(cloud: Cloud) -> None:
    web = browser(cloud)
    response = sign_in(web, cloud.admin_key)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    cookie = set_cookie_header(response).lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "path=/" in cookie
    assert "max-age=" in cookie
    assert "secure" not in cookie  # plain http here; see the https test
    # The cookie alone now answers for the key, on pages and on the REST API.
    assert "Overview" in web.get("/").text
    who = web.get("/v1/whoami")
    assert who.status_code == 200
    assert who.json()["role"] == "owner"


def test_the_cookie_is_secure_when_served_over_https(cloud: Cloud) -> None:
    web = browser(cloud, "https://testserver")
    response = sign_in(web, cloud.admin_key)
    assert response.status_code == 303
    assert "; secure" in set_cookie_header(response).lower()


@pytest.mark.parametrize(
    ("key", "status", "words"),
    [
        ("gk_0123456789ab_notthesecret", 401, "That API key was not accepted"),
        ("not a key at all", 401, "That API key was not accepted"),
        ("", 422, "Enter an API key to sign in."),
    ],
)
def test_a_wrong_key_is_refused_in_plain_words_and_gets_no_cookie(
    cloud: Cloud, key: str, status: int, words: str
) -> None:
    web = browser(cloud)
    response = sign_in(web, key)
    assert response.status_code == status
    assert words in response.text
    assert 'type="password"' in response.text  # the form again, to try once more
    assert not response.headers.get_list("set-cookie")
    assert web.get("/v1/whoami").status_code == 401


def test_pages_need_a_session_and_next_never_leaves_the_site(cloud: Cloud) -> None:
    web = browser(cloud)
    page = web.get("/jobs?state=queued", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Fjobs%3Fstate%3Dqueued"
    for evil in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        response = web.post(
            "/login", data={"api_key": cloud.admin_key, "next": evil}, follow_redirects=False
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/"


def test_a_sign_in_posted_from_another_site_is_refused(cloud: Cloud) -> None:
    web = browser(cloud)
    response = web.post(
        "/login",
        data={"api_key": cloud.admin_key},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert response.status_code == 403
    assert not response.headers.get_list("set-cookie")


def test_a_cookie_change_needs_the_csrf_token(cloud: Cloud) -> None:
    web = browser(cloud)
    sign_in(web, cloud.admin_key)
    body = {"name": "made-from-the-browser", "role": "viewer"}
    refused = web.post("/v1/keys", json=body)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    assert "CSRF" in refused.json()["error"]["message"]
    wrong = web.post("/v1/keys", json=body, headers={"X-CSRF-Token": "0" * 64})
    assert wrong.status_code == 403
    odd = web.post("/v1/keys", json=body, headers={"X-CSRF-Token": "\xe9".encode("latin-1")})
    assert odd.status_code == 403  # not a 500 from comparing non-ASCII text
    names = [k["name"] for k in cloud.http().get("/v1/keys").json()["items"]]
    assert "made-from-the-browser" not in names  # nothing half-done
    token = csrf_of(web)
    made = web.post("/v1/keys", json=body, headers={"X-CSRF-Token": token})
    assert made.status_code == 201, made.text
    # Another session's token is not this one's.
    other = browser(cloud)
    sign_in(other, cloud.admin_key)
    assert csrf_of(other) != token
    assert other.post("/v1/keys", json=body, headers={"X-CSRF-Token": token}).status_code == 403


def test_bearer_key_callers_need_no_csrf_token(cloud: Cloud) -> None:
    web = browser(cloud)
    _, _ = key_of_role(cloud.http(), "v", "viewer")
    sign_in(web, cloud.admin_key)
    # A bearer key wins over a cookie sent with it, and needs no CSRF token.
    made = web.post(
        "/v1/keys",
        json={"name": "by-bearer", "role": "viewer"},
        headers={"Authorization": f"Bearer {cloud.admin_key}"},
    )
    assert made.status_code == 201, made.text


def test_a_viewer_session_reads_but_cannot_act(cloud: Cloud, tmp_path: Path) -> None:
    job_id = queued_job(cloud.client(), tmp_path)
    viewer, _ = key_of_role(cloud.http(), "looker", "viewer")
    web = browser(cloud)
    assert sign_in(web, viewer).status_code == 303
    page = web.get(f"/jobs/{job_id}")
    assert page.status_code == 200
    assert job_id in page.text
    assert 'id="cancel"' not in page.text
    token = csrf_of(web)
    refused = web.post(f"/v1/jobs/{job_id}/cancel", headers={"X-CSRF-Token": token})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    assert cloud.http().get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
    # The owner's page has the button, and its cancel goes through with the token.
    owner = browser(cloud)
    sign_in(owner, cloud.admin_key)
    assert 'id="cancel"' in owner.get(f"/jobs/{job_id}").text
    done = owner.post(f"/v1/jobs/{job_id}/cancel", headers={"X-CSRF-Token": csrf_of(owner)})
    assert done.status_code == 200
    assert done.json()["state"] == "cancelled"


def test_revoking_the_key_ends_its_sessions(cloud: Cloud) -> None:
    token, key_id = key_of_role(cloud.http(), "laptop", "developer")
    web = browser(cloud)
    sign_in(web, token)
    assert web.get("/v1/whoami").status_code == 200
    assert cloud.http().delete(f"/v1/keys/{key_id}").status_code == 200
    gone = web.get("/v1/whoami")
    assert gone.status_code == 401
    page = web.get("/", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"].endswith("&ended=1")
    # And it cannot sign in again.
    again = sign_in(browser(cloud), token)
    assert again.status_code == 401
    assert "revoked" in again.text


def test_sign_out_deletes_the_session(cloud: Cloud) -> None:
    web = browser(cloud)
    sign_in(web, cloud.admin_key)
    stolen = web.cookies[COOKIE]
    token = csrf_of(web)
    assert web.post("/logout", data={"csrf_token": "x"}, follow_redirects=False).status_code == 403
    out = web.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert out.status_code == 303
    assert out.headers["location"] == "/login?out=1"
    with cloud.app.state.db.read() as s:
        assert s.scalars(select(WebSession)).all() == []
    replay = browser(cloud)
    replay.cookies.set(COOKIE, stolen)
    assert replay.get("/v1/whoami").status_code == 401


def test_an_expired_session_ends(cloud: Cloud) -> None:
    web = browser(cloud)
    sign_in(web, cloud.admin_key)
    with cloud.app.state.db.write() as s:
        s.execute(update(WebSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert web.get("/v1/whoami").status_code == 401


def test_sessions_are_stored_as_hashes_only(cloud: Cloud) -> None:
    web = browser(cloud)
    sign_in(web, cloud.admin_key)
    cookie = web.cookies[COOKIE]
    with cloud.app.state.db.read() as s:
        rows = s.scalars(select(WebSession)).all()
        assert len(rows) == 1
        row = rows[0]
        stored = [str(getattr(row, c.key)) for c in WebSession.__table__.columns]
    assert row.token_hash == hashlib.sha256(cookie.encode()).hexdigest()
    assert all(cookie not in value for value in stored)
    assert all(cloud.admin_key.split("_")[2] not in value for value in stored)


def test_every_page_sets_a_strict_content_security_policy(cloud: Cloud, tmp_path: Path) -> None:
    job_id = queued_job(cloud.client(), tmp_path)
    web = browser(cloud)
    for path in ["/login"]:
        assert_strict_headers(web.get(path))
    sign_in(web, cloud.admin_key)
    for path in ["/", "/jobs", f"/jobs/{job_id}", "/endpoints", "/jobs/no-such-job"]:
        assert_strict_headers(web.get(path))
    assert web.get("/jobs/no-such-job").status_code == 404
    script = web.get("/static/app.js")
    assert script.status_code == 200
    assert script.headers["x-content-type-options"] == "nosniff"
    chart = web.get("/static/vendor/uPlot.iife.min.js")
    assert chart.status_code == 200
    assert "uPlot" in chart.text


def assert_strict_headers(response: object) -> None:
    headers = response.headers  # type: ignore[attr-defined]
    csp = headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert "http" not in csp  # no foreign origin allowed anywhere
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "same-origin"
    assert headers["cache-control"] == "no-store"
    body = response.text  # type: ignore[attr-defined]
    assert "<script>" not in body  # no inline script: all of it is in static files


@pytest.fixture
def loadable_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stand-in model files are not real models; whether uploads may be served is tested by
    # the models tests, not here.
    for module in (models_service, endpoints_service):
        monkeypatch.setattr(module, "require_loadable", lambda *a, **k: None)


@pytest.mark.usefixtures("loadable_anything")
def test_endpoint_pages_show_actions_by_role(cloud: Cloud) -> None:
    recorded_endpoint(cloud.http())
    owner = browser(cloud)
    sign_in(owner, cloud.admin_key)
    listed = owner.get("/endpoints")
    assert listed.status_code == 200
    assert 'href="/endpoints/shop"' in listed.text
    shown = owner.get("/endpoints/shop")
    assert shown.status_code == 200
    assert "m:2 at 10.0%" in shown.text
    assert 'data-action="/v1/endpoints/shop/promote"' in shown.text
    assert owner.get("/endpoints/nope").status_code == 404
    viewer = browser(cloud)
    sign_in(viewer, key_of_role(cloud.http(), "v", "viewer")[0])
    as_viewer = viewer.get("/endpoints/shop")
    assert as_viewer.status_code == 200
    assert "data-action" not in as_viewer.text
    token = csrf_of(viewer, "/endpoints/shop")
    refused = viewer.post("/v1/endpoints/shop/promote", headers={"X-CSRF-Token": token})
    assert refused.status_code == 403
    promoted = owner.post("/v1/endpoints/shop/promote", headers={"X-CSRF-Token": csrf_of(owner)})
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["canary"] is None
