"""The costs, pipelines and admin pages in a real browser (Debian's Chromium, headless,
Playwright) against a server this test starts: an admin signs in, sees the month's spend and
the capacity planner's chart, sets the workspace's budget (a refused value said in words, then
a good one shown with its 80% warning), starts a pipeline run and follows it to its steps,
and revokes a key; a viewer sees the same pages without their buttons. Screenshots land in
test-artifacts/screenshots/. No Ray: the endpoint is recorded and its compute written to the
ledger as the controllers write it."""

from __future__ import annotations

import pytest

from gureum.server.services import endpoints as endpoints_service
from gureum.server.services import models as models_service
from tests.conftest import LiveServer
from tests.e2e.browser_helpers import (
    PHONE,
    Page,
    expect,
    expect_refusals,
    shot,
    sign_in,
)
from tests.integration.test_consumers_api import member_key
from tests.integration.test_web_pages_ops import spend
from tests.integration.trained_models import mark_trained_by_job
from tests.integration.web_helpers import key_of_role, recorded_endpoint


@pytest.fixture
def flywheel(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> LiveServer:
    """Endpoint ``shop`` serving m:1 (as if a job trained it), pipeline ``weekly`` retraining
    it, and 85 of compute spent this month."""
    for module in (models_service, endpoints_service):  # stand-in model files, never loaded
        monkeypatch.setattr(module, "require_loadable", lambda *a, **k: None)
    cloud = live_server.cloud
    admin = cloud.http()
    recorded_endpoint(admin)
    mark_trained_by_job(cloud.app.state.db, "m", 1, {"target": "label"})
    body = {"name": "weekly", "model": "m", "endpoint": "shop", "dataset": "orders"}
    created = admin.post("/v1/pipelines", json=body)
    assert created.status_code == 201, created.text
    spend(cloud, 85.0)
    return live_server


def test_an_admin_sets_the_budget_and_starts_a_pipeline_run(
    page: Page, flywheel: LiveServer
) -> None:
    url = flywheel.url
    sign_in(page, url, flywheel.cloud.admin_key)
    main = page.get_by_role("navigation", name="Main")
    main.get_by_role("link", name="Costs").click()
    expect(page).to_have_url(url + "/costs")
    expect(page.get_by_role("heading", name="Costs and budget")).to_be_visible()
    expect(page.locator("#endpoint-costs")).to_contain_text("gen")  # its 85 of compute
    expect(page.locator("#budget-monthly")).to_have_text("none")
    expect(page.locator("#plan-chart canvas")).to_have_count(1)  # the planner's demand by hour

    # A value the API refuses is said in words next to the form.
    expect_refusals(page, "/v1/workspaces/default/budget")
    page.get_by_label("Most one job may cost").fill("0")
    page.get_by_role("button", name="Save budget").click()
    expect(page.locator("#budget-form-error")).to_contain_text("per_job")
    page.get_by_label("Monthly limit").fill("-3")
    page.get_by_role("button", name="Save budget").click()
    expect(page.locator("#budget-form-error")).to_contain_text("must be a number of 0 or more")

    page.get_by_label("Monthly limit").fill("100")
    page.get_by_label("Most one job may cost").fill("10")
    page.get_by_role("button", name="Save budget").click()
    expect(page.locator("#budget-monthly")).to_have_text("100.00 USD")
    expect(page.locator("#budget-per-job")).to_have_text("10.00 USD")
    expect(page.locator("#budget-state")).to_have_text("warning")  # 85 of 100
    expect(page.locator("#budget-warning")).to_be_visible()
    expect(page.locator("#budget-events tbody tr").first).to_be_visible()
    expect(page.locator("#plan-chart canvas")).to_have_count(1)
    shot(page, "costs")
    page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    page.wait_for_timeout(400)  # the chart follows the new width (debounced)
    shot(page, "costs-phone")
    page.set_viewport_size({"width": 1280, "height": 800})

    main.get_by_role("link", name="Pipelines").click()
    page.get_by_role("link", name="weekly", exact=True).click()
    expect(page).to_have_url(url + "/pipelines/weekly")
    expect(page.get_by_text("No runs")).to_be_visible()
    page.get_by_role("button", name="Start a run").click()
    expect(page.locator("#runs tbody tr")).to_have_count(1)  # the page reloads with it
    page.locator("#runs").get_by_role("link", name="run 1").click()
    expect(page).to_have_url(url + "/pipelines/weekly/runs/1")
    expect(page.locator("#steps tbody tr")).to_have_count(7)
    expect(page.locator("#steps tbody tr").first).to_contain_text("curate")
    expect(page.locator("#events tbody tr").first).to_contain_text("started: by hand (admin)")
    shot(page, "pipeline-run")
    page.goto(url + "/pipelines/weekly")
    shot(page, "pipeline")


def test_an_admin_revokes_a_key_and_reads_the_audit_log(
    page: Page, live_server: LiveServer
) -> None:
    url = live_server.url
    _, key_id = key_of_role(live_server.cloud.http(), "laptop", "developer")
    sign_in(page, url, live_server.cloud.admin_key)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
    expect(page.locator("#members tbody tr")).to_have_count(1)
    page.get_by_role("link", name="API keys").click()
    row = page.locator(f'tr[data-key="{key_id}"]')
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke").click()
    expect(row).to_contain_text("revoked")
    shot(page, "admin-keys")
    page.get_by_role("link", name="Audit log").click()
    page.get_by_label("Action").fill("key.revoke")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#audit tbody tr")).to_have_count(1)
    expect(page.locator("#audit tbody tr").first).to_contain_text(key_id)
    shot(page, "admin-audit")


def test_a_viewer_sees_costs_and_pipelines_without_their_buttons(
    page: Page, flywheel: LiveServer
) -> None:
    url = flywheel.url
    sign_in(page, url, member_key(flywheel.cloud, "vera", "viewer"))
    expect(page.locator(".role")).to_have_text("viewer")
    expect(
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin")
    ).to_have_count(0)
    page.goto(url + "/costs")
    expect(page.locator("#budget-monthly")).to_have_text("none")
    expect(page.locator("#budget-form")).to_have_count(0)
    page.goto(url + "/pipelines/weekly")
    expect(page.get_by_role("heading", name="Pipeline weekly")).to_be_visible()
    expect(page.get_by_role("button", name="Start a run")).to_have_count(0)
    expect_refusals(page, "/admin")  # its 403 page, checked below
    page.goto(url + "/admin")
    expect(page.get_by_role("alert")).to_contain_text("owners and admins")
    shot(page, "admin-as-viewer")
