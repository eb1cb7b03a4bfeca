"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright against a
server this test starts. Sign in (and a wrong key refused), the overview, the jobs list and a
job page; a viewer sees no cancel button; an endpoint page's charts; and a job page following a
real job on Ray to its end (the only test here that needs Ray). Screenshots of each page land in
test-artifacts/screenshots/ (gitignored) for people to look at after a run.

No browser is downloaded: Playwright drives /usr/bin/chromium (``apt-get install chromium``;
``make sysdeps`` does it). Without it the tests skip on a workstation and fail in CI.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gureum import samples
from gureum.client import Client
from gureum.compute.ray_backend import RayBackend
from gureum.config import Settings
from gureum.server.app import create_app
from gureum.server.services import endpoints as endpoints_service
from gureum.server.services import models as models_service
from gureum.server.services.bootstrap import bootstrap
from tests.conftest import LiveServer, ThreadedServer, free_port
from tests.e2e.browser_helpers import (
    PHONE,
    Page,
    expect,
    shot,
    sign_in,
)
from tests.integration.web_helpers import key_of_role, queued_job, recorded_endpoint, ship_usage


def test_sign_in_overview_jobs_and_a_job_page(
    page: Page, live_server: LiveServer, tmp_path: Path
) -> None:
    url = live_server.url
    job_id = queued_job(live_server.client(), tmp_path)

    sign_in(page, url, "gk_000000000000_wrong")
    expect(page.get_by_role("alert")).to_contain_text("That API key was not accepted")
    assert page.context.cookies() == []
    shot(page, "sign-in-refused")

    page.get_by_label("API key").fill(live_server.cloud.admin_key)
    page.keyboard.press("Enter")  # the form works from the keyboard
    expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
    expect(page.locator("#cost-total")).to_contain_text("0.00")
    expect(page.get_by_role("link", name=job_id)).to_be_visible()  # queued jobs are listed
    shot(page, "overview")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Jobs").click()
    expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()
    page.get_by_label("State").select_option("succeeded")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(url + "/jobs?state=succeeded")
    expect(page.get_by_text("No succeeded jobs.")).to_be_visible()
    page.goto(url + "/jobs")
    shot(page, "jobs")

    page.get_by_role("link", name=job_id).click()
    expect(page).to_have_url(f"{url}/jobs/{job_id}")
    # Filled by the page's script from the REST API with the session cookie.
    expect(page.locator("#events tbody tr").first).to_contain_text("queued")
    expect(page.get_by_role("button", name="Cancel job")).to_be_visible()
    shot(page, "job")
    page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    shot(page, "job-phone")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator("#job-state")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    assert live_server.client().jobs.get(job_id).state == "cancelled"


def test_a_viewer_sees_no_cancel_button(
    page: Page, live_server: LiveServer, tmp_path: Path
) -> None:
    url = live_server.url
    job_id = queued_job(live_server.client(), tmp_path)
    viewer, _ = key_of_role(live_server.cloud.http(), "viewer-laptop", "viewer")

    sign_in(page, url, viewer)
    expect(page.locator(".role")).to_have_text("viewer")
    page.goto(f"{url}/jobs/{job_id}")
    expect(page.locator("#events tbody tr").first).to_contain_text("queued")
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    shot(page, "job-as-viewer")

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    page.goto(f"{url}/jobs/{job_id}")
    expect(page).to_have_url(f"{url}/login?next=%2Fjobs%2F{job_id}")


def test_an_endpoint_page_draws_its_charts(
    page: Page, live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stand-in model files (the models tests decide what may be served); no cluster serves
    # the endpoint, its traffic is metered usage shipped as replicas ship it.
    for module in (models_service, endpoints_service):
        monkeypatch.setattr(module, "require_loadable", lambda *a, **k: None)
    recorded_endpoint(live_server.cloud.http())
    ship_usage(live_server.cloud)
    url = live_server.url
    sign_in(page, url, live_server.cloud.admin_key)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Endpoints").click()
    page.get_by_role("link", name="shop").click()
    expect(page).to_have_url(url + "/endpoints/shop")
    expect(page.get_by_role("button", name="Promote canary")).to_be_visible()
    # uPlot drew both charts on canvases; the daily one has the shipped days in its legend.
    expect(page.locator("#traffic-chart canvas")).to_have_count(1)
    expect(page.locator("#live-chart canvas")).to_have_count(1)
    expect(page.locator("#versions tbody tr").first).to_contain_text("m:1")
    expect(page.locator("#traffic-empty")).to_be_hidden()
    shot(page, "endpoint")
    page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    page.wait_for_timeout(400)  # the charts follow the new width (debounced)
    shot(page, "endpoint-phone")


@pytest.mark.ray
def test_a_job_page_follows_a_real_job_to_its_end(
    page: Page, ray_cluster: str, settings: Settings, tmp_path: Path
) -> None:
    app = create_app(settings, compute=RayBackend(ray_cluster))
    token = bootstrap(app.state.db)
    assert token is not None
    server = ThreadedServer(app, free_port())  # its lifespan runs the job controller
    client = Client(server.url, token)
    try:
        samples.write("tabular", tmp_path / "orders", count=300)
        client.datasets.push("orders", tmp_path / "orders")
        job = client.jobs.train("tabular", "orders", model="returns", params={"target": "returned"})
        sign_in(page, server.url, token)
        page.goto(f"{server.url}/jobs/{job.id}")
        # Polled by the page, no reload: the state, the logs, the metric chart, the end.
        expect(page.locator("#job-state")).to_have_text("succeeded", timeout=120_000)
        expect(page.locator("#logs")).to_contain_text("classification of 'returned'")
        expect(page.locator("#metric-chart canvas")).to_have_count(1)
        expect(page.locator("#metric-empty")).to_be_hidden()
        expect(page.locator("#job-model")).to_have_text("returns:1")
        expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
        expect(page.locator("#events tbody")).to_contain_text("succeeded")
        shot(page, "job-finished")
    finally:
        for listed in client.jobs.list():  # leave nothing running on the shared cluster
            if listed.state not in ("succeeded", "failed", "cancelled"):
                client.jobs.cancel(listed.id)
        client.close()
        server.stop()
        app.state.db.dispose()
