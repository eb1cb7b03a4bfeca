"""The story of DESIGN.md from the browser alone (issue 14's golden path), in Debian's Chromium
driven by Playwright against a server of its own on the session's Ray cluster: a wrong key is
refused at sign-in; the member signs in, pushes a folder of pictures as a dataset through the
file input, starts a tiny image-generator job from the jobs page and watches it finish,
promotes the model version, deploys it, generates pictures in the endpoint's "try it" panel and
sees that call as their own usage on the costs page. A viewer then sees the same pages without
a single action form, and the API refuses a viewer's forced call. A screenshot of each page
lands in test-artifacts/screenshots/ (or $GUREUM_SCREENSHOTS), named golden-NN-*.

Runs on Ray (``pytest -m ray``; wrap it in ``flock /tmp/ray.lock`` on a shared machine). The
browser-only checks of the upload form (the in-page SHA-256 and a refused upload that makes no
version) need no cluster.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from gureum import samples
from gureum.client import Client
from gureum.server.services.bootstrap import bootstrap
from tests.conftest import LiveServer
from tests.e2e.browser_helpers import Browser, Page, expect, expect_refusals, shot, sign_in, watched
from tests.integration.test_serving_ray import live_on_ray, wait_for

PARAMS = "epochs=1\nsamples_per_class=2"  # the fastest generator that still trains and serves
RAY_WAIT_MS = 240_000  # a job or a replica on a shared 2-core machine


def _nav(page: Page, name: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name=name).click()


def _csrf(page: Page) -> str:
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert token
    return token


def _reload_until(page: Page, selector: str, text: str, timeout_s: float) -> None:
    """A server-rendered value that changes on the server: reload until it reads ``text``."""

    def shown() -> bool:
        page.reload()
        return text in " ".join(page.locator(selector).all_text_contents())  # no wait

    wait_for(shown, timeout_s, f"{selector} to read {text!r}")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_whole_story_from_the_browser(
    browser: Browser, ray_cluster: str, tmp_path: Path
) -> None:
    pictures = tmp_path / "garments"
    samples.write("garments", pictures, count=40)
    with live_on_ray(tmp_path / "cloud", ray_cluster) as live:
        token = bootstrap(live.app.state.db)
        assert token is not None
        url = f"http://127.0.0.1:{live.settings.port}"
        with watched(browser) as page:
            _member_story(page, url, token, pictures)
        viewer = Client(url, token).keys.create("viewer-laptop", role="viewer").token
        with watched(browser) as page:
            _viewer_sees_but_cannot_act(page, url, viewer)


def _member_story(page: Page, url: str, token: str, pictures: Path) -> None:
    # A wrong key is refused at the form, with no session.
    sign_in(page, url, "gk_000000000000_wrong")
    expect(page.get_by_role("alert")).to_contain_text("That API key was not accepted")
    assert page.context.cookies() == []
    shot(page, "golden-01-sign-in-refused")
    page.get_by_label("API key").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
    shot(page, "golden-02-overview")

    # 1. Push the picture folder as a dataset version, through the folder input.
    _nav(page, "Datasets")
    form = page.locator("#upload-form")
    form.get_by_label("Dataset name").fill("garments")
    form.get_by_label("A folder").set_input_files(pictures)
    form.get_by_label("Message").fill("our designs")
    shot(page, "golden-03-datasets-upload")
    form.get_by_role("button", name="Push").click()
    expect(page).to_have_url(url + "/datasets/garments/versions/1", timeout=60_000)
    expect(page.get_by_role("heading", name=re.compile("garments:1"))).to_be_visible()
    expect(page.locator("#files")).to_contain_text("dress/")  # class folders kept
    shot(page, "golden-04-dataset-version")

    # 2. Train an image generator on it from the jobs page and watch it finish.
    _nav(page, "Jobs")
    form = page.locator("#train-form")
    page.locator("#tr-recipe").select_option("image-generator")
    expect(page.locator('[data-recipe-params="image-generator"]')).to_contain_text("epochs")
    page.locator("#tr-dataset").fill("garments:1")
    page.locator("#tr-model").fill("studio")
    page.locator("#tr-params").fill(PARAMS)
    shot(page, "golden-05-jobs-start")
    form.get_by_role("button", name="Start job").click()
    expect(page).to_have_url(re.compile(re.escape(url) + r"/jobs/[\w-]+$"))
    expect(page.locator("#job-state")).to_have_text("succeeded", timeout=RAY_WAIT_MS)
    expect(page.locator("#job-model")).to_have_text("studio:1")
    shot(page, "golden-06-job-finished")

    # 3. Promote the version (the gate's verdict is shown), then deploy it.
    _nav(page, "Models")
    page.get_by_role("link", name="studio", exact=True).click()
    page.get_by_role("link", name="studio:1", exact=True).click()
    expect(page).to_have_url(url + "/models/studio/versions/1")
    page.get_by_role("button", name="Promote to production").click()
    expect(page.locator("#stage-now")).to_have_text("production")
    expect(page.locator("#verdict-summary")).to_contain_text("is now in production")
    deploy = page.locator("#deploy-form")
    deploy.get_by_label("Endpoint name").fill("studio")
    deploy.get_by_label("CPUs per replica").fill("0.5")
    shot(page, "golden-07-model-promoted")
    deploy.get_by_role("button", name=re.compile("Deploy studio:1")).click()
    expect(page).to_have_url(url + "/endpoints/studio")
    expect(page.locator("#ep-state")).to_have_text("ready", timeout=RAY_WAIT_MS)  # no reload
    shot(page, "golden-08-endpoint-ready")

    # 4. Try it: pictures generated through the control plane, as the member.
    panel = page.locator("#try")
    panel.get_by_label("Class").fill("dress")
    panel.get_by_label("Pictures").fill("3")
    panel.get_by_role("button", name="Run").click()
    expect(page.locator("#try-images img")).to_have_count(3, timeout=120_000)
    expect(page.locator("#try-meta")).to_contain_text("metered as member:admin")
    assert page.locator("#try-images img").first.evaluate("i => i.naturalWidth") > 0
    shot(page, "golden-09-try-it")
    # Refused input is said in words, on the panel.
    expect_refusals(page, "/v1/endpoints/studio/try")
    panel.get_by_label("Class").fill("no-such-class")
    panel.get_by_role("button", name="Run").click()
    expect(page.locator("#try-error")).to_be_visible()

    # 5. The usage: the call is the member's own, metered (not charged), on the costs page.
    _nav(page, "Costs")
    _reload_until(page, "#consumer-revenue", "member:admin", 60)
    expect(page.locator("#consumer-revenue")).to_contain_text("member:admin")
    shot(page, "golden-10-usage")


def _viewer_sees_but_cannot_act(page: Page, url: str, key: str) -> None:
    sign_in(page, url, key)
    expect(page.locator(".role")).to_have_text("viewer")
    for path, form, name in [
        ("/datasets", "#upload-form", "datasets"),
        ("/jobs", "#train-form", "jobs"),
        ("/models/studio/versions/1", "#deploy-form", "model"),
        ("/endpoints/studio", "#try-form", "endpoint"),
    ]:
        page.goto(url + path)
        expect(page.locator("main h1")).to_be_visible()
        expect(page.locator(form)).to_have_count(0)
        expect(
            page.locator("main button[data-promote], main button[type=submit].primary")
        ).to_have_count(0)
        shot(page, f"golden-11-viewer-{name}")
    # Forced through the API with the viewer's own session and CSRF token: refused.
    forced = page.request.post(
        url + "/v1/endpoints/studio/try",
        data={"inputs": [{"class": "dress"}]},
        headers={"X-CSRF-Token": _csrf(page)},
    )
    assert forced.status == 403, forced.text()
    assert forced.json()["error"]["code"] == "forbidden"


# -- the upload form without a cluster -------------------------------------------------------


def test_the_upload_form_hashes_in_the_page_and_a_refused_push_makes_no_version(
    page: Page, live_server: LiveServer, tmp_path: Path
) -> None:
    url = live_server.url
    sign_in(page, url, live_server.cloud.admin_key)
    page.goto(url + "/datasets")
    # The in-page SHA-256 (used where WebCrypto is missing or a file is large) agrees with
    # hashlib, across block boundaries and split updates.
    data = bytes((i * 7 + 3) & 255 for i in range(200_003))
    for size, split in [(0, 0), (3, 1), (55, 20), (56, 56), (64, 63), (200_003, 1000)]:
        got = page.evaluate(
            """([size, split]) => {
                const d = new Uint8Array(size);
                for (let i = 0; i < size; i++) d[i] = (i * 7 + 3) & 255;
                const sha = new Upload.Sha256().update(d.subarray(0, split));
                return sha.update(d.subarray(split)).hex();
            }""",
            [size, split],
        )
        assert got == hashlib.sha256(data[:size]).hexdigest(), size

    form = page.locator("#upload-form")
    form.get_by_role("button", name="Push").click()  # nothing chosen: said, nothing sent
    expect(page.locator("#up-error")).to_contain_text("dataset name must be")
    form.get_by_label("Dataset name").fill("broken")
    form.get_by_role("button", name="Push").click()
    expect(page.locator("#up-error")).to_contain_text("Choose a folder or files")

    # An "archive" that is not one: the server refuses it and no version exists.
    fake = tmp_path / "designs.zip"
    fake.write_bytes(b"these are not zip bytes" * 10)
    expect_refusals(page, "/v1/datasets/broken/versions/archive?format=zip&message=")
    form.get_by_label("Or files").set_input_files(fake)
    form.get_by_role("button", name="Push").click()
    expect(page.locator("#up-error")).to_be_visible()
    expect(page.locator("#up-status")).to_have_text("No version was made.")
    shot(page, "golden-00-upload-refused")
    assert live_server.client().datasets.list() == []
