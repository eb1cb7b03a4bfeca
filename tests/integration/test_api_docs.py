"""The REST reference at /v1/docs: served from this server's own files under the dashboard's
Content-Security-Policy (FastAPI's default page loads Swagger UI from a CDN with an inline
script, on the origin where a member's session cookie works)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from tests.conftest import Cloud


def test_docs_load_nothing_from_another_origin(cloud: Cloud) -> None:
    http = TestClient(cloud.app)
    page = http.get("/v1/docs")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    html = page.text
    # Every script is a file (no inline code), and every asset is a path on this server.
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="/' in attrs and not body.strip() for attrs, body in scripts)
    refs = [r for r in re.findall(r'(?:src|href)="([^"]+)"', html) if r != "data:,"]
    assert refs and all(r.startswith("/") and not r.startswith("//") for r in refs)
    for ref in refs:
        asset = http.get(ref)
        assert asset.status_code == 200, ref
        assert asset.headers["x-content-type-options"] == "nosniff"
    assert "SwaggerUIBundle" in http.get("/static/api-docs.js").text
    # The schema it shows stays where clients find it.
    assert http.get("/v1/openapi.json").json()["info"]["title"] == "gureum"
