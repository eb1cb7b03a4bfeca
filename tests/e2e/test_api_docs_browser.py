"""The REST reference at /v1/docs in Chromium: Swagger UI from this server's own files starts
under the strict Content-Security-Policy (the page fixture fails on any console error, which a
CSP violation is) and lists the API's operations."""

from __future__ import annotations

from tests.conftest import LiveServer
from tests.e2e.browser_helpers import Page, expect, shot


def test_api_reference_renders_offline_under_the_csp(page: Page, live_server: LiveServer) -> None:
    foreign: list[str] = []
    page.on(
        "request",
        lambda r: foreign.append(r.url) if not r.url.startswith(live_server.url) else None,
    )
    page.goto(f"{live_server.url}/v1/docs")
    expect(page.locator(".opblock").first).to_be_visible(timeout=15_000)
    expect(page.locator("#swagger-ui")).to_contain_text("/v1/jobs")
    shot(page, "api-docs")
    assert foreign == []
