"""Editing a retrain pipeline and its drift over time in a real browser (Debian's Chromium,
headless, Playwright) against a server this test starts: an admin changes the pipeline from
its page (a refused value is said in words and changes nothing, then the change shows) and
sees the drift chart drawn from the history of captured calls (a stable hour, then a drifted
one); a viewer sees the page and the chart but no edit form. Captured calls are shipped as
replicas ship them. No Ray."""

from __future__ import annotations

import csv
import hashlib
import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from gureum.server.db.base import utcnow
from gureum.server.db.tables_capture import CapturedRequest
from gureum.server.services import endpoints as endpoints_service
from gureum.server.services import models as models_service
from tests.conftest import LiveServer
from tests.e2e.browser_helpers import Page, expect, expect_refusals, shot, sign_in
from tests.integration.test_consumers_api import member_key
from tests.integration.test_curate_api import Traffic
from tests.integration.test_drift_api import HEADER, TRAIN_ROWS, _rows, _send
from tests.integration.trained_models import mark_trained_by_job
from tests.integration.web_helpers import LiveReplicas


@pytest.fixture
def drifting(
    live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> LiveServer:
    """Endpoint ``shop`` serving ``returns:1`` (trained by a job on orders:1) capturing every
    call: 200 like the training rows five hours ago, 200 with higher prices and hats now;
    pipeline ``weekly`` retrains it on drift, paused."""
    for module in (models_service, endpoints_service):  # stand-in model files, never loaded
        monkeypatch.setattr(module, "require_loadable", lambda *a, **k: None)
    cloud = live_server.cloud
    folder = tmp_path / "orders"
    folder.mkdir()
    with open(folder / "orders.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, HEADER)
        writer.writeheader()
        for i, row in enumerate(_rows(0, TRAIN_ROWS)):
            writer.writerow({**row, "returned": ("no", "yes")[i % 3 == 0]})
    cloud.client().datasets.push("orders", folder)
    admin = cloud.http()
    files = [{"path": "model.joblib", "sha256": _blob(admin), "size": 15}]
    body = {"files": files, "recipe": "tabular", "params": {"target": "returned"}}
    made = admin.post("/v1/models/returns/versions", json={**body, "dataset": "orders:1"})
    assert made.status_code == 201, made.text
    mark_trained_by_job(cloud.app.state.db, "returns", 1, {"target": "returned"})
    deployed = admin.post(
        "/v1/endpoints", json={"name": "shop", "model": "returns:1", "capture": {"rate": 1.0}}
    )
    assert deployed.status_code in (200, 201), deployed.text
    traffic = Traffic(LiveReplicas(live_server.cloud), "shop")  # type: ignore[arg-type]
    old = _send(traffic, _rows(1, 200, price=50.0))
    with cloud.app.state.db.write() as s:
        s.execute(
            update(CapturedRequest)
            .where(CapturedRequest.request_id.in_(old))
            .values(time=utcnow() - timedelta(hours=5, minutes=30))
        )
    _send(traffic, _rows(2, 200, price=80.0, hats=0.4))
    pipeline = {
        "name": "weekly",
        "model": "returns",
        "endpoint": "shop",
        "dataset": "orders",
        "on_drift": 0.25,
        "enabled": False,
    }
    created = admin.post("/v1/pipelines", json=pipeline)
    assert created.status_code == 201, created.text
    return live_server


def _blob(admin: object) -> str:
    data = b"returns-tabular"
    digest = hashlib.sha256(data).hexdigest()
    assert admin.put(f"/v1/blobs/{digest}", content=data).status_code in (200, 201)  # type: ignore[attr-defined]
    return digest


def _config(page: Page, key: str) -> str:
    return (
        page.locator("#config dt", has_text=key)
        .locator("xpath=following-sibling::dd[1]")
        .inner_text()
    )


def test_an_admin_edits_the_pipeline_and_sees_drift_over_time(
    page: Page, drifting: LiveServer
) -> None:
    url = drifting.url
    sign_in(page, url, drifting.cloud.admin_key)
    page.goto(url + "/pipelines/weekly")
    expect(page.locator("#triggers")).to_contain_text("paused")
    page.get_by_text("Edit this pipeline").click()
    form = page.locator("#pipeline-edit-form")
    expect(form.get_by_label("Canary share (%)")).to_have_value("10.0")

    # A value the API refuses is said in words in the form, and nothing changes.
    expect_refusals(page, "/v1/pipelines/weekly")
    form.get_by_label("On a schedule").fill("61 * * * *")
    form.get_by_role("button", name="Save changes").click()
    expect(form.locator(".error")).to_contain_text("schedule '61 * * * *'")
    page.reload()
    expect(page.locator("#config")).not_to_contain_text("61 * * * *")

    page.get_by_text("Edit this pipeline").click()
    form.get_by_label("Canary share (%)").fill("30")
    form.get_by_label("On a schedule").fill("0 3 * * 1")
    form.get_by_label("Triggers on").check()
    form.get_by_role("button", name="Save changes").click()
    expect(page.locator("#triggers")).to_have_text("on")  # the page reloads with the change
    assert _config(page, "canary_percent") == "30.0"
    assert _config(page, "schedule") == "0 3 * * 1"
    expect(page.locator("#facts")).not_to_contain_text("Next scheduled —")
    shot(page, "pipeline-edited")

    page.get_by_role("link", name="its drift").click()
    expect(page).to_have_url(url + "/pipelines/weekly/drift")
    expect(page.locator("#drift-verdict")).to_have_text("drift")
    chart = page.locator("#drift-chart")
    expect(chart.locator("canvas")).to_have_count(1)
    expect(chart).to_have_attribute("data-points", "2")  # the stable hour and the drifted one
    expect(chart).to_have_attribute("data-drawn-at", re.compile(r"^\d"))
    expect(chart.locator(".u-legend")).to_contain_text("PSI price")
    expect(chart.locator(".u-legend")).to_contain_text("trigger 0.25")
    expect(page.locator("#drift-chart-empty")).to_be_hidden()
    shot(page, "pipeline-drift-chart")


def test_a_viewer_sees_the_chart_but_no_edit_form(page: Page, drifting: LiveServer) -> None:
    url = drifting.url
    sign_in(page, url, member_key(drifting.cloud, "vera", "viewer"))
    page.goto(url + "/pipelines/weekly")
    expect(page.get_by_role("heading", name="Pipeline weekly")).to_be_visible()
    expect(page.locator("#config")).to_contain_text("10.0")
    expect(page.locator("#pipeline-edit-form")).to_have_count(0)
    expect(page.get_by_text("Edit this pipeline")).to_have_count(0)
    page.goto(url + "/pipelines/weekly/drift")
    expect(page.locator("#drift-chart canvas")).to_have_count(1)
    expect(page.locator("#drift-chart")).to_have_attribute("data-points", "2")
    shot(page, "pipeline-drift-viewer")


def test_a_developer_creates_and_deletes_a_pipeline_from_the_pages(
    page: Page, drifting: LiveServer
) -> None:
    url, cloud = drifting.url, drifting.cloud
    sign_in(page, url, member_key(cloud, "dana", "developer"))
    page.goto(url + "/pipelines")
    page.get_by_text("Create a retrain pipeline").click()
    form = page.locator("#pipeline-form")  # it has a field named "dataset" (once hid data-post)
    form.get_by_label("Name", exact=True).fill("nightly")
    form.get_by_label("Model to retrain").fill("returns")
    form.get_by_label("Endpoint it serves on").fill("shop")
    form.get_by_label("Dataset the curated versions go to").fill("orders")
    form.get_by_label("After this many new feedback items").fill("50")
    form.get_by_role("button", name="Create pipeline").click()
    expect(page).to_have_url(url + "/pipelines/nightly")
    assert cloud.client().pipelines.get("nightly").config.after_labels == 50

    # Deleting asks first; a run in progress is refused in words and nothing is deleted.
    started = cloud.http().post("/v1/pipelines/nightly/runs")
    assert started.status_code == 202, started.text
    page.reload()
    expect_refusals(page, "/v1/pipelines/nightly")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete pipeline").click()
    expect(page.locator("#pipeline-delete-error")).to_contain_text("in progress")
    assert cloud.http().get("/v1/pipelines/nightly").status_code == 200
    run = cloud.http().post("/v1/pipelines/nightly/runs/1/cancel")
    assert run.status_code == 200, run.text
    page.reload()
    page.once("dialog", lambda dialog: dialog.dismiss())  # asked, and said no: nothing happens
    page.get_by_role("button", name="Delete pipeline").click()
    assert cloud.http().get("/v1/pipelines/nightly").status_code == 200
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete pipeline").click()
    expect(page).to_have_url(url + "/pipelines")
    expect(page.get_by_role("link", name="nightly", exact=True)).to_have_count(0)
    assert cloud.http().get("/v1/pipelines/nightly").status_code == 404
