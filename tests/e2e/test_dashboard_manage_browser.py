"""Managing from the browser alone: an admin, signed in with a key through the login form,
switches a consumer's plan and changes its limits (a refused plan said in words), opts it out
of capture, gives it another key shown once that signs in to the portal, and revokes it (then
refused); changes a member's role (the member's key and pages follow at once) and removes
them, and is told in words why the last owner stays. Viewers and developers see none of these
controls, and the API refuses them the same calls."""

from __future__ import annotations

import re

from tests.conftest import LiveServer
from tests.e2e.browser_helpers import Page, expect, expect_refusals, shot, sign_in, watched
from tests.integration.portal_helpers import make_consumer, portal_sign_in
from tests.integration.web_helpers import key_of_role


def _accept_dialogs(page: Page, said: list[str]) -> None:
    """Confirmations are answered yes; what they asked is kept for the test to read."""

    def on_dialog(dialog: object) -> None:
        said.append(dialog.message)  # type: ignore[attr-defined]
        dialog.accept()  # type: ignore[attr-defined]

    page.on("dialog", on_dialog)


def test_an_admin_manages_a_consumer_plan_capture_and_keys(
    page: Page, live_server: LiveServer
) -> None:
    url = live_server.url
    api = live_server.cloud.http()
    make_consumer(api, "acme", price_per_request=0.001)
    made = api.post("/v1/plans", json={"name": "gold", "price_per_request": 0.01, "rate_limit": 9})
    assert made.status_code == 201, made.text
    asked: list[str] = []
    _accept_dialogs(page, asked)
    sign_in(page, url, live_server.cloud.admin_key)
    page.goto(url + "/consumers")
    manage = page.locator('details[data-consumer="acme"]')
    manage.locator("summary").click()

    # A plan that does not exist is said next to the form, and nothing changes.
    expect_refusals(page, "/v1/consumers/acme")
    manage.get_by_label("Switch acme to plan").fill("platinum")
    manage.get_by_role("button", name="Switch plan").click()
    expect(manage.locator('form[data-manage="plan"] .error')).to_contain_text(
        "plan 'platinum' not found"
    )
    assert api.get("/v1/consumers/acme").json()["plan"]["name"] == "acme"
    manage.get_by_label("Switch acme to plan").fill("gold")
    manage.get_by_role("button", name="Switch plan").click()
    expect(page.locator("#consumers")).to_contain_text("gold")
    assert api.get("/v1/consumers/acme").json()["plan"]["rate_limit"] == 9

    # Limits: a plan of its own named after it; gold (maybe another's) is not changed.
    manage = page.locator('details[data-consumer="acme"]')
    manage.locator("summary").click()
    manage.get_by_label("Rate limit, requests per second").fill("fast")
    manage.get_by_role("button", name="Change limits").click()
    expect(manage.locator('form[data-manage="limits"] .error')).to_have_text(
        "Rate limit, requests per second must be a number."
    )
    manage.get_by_label("Rate limit, requests per second").fill("3")
    manage.get_by_role("button", name="Change limits").click()
    expect(page.locator("#consumers")).to_contain_text("3.0/s")
    acme = api.get("/v1/consumers/acme").json()
    assert acme["plan"]["name"] == "acme" and acme["plan"]["rate_limit"] == 3
    assert api.get("/v1/plans/gold").json()["rate_limit"] == 9

    # Capture opt-out, confirmed first.
    manage = page.locator('details[data-consumer="acme"]')
    manage.locator("summary").click()
    manage.get_by_role("button", name="Opt out of capture").click()
    expect(page.locator("#consumers")).to_contain_text("never (opted out)")
    assert api.get("/v1/consumers/acme").json()["capture"] is False
    assert any("Never capture calls of acme" in q for q in asked)

    # Another key: shown once, in the page only; it signs in to the portal.
    manage = page.locator('details[data-consumer="acme"]')
    manage.locator("summary").click()
    manage.get_by_role("button", name="Give acme another key").click()
    token = page.locator("#new-key-token")
    expect(token).to_have_text(re.compile(r"^gck_\S+$"))
    secret = token.inner_text()
    assert secret not in page.url
    listed = api.get("/v1/consumers/acme/keys").json()["items"]
    assert len(listed) == 2
    new_id = next(k["key_id"] for k in listed if secret.startswith("gck_" + k["key_id"]))
    row = manage.locator(f'tr[data-key="{new_id}"]')
    expect(row).to_contain_text("active")
    shot(page, "manage-consumer-new-key")
    portal = live_server.cloud.http(False)
    assert portal_sign_in(portal, secret).status_code == 303

    # Revoked from the page: refused at once.
    row.get_by_role("button", name="Revoke").click()
    expect(row).to_contain_text("revoked")
    assert any(f"Revoke key {new_id} of acme" in q for q in asked)
    assert portal_sign_in(live_server.cloud.http(False), secret).status_code == 401
    page.get_by_role("button", name="I have stored it").click()
    expect(page.locator("#new-key")).to_be_hidden()
    assert secret not in page.content()
    expect(page.locator("#consumers")).to_contain_text("acme")


def test_viewers_and_developers_get_no_consumer_controls_and_the_api_refuses_them(
    page: Page, live_server: LiveServer
) -> None:
    api = live_server.cloud.http()
    make_consumer(api, "acme")
    key_id = api.get("/v1/consumers/acme/keys").json()["items"][0]["key_id"]
    for role in ("viewer", "developer"):
        key, _ = key_of_role(api, role, role)
        as_them = live_server.cloud.http(key)
        assert as_them.patch("/v1/consumers/acme", json={"plan": "acme"}).status_code == 403
        assert as_them.patch("/v1/consumers/acme", json={"capture": False}).status_code == 403
        assert as_them.post("/v1/consumers/acme/keys").status_code == 403
        assert as_them.delete(f"/v1/consumers/acme/keys/{key_id}").status_code == 403
        assert as_them.patch("/v1/users/admin", json={"role": "viewer"}).status_code == 403
        assert as_them.delete("/v1/users/admin").status_code == 403
    sign_in(page, live_server.url, key)  # the developer's
    page.goto(live_server.url + "/consumers")
    expect(page.locator("#consumers")).to_contain_text("acme")
    expect(page.locator("details[data-consumer]")).to_have_count(0)
    expect(page.get_by_role("button", name="Revoke")).to_have_count(0)
    consumer = api.get("/v1/consumers/acme").json()
    assert consumer["capture"] is True and consumer["active_keys"] == 1


def test_an_admin_changes_a_members_role_and_removes_them(
    page: Page, live_server: LiveServer
) -> None:
    url = live_server.url
    api = live_server.cloud.http()
    me = api.get("/v1/users").json()["items"]
    assert [(m["name"], m["role"]) for m in me] == [("admin", "owner")]
    assert api.post("/v1/users", json={"name": "bob", "role": "developer"}).status_code == 201
    made = api.post("/v1/keys", json={"name": "bob laptop", "user": "bob"})
    assert made.status_code == 201, made.text
    bob_key = made.json()["token"]
    bob = live_server.cloud.http(bob_key)
    # A developer's call: refused for its body (422), not for the role.
    assert bob.post("/v1/jobs", json={}).status_code == 422

    asked: list[str] = []
    _accept_dialogs(page, asked)
    sign_in(page, url, live_server.cloud.admin_key)
    page.goto(url + "/admin")
    row = page.locator('tr[data-member="bob"]')
    row.get_by_label("Role of bob").select_option("viewer")
    row.get_by_role("button", name="Change role").click()
    expect(page.locator('tr[data-member="bob"] td').nth(2)).to_have_text("viewer")
    # Bob's key follows at once: a viewer now, refused by the API and shown no forms.
    assert bob.post("/v1/jobs", json={}).status_code == 403
    assert bob.get("/v1/jobs").status_code == 200
    browser = page.context.browser
    assert browser is not None
    with watched(browser) as bobs:
        sign_in(bobs, url, bob_key)
        bobs.goto(url + "/jobs")
        expect(bobs.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()
        expect(bobs.locator("#train-form")).to_have_count(0)
        bobs.goto(url + "/consumers")
        expect(bobs.locator("details[data-consumer]")).to_have_count(0)
        expect_refusals(bobs, "/admin")  # its 403 page, checked here
        response = bobs.goto(url + "/admin")
        assert response is not None and response.status == 403
        expect(bobs.locator("#members")).to_have_count(0)

    # The last owner stays: the API's refusal, in words, next to the control.
    expect_refusals(page, "/v1/users/admin")
    mine = page.locator('tr[data-member="admin"]')
    mine.get_by_label("Role of admin").select_option("admin")
    mine.get_by_role("button", name="Change role").click()
    expect(mine.locator(".error")).to_contain_text("last owner")
    assert any("Make yourself admin?" in q for q in asked)
    expect(mine.locator(".error")).to_be_visible()
    mine.get_by_role("button", name="Remove").click()
    expect(mine.locator(".error")).to_contain_text("make someone else owner first")
    expect(mine.locator(".error")).to_be_visible()
    expect(mine.get_by_role("button", name="Remove")).to_be_enabled()
    assert [m["role"] for m in api.get("/v1/users").json()["items"] if m["name"] == "admin"] == [
        "owner"
    ]
    shot(page, "manage-members-last-owner")

    # An admin below owner is told in words that owners are the owners' to change.
    assert api.post("/v1/users", json={"name": "carol", "role": "admin"}).status_code == 201
    carol = api.post("/v1/keys", json={"name": "carol", "user": "carol"}).json()["token"]
    with watched(browser) as hers:
        _accept_dialogs(hers, [])
        expect_refusals(hers, "/v1/users/admin")
        sign_in(hers, url, carol)
        hers.goto(url + "/admin")
        owner = hers.locator('tr[data-member="admin"]')
        owner.get_by_label("Role of admin").select_option("developer")
        owner.get_by_role("button", name="Change role").click()
        expect(owner.locator(".error")).to_contain_text(
            "Not allowed: only owners can grant or take away the owner role"
        )
    assert api.delete("/v1/users/carol").status_code == 204

    # Removed, confirmed first: bob's key here is revoked.
    page.locator('tr[data-member="bob"]').get_by_role("button", name="Remove").click()
    expect(page.locator('tr[data-member="bob"]')).to_have_count(0)
    assert any("Remove bob from this workspace?" in q for q in asked)
    assert [m["name"] for m in api.get("/v1/users").json()["items"]] == ["admin"]
    assert bob.get("/v1/jobs").status_code == 401
