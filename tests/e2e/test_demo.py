"""`gureum demo` as a newcomer runs it: a fresh home, the whole story (training on the cluster
included, `--quick` so it takes seconds), then `gureum down`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

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
    args = ("--port", port, "--ray-address", ray_cluster, "--quick")
    try:
        first = run(home, "demo", *args, "-o", "json")
        assert first.returncode == 0, first.stderr + first.stdout
        result = json.loads(first.stdout)
        assert result["dataset"] == "garments:1"
        assert result["pulled_identical"] is True
        assert set(result["classes"]) >= {"shirt", "dress", "trousers", "skirt"}
        assert result["split"]["train"] + result["split"]["validation"] == result["files"]

        # The server `gureum up` started runs jobs: the generator trained on the cluster,
        # was evaluated and registered, and its sample grid came back.
        train = result["train"]
        assert train["state"] == "succeeded"
        assert train["model_version"] == "garment-generator:1"
        assert train["params"]["epochs"] == 1
        assert {"mmd", "mmd_reference", "class_accuracy", "val_loss"} <= set(train["metrics"])
        grid = Path(train["samples"])
        assert grid == home / "demo" / "generated" / "samples" / "all.png"
        with Image.open(grid) as img:
            assert img.format == "PNG"
            assert img.width > img.height > 0  # a row of samples per class (5 classes, 8 each)

        # Again, on the running cloud: a new version, and the person-facing output works.
        again = run(home, "demo", *args)
        assert again.returncode == 0, again.stderr + again.stdout
        out = again.stdout
        assert "already running" in out and "garments:2" in out
        assert "succeeded" in out and "garment-generator:2" in out
        assert "mmd_reference" in out and str(grid) in out.replace("\n", "")
        listed = json.loads(run(home, "datasets", "list", "-o", "json").stdout)
        assert [(d["name"], d["latest_version"]) for d in listed] == [("garments", 2)]
        models = json.loads(run(home, "models", "list", "-o", "json").stdout)
        assert [(m["name"], m["latest_version"]) for m in models] == [("garment-generator", 2)]
    finally:
        down = run(home, "down")
        assert down.returncode == 0, down.stderr
