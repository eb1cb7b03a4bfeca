"""A workspace's limits from the admin page in a real browser (Debian's Chromium, headless,
Playwright) against a server this test starts: its owner (the first user, a site admin) sets
its quotas and guaranteed share and creates another workspace; refusals are said in words and
change nothing; an admin who is not an owner sees the limits without the forms. No Ray."""

from __future__ import annotations

from tests.conftest import LiveServer
from tests.e2e.browser_helpers import Page, expect, expect_refusals, shot, sign_in


def test_the_owner_sets_quotas_and_share_and_creates_a_workspace(
    page: Page, live_server: LiveServer
) -> None:
    url, cloud = live_server.url, live_server.cloud
    admin = cloud.http()
    sign_in(page, url, cloud.admin_key)
    page.goto(url + "/admin")
    expect(page.locator("#quota-cpus")).to_have_text("no limit")
    expect(page.locator("#share")).to_contain_text("none")

    quotas = page.locator("#quota-form")
    expect_refusals(page, "/v1/workspaces/default/quotas")
    quotas.get_by_label("CPUs").fill("-1")
    quotas.get_by_role("button", name="Save quotas").click()
    expect(quotas.locator(".error")).to_contain_text("max_cpus")
    assert admin.get("/v1/workspaces/default/quotas").json()["max_cpus"] is None
    quotas.get_by_label("CPUs").fill("4")
    quotas.get_by_label("Jobs at once").fill("2")
    quotas.get_by_role("button", name="Save quotas").click()
    expect(page.locator("#quota-cpus")).to_have_text("4")  # reloaded
    expect(page.locator("#quota-jobs")).to_have_text("2")
    expect(page.locator("#quota-storage")).to_have_text("no limit")
    saved = admin.get("/v1/workspaces/default/quotas").json()
    assert (saved["max_cpus"], saved["max_concurrent_jobs"], saved["max_gpus"]) == (4.0, 2, None)

    share = page.locator("#share-form")
    share.get_by_label("CPUs").fill("2")
    share.get_by_role("button", name="Save share").click()
    expect(page.locator("#share")).to_contain_text("2 CPUs")
    assert admin.get("/v1/workspaces/default/share").json()["cpus"] == 2.0

    made = page.locator("#workspace-form")
    made.get_by_label("Workspace name").fill("studio")
    made.get_by_role("button", name="Create workspace").click()
    expect(page.locator("#workspaces")).to_contain_text("studio")
    expect_refusals(page, "/v1/workspaces")
    page.locator("#workspace-form").get_by_label("Workspace name").fill("studio")
    page.locator("#workspace-form").get_by_role("button", name="Create workspace").click()
    expect(page.locator("#workspace-form .error")).to_contain_text("already exists")
    shot(page, "admin-limits")


def test_an_admin_who_is_not_an_owner_sees_the_limits_without_the_forms(
    page: Page, live_server: LiveServer
) -> None:
    owner = live_server.cloud.http()
    added = owner.post("/v1/users", json={"name": "ops", "role": "admin"})
    assert added.status_code == 201, added.text
    made = owner.post("/v1/keys", json={"name": "ops", "user": "ops", "role": "admin"})
    assert made.status_code == 201, made.text
    token = made.json()["token"]
    sign_in(page, live_server.url, token)
    page.goto(live_server.url + "/admin")
    expect(page.locator("#quota-cpus")).to_have_text("no limit")
    for form in ("#quota-form", "#share-form", "#workspace-form"):
        expect(page.locator(form)).to_have_count(0)
    http = live_server.cloud.http(token)
    refused = http.put("/v1/workspaces/default/quotas", json={"max_cpus": 1})
    assert refused.status_code == 403, refused.text
    assert http.post("/v1/workspaces", json={"name": "mine"}).status_code == 403
