"""The data flywheel from an endpoint's page in a real browser (Debian's Chromium, headless,
Playwright) against a server this test starts: a developer sees what was captured and what
consumers said, changes the capture settings (a refused value is said in words and changes
nothing) and curates the next dataset version from the captured calls; a viewer sees the
numbers without the forms. Captured calls are shipped as replicas ship them. No Ray."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest

from gureum.server.services import endpoints as endpoints_service
from gureum.server.services import models as models_service
from tests.conftest import LiveServer
from tests.e2e.browser_helpers import Page, expect, expect_refusals, shot, sign_in
from tests.integration.test_curate_api import Traffic
from tests.integration.web_helpers import LiveReplicas, key_of_role


@pytest.fixture
def captured(live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Traffic:
    """Endpoint ``shop`` serving ``returns:1`` (trained on orders:1) with three captured calls,
    one rated 2 and labelled by its consumer."""
    for module in (models_service, endpoints_service):  # stand-in model files, never loaded
        monkeypatch.setattr(module, "require_loadable", lambda *a, **k: None)
    cloud = live_server.cloud
    folder = tmp_path / "orders"
    folder.mkdir()
    with open(folder / "orders.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(
            [["price", "garment", "returned"]]
            + [[10 + i, "dress" if i % 2 else "shirt", "no" if i % 3 else "yes"] for i in range(30)]
        )
    cloud.client().datasets.push("orders", folder)
    admin = cloud.http()
    data = b"returns-tabular"
    digest = hashlib.sha256(data).hexdigest()
    assert admin.put(f"/v1/blobs/{digest}", content=data).status_code in (200, 201)
    files = [{"path": "model.joblib", "sha256": digest, "size": len(data)}]
    body = {"files": files, "recipe": "tabular", "params": {"target": "returned"}}
    made = admin.post("/v1/models/returns/versions", json={**body, "dataset": "orders:1"})
    assert made.status_code == 201, made.text
    deployed = admin.post("/v1/endpoints", json={"name": "shop", "model": "returns:1"})
    assert deployed.status_code in (200, 201), deployed.text
    traffic = Traffic(LiveReplicas(live_server.cloud), "shop")  # type: ignore[arg-type]
    rated = traffic.calls(
        [
            ({"inputs": [{"price": 99, "garment": "coat"}]}, {"outputs": [{"prediction": "no"}]}),
            ({"inputs": [{"price": 7, "garment": "hat"}]}, {"outputs": [{"prediction": "yes"}]}),
            ({"inputs": [{"price": 5, "garment": "sock"}]}, {"outputs": [{"prediction": "no"}]}),
        ]
    )[0]
    traffic.feedback(rated, rating=2, label="yes")
    return traffic


def test_a_developer_sets_capture_and_curates_the_next_version(
    page: Page, live_server: LiveServer, captured: Traffic
) -> None:
    url, cloud = live_server.url, live_server.cloud
    sign_in(page, url, cloud.admin_key)
    page.goto(url + "/endpoints/shop")
    expect(page.locator("#capture-count")).to_contain_text("3")
    expect(page.locator("#capture-rate")).to_have_text("off")
    expect(page.locator("#feedback-summary")).to_contain_text("1 answer rated or labelled")
    expect(page.locator("#feedback-summary")).to_contain_text("mean rating 2.00 of 5")

    # A share above 1 is refused in the page, before anything is sent; nothing changes.
    page.get_by_text("Change what is captured").click()
    page.get_by_label("Share of calls kept (0 to 1)").fill("2")
    page.get_by_role("button", name="Save capture settings").click()
    problem = page.locator("#capture-form .error")
    expect(problem).to_contain_text("a number from 0 to 1")
    # One the API refuses (a field name with a space) is said in its words.
    expect_refusals(page, "/v1/endpoints/shop/capture")
    page.get_by_label("Share of calls kept (0 to 1)").fill("0.25")
    page.get_by_label("Fields to blank out").fill("email, credit card")
    page.get_by_role("button", name="Save capture settings").click()
    expect(problem).to_contain_text("Not saved: ")
    expect(problem).to_contain_text("redact")
    assert cloud.http().get("/v1/endpoints/shop/capture").json()["config"]["rate"] == 0.0

    page.get_by_label("Fields to blank out").fill("email, card.number")
    page.get_by_label("Keep outputs").uncheck()
    page.get_by_label("Keep records for").fill("30")
    page.get_by_role("button", name="Save capture settings").click()
    expect(page.locator("#capture-rate")).to_have_text("25% of calls")  # reloaded
    config = cloud.http().get("/v1/endpoints/shop/capture").json()["config"]
    assert config == {
        "rate": 0.25,
        "inputs": True,
        "outputs": False,
        "redact": ["email", "card.number"],
        "retention_days": 30,
    }

    # Curating: a filter that leaves no call is refused in words; then the next version.
    page.get_by_text("Curate the next dataset version").click()
    expect(page.get_by_label("Dataset", exact=True)).to_have_value("orders")  # trained on
    expect_refusals(page, "/v1/datasets/orders/curate")
    page.get_by_label("Only calls rated at least").select_option("5")
    page.get_by_role("button", name="Make the version").click()
    expect(page.locator("#curate-form .error")).to_contain_text("No version made: ")
    assert [v.version for v in cloud.client().datasets.versions("orders")] == [1]
    page.get_by_label("Only calls rated at least").select_option("")
    page.get_by_label("Message").fill("week 49 from the browser")
    page.get_by_role("button", name="Make the version").click()
    expect(page.locator("#curated-version")).to_have_text("orders:2")
    shot(page, "endpoint-flywheel")
    ver = cloud.client().datasets.version("orders", 2)
    assert ver.message == "week 49 from the browser"
    assert ver.source is not None and ver.source["endpoint"] == "shop"
    assert ver.source["records"] == 3
    page.locator("#curated-version").click()
    expect(page).to_have_url(url + "/datasets/orders/versions/2")


def test_a_viewer_sees_capture_and_feedback_without_the_forms(
    page: Page, live_server: LiveServer, captured: Traffic
) -> None:
    token, _ = key_of_role(live_server.cloud.http(), "watcher", "viewer")
    sign_in(page, live_server.url, token)
    page.goto(live_server.url + "/endpoints/shop")
    expect(page.locator("#capture-count")).to_contain_text("3")
    expect(page.locator("#feedback-summary")).to_contain_text("mean rating 2.00 of 5")
    expect(page.locator("#capture-form")).to_have_count(0)
    expect(page.locator("#curate-form")).to_have_count(0)
    # The API refuses the viewer whatever the page shows.
    viewer = live_server.client(token)
    with pytest.raises(Exception, match="developer"):
        viewer.datasets.curate("orders", from_endpoint="shop")
