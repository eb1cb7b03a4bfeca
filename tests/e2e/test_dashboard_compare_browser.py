"""Runs compared side by side, sample grids and a new API key in a real browser (Debian's
Chromium, headless, Playwright) against a server this test starts: a member ticks two jobs in
the list and compares them (final metrics with the best marked, one chart per metric with a
line per run, their sample grids), the comparison's URL opens the same page; an admin creates
a key and sees its secret once, never in the URL nor after a reload; a viewer compares but has
no admin page. Screenshots land in test-artifacts/screenshots/. No Ray: the runs' metrics and
grids are reported as a running attempt reports them."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import LiveServer
from tests.e2e.browser_helpers import PHONE, Page, expect, expect_refusals, shot, sign_in
from tests.integration.page_helpers import push_table
from tests.integration.test_web_pages_compare import png, trained
from tests.integration.web_helpers import key_of_role


def two_runs(server: LiveServer, tmp_path: Path) -> list[str]:
    cloud = server.cloud
    push_table(cloud.client(), tmp_path)
    grids = {"samples/epoch-0001.png": png((200, 30, 30)), "samples/all.png": png((30, 200, 30))}
    first = trained(cloud, {"max_depth": 3}, [0.9, 0.5], {"accuracy": 0.8, "loss": 0.5}, grids)
    second = trained(
        cloud,
        {"max_depth": 8},
        [0.8, 0.6, 0.7],
        {"accuracy": 0.9, "loss": 0.7},
        {"samples/epoch-0003.png": png((30, 30, 200))},
    )
    return [first, second]


def test_a_member_compares_two_runs_from_the_jobs_list(
    page: Page, live_server: LiveServer, tmp_path: Path
) -> None:
    url = live_server.url
    first, second = two_runs(live_server, tmp_path)
    sign_in(page, url, live_server.cloud.admin_key)
    page.goto(url + "/jobs")
    page.get_by_label(f"Compare {first}").check()
    page.get_by_label(f"Compare {second}").check()
    page.get_by_role("button", name="Compare selected").click()
    expect(page.get_by_role("heading", name="Compare 2 runs")).to_be_visible()
    href = page.locator("#compare-link").get_attribute("href") or ""
    assert href in (f"/jobs/compare?ids={first},{second}", f"/jobs/compare?ids={second},{first}")
    link = url + href

    final = page.locator("#final-metrics tbody tr")
    expect(final.nth(0)).to_contain_text("0.9 best")  # accuracy: more is better
    expect(final.nth(1).locator(".best-cell")).to_have_text("0.5 best")  # loss: less is better
    # One chart per metric the runs logged (here: loss), one line per run.
    expect(page.locator("#compare")).to_have_attribute("data-charts", "1")
    expect(page.locator("#curves figure")).to_have_count(1)
    expect(page.locator("#curves canvas")).to_have_count(1)
    expect(page.locator("#curves .u-legend .u-series")).to_have_count(3)  # step + 2 runs
    # Sample grids side by side: the final grid of one, the latest epoch's of the other.
    grids = page.locator("#grids img")
    expect(grids).to_have_count(2)
    expect(page.locator("#grids")).to_contain_text("epoch 3")
    expect(page.locator("#grids")).to_contain_text("final samples")
    loaded = grids.evaluate_all("(imgs) => imgs.map((i) => i.complete && i.naturalWidth > 0)")
    assert loaded == [True, True]
    shot(page, "compare")

    # The URL is the comparison: opened fresh, it shows the same runs.
    page.goto(link)
    expect(page.locator("#runs thead")).to_contain_text(first)
    expect(page.locator("#curves canvas")).to_have_count(1)
    page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    shot(page, "compare-phone")

    # The job page shows its grids (newest epoch first) and links each output for download.
    page.goto(f"{url}/jobs/{first}")
    expect(page.locator("#samples figure")).to_have_count(2)
    expect(page.locator("#samples figcaption").first).to_contain_text("final samples")
    expect(page.locator("#outputs a")).to_have_count(2)
    expect(page.locator("#job-preemptible")).to_contain_text("yes")
    expect(page.locator("#job-preempted")).to_have_text("never")


def test_an_admin_creates_a_key_and_sees_it_once(page: Page, live_server: LiveServer) -> None:
    url = live_server.url
    sign_in(page, url, live_server.cloud.admin_key)
    page.goto(url + "/admin/keys")
    page.get_by_label("Name", exact=True).fill("ci")
    page.get_by_label("Expires after days (empty: never)").fill("7")
    page.get_by_role("button", name="Create key").click()
    token = page.locator("#new-key-token")
    expect(token).to_have_text(re.compile(r"^gk_\S+$"))
    secret = token.inner_text()
    assert secret.startswith("gk_")
    assert secret not in page.url
    expect(page.locator("#keys tbody tr").first).to_contain_text("ci")
    shot(page, "admin-new-key")
    # The key works, and is never shown again.
    assert live_server.cloud.http(secret).get("/v1/whoami").status_code == 200
    page.reload()
    expect(page.locator("#new-key")).to_be_hidden()
    assert secret not in page.content()

    # A refused value is said in words next to the form.
    expect_refusals(page, "/v1/keys")
    page.get_by_label("Name", exact=True).fill("too high")
    page.get_by_label("For user (empty: you)").fill("nobody")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#key-form .error")).to_contain_text("nobody")
    expect(page.locator("#new-key")).to_be_hidden()


def test_a_viewer_compares_but_has_no_admin_forms(
    page: Page, live_server: LiveServer, tmp_path: Path
) -> None:
    url = live_server.url
    first, second = two_runs(live_server, tmp_path)
    viewer, _ = key_of_role(live_server.cloud.http(), "watcher", "viewer")
    sign_in(page, url, viewer)
    page.goto(f"{url}/jobs/compare?ids={first},{second}")
    expect(page.locator("#curves canvas")).to_have_count(1)
    page.goto(url + "/pipelines")
    expect(page.locator("#pipeline-form")).to_have_count(0)
    expect_refusals(page, "/admin/keys")
    page.goto(url + "/admin/keys")
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    expect(page.locator("#key-form")).to_have_count(0)
