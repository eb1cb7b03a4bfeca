"""Selling the API from the browser: an admin adds a consumer on the consumers page and sees
its first key once; the key calls the data plane's portal as that customer; a developer sees
the page without the form; a refused value is said next to the form."""

from __future__ import annotations

import re

from tests.conftest import LiveServer
from tests.e2e.browser_helpers import Page, expect, expect_refusals, shot, sign_in
from tests.integration.web_helpers import key_of_role


def test_an_admin_adds_a_consumer_and_sees_its_key_once(
    page: Page, live_server: LiveServer
) -> None:
    url = live_server.url
    sign_in(page, url, live_server.cloud.admin_key)
    page.goto(url + "/consumers")
    form = page.get_by_role("form", name="Add a consumer")  # the plan form has such fields too
    form.get_by_label("Name", exact=True).fill("acme")
    form.get_by_label("Price per request (empty: free)").fill("0.002")
    form.get_by_label("Rate limit, requests per second (empty: none)").fill("5")
    page.get_by_role("button", name="Add consumer").click()
    token = page.locator("#new-key-token")
    expect(token).to_have_text(re.compile(r"^gck_\S+$"))
    secret = token.inner_text()
    assert secret not in page.url
    shot(page, "consumers-new-consumer")
    consumer = live_server.client().consumers.get("acme")
    assert consumer.plan.price_per_request == 0.002 and consumer.plan.rate_limit == 5
    # The key is the customer's: it signs in to the portal.
    portal = live_server.cloud.http(False)
    signed = portal.post(
        "/portal/login", data={"consumer_key": secret, "next": "/portal"}, follow_redirects=False
    )
    assert signed.status_code == 303, signed.text
    page.get_by_role("button", name="I have stored it").click()
    expect(page.locator("#consumers")).to_contain_text("acme")
    expect(page.locator("#new-key")).to_be_hidden()
    assert secret not in page.content()

    expect_refusals(page, "/v1/consumers")
    page.get_by_label("Name", exact=True).fill("acme")
    page.get_by_role("button", name="Add consumer").click()
    expect(page.locator("#consumer-form .error")).to_contain_text("acme")
    expect(page.locator("#new-key")).to_be_hidden()


def test_a_developer_sees_consumers_without_the_form(page: Page, live_server: LiveServer) -> None:
    developer, _ = key_of_role(live_server.cloud.http(), "dev", "developer")
    sign_in(page, live_server.url, developer)
    page.goto(live_server.url + "/consumers")
    expect(page.get_by_role("heading", name="Consumers", exact=True)).to_be_visible()
    expect(page.locator("#consumer-form")).to_have_count(0)
    refused = live_server.cloud.http(developer).post("/v1/consumers", json={"name": "sneaky"})
    assert refused.status_code == 403
