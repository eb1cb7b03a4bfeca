"""Temporary uploads a crashed server left behind are removed at the next start."""

from __future__ import annotations

import os
import time
from pathlib import Path

from gureum.config import Settings
from gureum.server.app import create_app
from gureum.storage.store import TMP_MAX_AGE_SECONDS, ArtifactStore


def _leftovers(root: Path) -> tuple[Path, Path]:
    tmp = root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    old, fresh = tmp / "old-upload", tmp / "in-flight-upload"
    old.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    stale = time.time() - TMP_MAX_AGE_SECONDS - 60
    os.utime(old, (stale, stale))
    return old, fresh


def test_sweep_removes_only_old_temporary_files(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    old, fresh = _leftovers(tmp_path / "artifacts")
    assert store.sweep_tmp() == 1
    assert not old.exists() and fresh.exists()


def test_server_start_sweeps(tmp_path: Path) -> None:
    home = tmp_path / "home"
    old, fresh = _leftovers(home / "artifacts")
    app = create_app(Settings(home=home))
    app.state.db.dispose()
    assert not old.exists() and fresh.exists()
