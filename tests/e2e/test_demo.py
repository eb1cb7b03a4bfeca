"""`gureum demo` as a newcomer runs it: a fresh home, the whole story, then `gureum down`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port

GUREUM = str(Path(sys.executable).with_name("gureum"))


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GUREUM_HOME": str(home)}
    env.pop("GUREUM_URL", None)
    env.pop("GUREUM_API_KEY", None)
    return subprocess.run([GUREUM, *args], env=env, capture_output=True, text=True, timeout=240)


def test_demo_runs_the_story_end_to_end(tmp_path: Path, ray_cluster: str) -> None:
    home = tmp_path / "home"
    port = str(free_port())
    try:
        first = run(home, "demo", "--port", port, "--ray-address", ray_cluster, "-o", "json")
        assert first.returncode == 0, first.stderr
        result = json.loads(first.stdout)
        assert result["dataset"] == "garments:1"
        assert result["pulled_identical"] is True
        assert set(result["classes"]) >= {"shirt", "dress", "trousers", "skirt"}
        assert result["split"]["train"] + result["split"]["validation"] == result["files"]

        # Again, on the running cloud: a new version, and the person-facing output works.
        again = run(home, "demo", "--port", port, "--ray-address", ray_cluster)
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stdout and "garments:2" in again.stdout
        listed = json.loads(run(home, "datasets", "list", "-o", "json").stdout)
        assert [(d["name"], d["latest_version"]) for d in listed] == [("garments", 2)]
    finally:
        down = run(home, "down")
        assert down.returncode == 0, down.stderr
