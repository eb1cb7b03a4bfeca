"""The consumer portal and the models and datasets pages in a real browser (Debian's Chromium,
headless, Playwright) against a server this test starts: a customer signs in with its consumer
key, sees its usage and rotates its key; a member compares two model versions and meets the
gate's verdict when promoting; a dataset version shows its first rows. Screenshots land in
test-artifacts/screenshots/. No Ray: endpoints are recorded and their traffic shipped as
replicas ship it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gureum.server.services import endpoints as endpoints_service
from gureum.server.services import models as models_service
from gureum.serving.access import Denied
from tests.conftest import LiveServer
from tests.e2e.browser_helpers import (
    PHONE,
    Page,
    expect,
    expect_refusals,
    shot,
    sign_in,
)
from tests.integration.page_helpers import gate, model_versions, push_table
from tests.integration.portal_helpers import (
    admitted,
    data_plane_check,
    make_consumer,
    ship_consumer_usage,
)
from tests.integration.web_helpers import recorded_endpoint


def test_a_customer_signs_in_sees_its_usage_and_rotates_its_key(
    page: Page, live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in (models_service, endpoints_service):  # stand-in model files, never loaded
        monkeypatch.setattr(module, "require_loadable", lambda *a, **k: None)
    cloud = live_server.cloud
    admin = cloud.http()
    recorded_endpoint(admin)
    key = make_consumer(admin, "acme", price_per_request=0.5, monthly_quota=100, rate_limit=5)
    ship_consumer_usage(cloud, "acme", 3)
    url = live_server.url

    page.goto(url + "/portal")
    expect(page).to_have_url(url + "/portal/login?next=%2Fportal")
    page.get_by_label("Consumer key").fill(cloud.admin_key)  # a member's key is not one
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("That consumer key was not accepted")
    assert page.context.cookies() == []
    page.get_by_label("Consumer key").fill(key)
    page.keyboard.press("Enter")

    expect(page.get_by_role("heading", name="Usage of acme")).to_be_visible()
    expect(page.locator("#used")).to_have_text("3 requests")
    expect(page.locator("#left")).to_contain_text("97 requests")
    expect(page.locator("#usage tbody tr")).to_have_count(1)
    expect(page.locator("#usage tbody tr").first).to_contain_text("shop")
    expect(page.locator("#invoice-total")).to_have_text("1.50 USD")
    expect(page.locator("#usage-chart canvas")).to_have_count(1)
    # No member navigation in the portal.
    expect(page.get_by_role("navigation", name="Main")).to_have_count(0)
    shot(page, "portal")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Rotate key").click()
    expect(page.locator("#new-key-token")).to_contain_text("gck_")
    new = page.locator("#new-key-token").inner_text().strip()
    expect(page.locator("#key-id")).to_have_text(new.split("_")[1])
    denied = data_plane_check(cloud, key)
    assert isinstance(denied, Denied) and denied.status == 401
    assert admitted(data_plane_check(cloud, new))
    shot(page, "portal-rotated")
    page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    page.reload()  # the session followed the new key
    expect(page.get_by_role("heading", name="Usage of acme")).to_be_visible()
    shot(page, "portal-phone")

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()


def test_models_page_compares_two_versions_and_shows_the_gates_verdict(
    page: Page, live_server: LiveServer
) -> None:
    admin = live_server.cloud.http()
    model_versions(admin, "clf", [{"accuracy": 0.8, "loss": 0.5}, {"accuracy": 0.93, "loss": 0.2}])
    gate(admin, "clf", "accuracy", 0.9)
    url = live_server.url
    sign_in(page, url, live_server.cloud.admin_key)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Models").click()
    page.get_by_role("link", name="clf", exact=True).click()
    expect(page).to_have_url(url + "/models/clf")
    expect(page.locator("#compare tbody tr")).to_have_count(2)
    expect(page.locator("#compare tbody tr").first).to_contain_text("0.93")
    expect(page.locator("#metrics-chart canvas")).to_have_count(1)
    shot(page, "model")

    expect_refusals(page, "/v1/models/clf/versions/1/promote")  # the gate refuses: 409
    page.get_by_role("link", name="clf:1").click()
    expect(page).to_have_url(url + "/models/clf/versions/1")
    page.get_by_role("button", name="Promote to production").click()
    expect(page.locator("#verdict-summary")).to_contain_text("Not promoted")
    expect(page.locator("#checks tbody")).to_contain_text("accuracy = 0.8 fails >= 0.9")
    shot(page, "model-version-gate-failed")

    page.goto(url + "/models/clf/versions/2")
    page.get_by_role("button", name="Promote to production").click()
    expect(page.locator("#verdict-summary")).to_contain_text("is now in production")
    expect(page.locator("#stage-now")).to_have_text("production")
    expect(page.locator("#checks tbody tr")).to_have_count(1)
    shot(page, "model-version-promoted")


def test_a_dataset_version_shows_its_files_and_first_rows(
    page: Page, live_server: LiveServer, tmp_path: Path
) -> None:
    push_table(live_server.client(), tmp_path)
    url = live_server.url
    sign_in(page, url, live_server.cloud.admin_key)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Datasets").click()
    page.get_by_role("link", name="rows", exact=True).click()
    page.get_by_role("link", name="rows:1").click()
    expect(page).to_have_url(url + "/datasets/rows/versions/1")
    expect(page.locator("#preview tbody tr")).to_have_count(5)
    expect(page.locator("#files tbody tr")).to_have_count(1)
    expect(page.locator("#file-count")).to_contain_text("1 (")
    shot(page, "dataset-version")
