"""Selling and releasing from the browser (Debian's Chromium, headless, Playwright) against a
server this test starts: an admin creates a named plan on the consumers page (a value the API
refuses is said in words and makes nothing) and a developer deploys a model version as a canary
beside the one an endpoint serves. No Ray: endpoints are recorded, never served."""

from __future__ import annotations

import pytest

from gureum.server.services import endpoints as endpoints_service
from gureum.server.services import models as models_service
from tests.conftest import LiveServer
from tests.e2e.browser_helpers import Page, expect, expect_refusals, shot, sign_in
from tests.integration.web_helpers import key_of_role, recorded_endpoint


def test_an_admin_creates_a_plan_from_the_consumers_page(
    page: Page, live_server: LiveServer
) -> None:
    url, cloud = live_server.url, live_server.cloud
    sign_in(page, url, cloud.admin_key)
    page.goto(url + "/consumers")
    expect(page.get_by_text("No plan yet.")).to_be_visible()
    form = page.locator("#plan-form")

    expect_refusals(page, "/v1/plans")
    form.get_by_label("Plan name").fill("studio")
    form.get_by_label("Price per unit").fill("0.02")
    form.get_by_label("Endpoints it may call").fill("garments, Not An Endpoint")
    form.get_by_role("button", name="Create plan").click()
    expect(form.locator(".error")).to_contain_text("endpoints")
    assert cloud.http().get("/v1/plans").json()["items"] == []

    form.get_by_label("Endpoints it may call").fill("garments, shop")
    form.get_by_label("Rate limit").fill("5")
    form.get_by_label("Monthly quota").fill("1000")
    form.get_by_role("button", name="Create plan").click()
    row = page.locator("#plans tbody tr")
    expect(row).to_have_count(1)  # the page reloads with it
    expect(row.first).to_contain_text("studio")
    expect(row.first).to_contain_text("garments, shop")
    plan = cloud.http().get("/v1/plans/studio").json()
    assert (plan["price_per_unit"], plan["rate_limit"], plan["monthly_quota"]) == (0.02, 5.0, 1000)
    assert plan["endpoints"] == ["garments", "shop"] and plan["currency"] == "USD"
    shot(page, "consumers-plans")

    # A developer sees no plan form (and the API refuses its forced call).
    token, _ = key_of_role(cloud.http(), "dev", "developer")
    refused = cloud.http(token).post("/v1/plans", json={"name": "cheap"})
    assert refused.status_code == 403, refused.text


def test_a_developer_deploys_a_version_as_a_canary(
    page: Page, live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in (models_service, endpoints_service):  # stand-in model files, never loaded
        monkeypatch.setattr(module, "require_loadable", lambda *a, **k: None)
    url, cloud = live_server.url, live_server.cloud
    admin = cloud.http()
    recorded_endpoint(admin)  # shop: m:1 with m:2 as a canary
    assert admin.post("/v1/endpoints/shop/promote").status_code == 200  # m:2 serves alone
    token, _ = key_of_role(admin, "dev", "developer")
    sign_in(page, url, token)

    page.goto(url + "/models/m/versions/1")
    deploy = page.locator("#deploy-form")
    deploy.get_by_label("Endpoint name").fill("shop")
    deploy.get_by_label("Canary share of traffic").fill("100")
    deploy.get_by_role("button", name="Deploy m:1").click()
    expect(page.locator("#deploy-error")).to_contain_text("above 0 and below 100")

    expect_refusals(page, "/v1/endpoints")
    deploy.get_by_label("Endpoint name").fill("fresh")  # no endpoint to be a canary beside
    deploy.get_by_label("Canary share of traffic").fill("25")
    deploy.get_by_role("button", name="Deploy m:1").click()
    expect(page.locator("#deploy-error")).to_contain_text("Not deployed: ")
    assert admin.get("/v1/endpoints/fresh").status_code == 404

    deploy.get_by_label("Endpoint name").fill("shop")
    deploy.get_by_role("button", name="Deploy m:1").click()
    expect(page).to_have_url(url + "/endpoints/shop")
    expect(page.locator("dl.facts").first).to_contain_text("m:1 at 25")
    ep = admin.get("/v1/endpoints/shop").json()
    assert ep["model_label"] == "m:2" and ep["canary"]["label"] == "m:1"
    assert ep["canary"]["percent"] == 25
    expect(page.get_by_role("button", name="Promote canary")).to_be_visible()
    shot(page, "endpoint-canary")
