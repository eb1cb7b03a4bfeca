"""Behind a TLS-terminating proxy (an ingress, a load balancer): the proxy's
X-Forwarded-Proto is believed only from the addresses in GUREUM_FORWARDED_ALLOW_IPS. Believed,
the sign-in form's Origin check sees https and the session cookie is Secure; from anyone else
the headers change nothing (a client cannot make itself look like https)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from gureum.config import Settings
from gureum.server.app import create_app
from gureum.server.services.bootstrap import bootstrap

BEHIND_TLS = {"origin": "https://api.example.test", "host": "api.example.test"}
FORWARDED = {"x-forwarded-proto": "https", "x-forwarded-for": "203.0.113.7"}


def signed_in(settings: Settings, trusted: str) -> Iterator[tuple[TestClient, str]]:
    app = create_app(settings.model_copy(update={"forwarded_allow_ips": trusted}), migrate=True)
    key = bootstrap(app.state.db)
    assert key is not None
    yield TestClient(app, base_url="http://api.example.test"), key
    app.state.db.dispose()


@pytest.fixture
def proxied(settings: Settings) -> Iterator[tuple[TestClient, str]]:
    # The test client's address is not an IP; "*" stands for "the proxy's address".
    yield from signed_in(settings, "*")


@pytest.fixture
def direct(settings: Settings) -> Iterator[tuple[TestClient, str]]:
    yield from signed_in(settings, "127.0.0.1")


def login(http: TestClient, key: str) -> object:
    return http.post(
        "/login",
        data={"api_key": key, "next": "/"},
        headers=BEHIND_TLS | FORWARDED,
        follow_redirects=False,
    )


def test_a_trusted_proxy_makes_sign_in_https(proxied: tuple[TestClient, str]) -> None:
    http, key = proxied
    answer = login(http, key)
    assert answer.status_code == 303, answer.text  # type: ignore[attr-defined]
    cookie = answer.headers["set-cookie"]  # type: ignore[attr-defined]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie


def test_forwarded_headers_from_anyone_else_change_nothing(direct: tuple[TestClient, str]) -> None:
    http, key = direct
    # The request is plain http whatever it claims, so an https Origin is another site's.
    answer = login(http, key)
    assert answer.status_code == 403  # type: ignore[attr-defined]
    assert "set-cookie" not in answer.headers  # type: ignore[attr-defined]
