"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import LiveServer


@pytest.fixture
def env(live_server: LiveServer, tmp_path: Path) -> dict[str, str]:
    return {
        "GUREUM_URL": live_server.url,
        "GUREUM_API_KEY": live_server.cloud.admin_key,
        "GUREUM_HOME": str(tmp_path / "cli-home"),
    }
