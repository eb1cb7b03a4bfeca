"""Shared pieces of the browser tests: Debian's Chromium driven by Playwright, a page that
fails its test on any console error (a CSP violation is one), screenshots, and signing in."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Where screenshots land: $GUREUM_SCREENSHOTS (a CI job's artifact folder), else here.
SHOTS = Path(
    os.environ.get("GUREUM_SCREENSHOTS")
    or Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
)
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}

if not CHROMIUM.exists():
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium (make sysdeps)")
    pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium", allow_module_level=True)

from playwright.sync_api import (  # noqa: E402
    Browser,
    ConsoleMessage,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

__all__ = [
    "DESKTOP",
    "PHONE",
    "Browser",
    "Page",
    "expect",
    "expect_refusals",
    "launched",
    "shot",
    "sign_in",
    "watched",
]


@contextmanager
def launched() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = _launch(p)
        try:
            yield chromium
        finally:
            chromium.close()


def _launch(p: Playwright) -> Browser:
    return p.chromium.launch(executable_path=str(CHROMIUM), headless=True)


# Per page: URL endings whose refusals (4xx) the test provokes on purpose and checks itself.
_EXPECTED: dict[int, list[str]] = {}


def expect_refusals(page: Page, url_ending: str) -> None:
    """The test will provoke a refusal from a URL ending so: the browser's log of it is not a
    failure (what the page shows of it is the test's to check)."""
    _EXPECTED.setdefault(id(page), []).append(url_ending)


@contextmanager
def watched(browser: Browser) -> Iterator[Page]:
    """A fresh context (no cookies); console errors fail the test, except the 401 of a refused
    sign-in form (members' or the portal's)."""
    context = browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
    tab = context.new_page()
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        where = message.location.get("url", "")
        expected = ("/login", *_EXPECTED.get(id(tab), []))  # a refused key answers 401
        if message.type == "error" and not where.endswith(expected):
            errors.append(f"{message.text} ({message.location.get('url')})")

    tab.on("console", on_console)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield tab
    finally:
        _EXPECTED.pop(id(tab), None)
        context.close()
    assert errors == [], errors


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, url: str, key: str) -> None:
    """The members' form, reached the way a person reaches it: the overview sends you there."""
    page.goto(url + "/")
    expect(page).to_have_url(url + "/login?next=%2F")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
