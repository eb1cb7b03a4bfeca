"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer


@pytest.fixture
def env(live_server: LiveServer, tmp_path: Path) -> dict[str, str]:
    return {
        "GUREUM_URL": live_server.url,
        "GUREUM_API_KEY": live_server.cloud.admin_key,
        "GUREUM_HOME": str(tmp_path / "cli-home"),
    }


# The browser tests' Chromium (one per module) and tab (one per test). browser_helpers is
# imported only when a test asks for them: it skips its module where Chromium is missing.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from tests.e2e.browser_helpers import launched

    with launched() as chromium:
        yield chromium


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies); console errors (a CSP violation is one) fail it."""
    from tests.e2e.browser_helpers import watched

    with watched(browser) as tab:
        yield tab
