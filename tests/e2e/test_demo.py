"""`gureum demo` as a newcomer runs it: a fresh home, the whole story (training on the cluster,
serving on Ray Serve and selling to a consumer included, `--quick` so training takes seconds),
then `gureum down`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import free_port

GUREUM = str(Path(sys.executable).with_name("gureum"))


# The data plane's port too: HAProxy binds with SO_REUSEPORT, so a second cloud on the default
# port would share it with the first instead of failing.
SERVE_PORT = str(free_port())


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GUREUM_HOME": str(home), "GUREUM_SERVE_PORT": SERVE_PORT}
    env.pop("GUREUM_URL", None)
    env.pop("GUREUM_API_KEY", None)
    return subprocess.run([GUREUM, *args], env=env, capture_output=True, text=True, timeout=360)


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
        # It said which generator and why: the recorded benchmark and step times measured here.
        generator = result["generator"]
        assert train["recipe"] == generator["recipe"] == "image-generator"
        assert "docs/benchmarks.md" in generator["reason"], generator
        assert generator["step_ms"]["image-diffusion"] > 0 and generator["steps_in_budget"]
        assert train["model_version"] == "garment-generator:1"
        assert train["params"]["epochs"] == 1
        assert {"mmd", "mmd_reference", "class_accuracy", "val_loss"} <= set(train["metrics"])
        grid = Path(train["samples"])
        assert grid == home / "demo" / "generated" / "samples" / "all.png"
        with Image.open(grid) as img:
            assert img.format == "PNG"
            assert img.width > img.height > 0  # a row of samples per class (5 classes, 8 each)

        # It is served as an endpoint that may scale to zero, ...
        endpoint = result["endpoint"]
        assert (endpoint["name"], endpoint["state"]) == ("garments", "ready")
        assert endpoint["model_version"] == "garment-generator:1"
        assert endpoint["config"]["autoscaling"]["min_replicas"] == 0
        assert endpoint["config"]["resources"]["cpus"] == 0.5
        # ... sold to a consumer on a plan, and called with the consumer's key: the PNGs it
        # answered lie next to the sample grid.
        assert result["consumer"]["name"] == "atelier-lee"
        calls = result["calls"]
        assert len(calls) == 4
        images = [Path(p) for call in calls for p in call["images"]]
        assert len(images) == 8 and {p.parent for p in images} == {grid.parent}
        for path in images:
            with Image.open(path) as img:
                assert img.format == "PNG"
        # Every call was metered and invoiced at 0.02 per image; the endpoint's cost and
        # revenue give its margin.
        assert result["usage"]["this_run"] == 4
        invoice = result["invoice"]
        assert (invoice["consumer"], invoice["plan"], invoice["requests"]) == (
            "atelier-lee",
            "studio",
            4,
        )
        assert invoice["total"] == pytest.approx(8 * 0.02)
        cost = result["cost"]["endpoint"]
        assert cost["endpoint"] == "garments" and cost["requests"] == 4
        assert cost["revenue"] == pytest.approx(0.16)
        assert cost["margin"] == pytest.approx(cost["revenue"] - cost["cost"])
        # The calls were captured, rated and one label corrected; a retrain pipeline turned the
        # loop once by itself: curated the pictures rated 4 or more (3 calls of 2) into the next
        # version, retrained, evaluated both versions on the same held-out pictures and
        # decided, saying why.
        flywheel = result["flywheel"]
        assert [r["rating"] for r in flywheel["ratings"]] == [5, 4, 2, 5]
        assert [r["label"] for r in flywheel["ratings"]] == [None, "skirt", None, None]
        assert flywheel["pipeline"] == "garments-loop" and flywheel["run"] == 1
        assert flywheel["curated"] == "garments:2"
        assert flywheel["production"] == "garment-generator:1"
        assert flywheel["candidate"] == "garment-generator:2"
        assert flywheel["state"] in ("promoted", "not_promoted"), flywheel
        assert flywheel["reason"], flywheel
        steps = {s["name"]: s["state"] for s in flywheel["steps"]}
        assert steps["curate"] == steps["train"] == steps["evaluate"] == "succeeded", steps
        assert {"mmd", "class_accuracy"} <= set(flywheel["metrics"]["candidate"])
        assert {"mmd", "class_accuracy"} <= set(flywheel["metrics"]["production"])
        if flywheel["state"] == "promoted":
            assert steps["canary"] == steps["decide"] == "succeeded"
            assert flywheel["canary_calls"] > 0
        # The budget the demo set before training, and the month's spend against it.
        budget = result["budget"]
        assert (budget["monthly"], budget["per_job"]) == (50.0, 5.0)
        assert budget["state"] == "ok" and 0 < budget["spend"] < 50 and budget["percent"] < 80
        # The story's CPU hours replayed on a fleet bought for their peak: a verdict, a chart.
        plan = result["plan"]
        assert plan["hours"] >= 1 and plan["cheaper"] in ("cloud", "fleet")
        assert plan["cheaper_per_year"] in ("cloud", "fleet")
        assert plan["fleet"]["cpus"] >= 1 and 0 < plan["utilisation"] <= 1
        assert plan["break_even_utilisation"] > 0
        assert Path(plan["chart"]) == home / "demo" / "plan.png"
        with Image.open(plan["chart"]) as img:
            assert img.format == "PNG"
        curated = json.loads(run(home, "datasets", "show", "garments:2", "-o", "json").stdout)
        assert curated["split"]["validation"] == result["split"]["validation"]
        assert len(curated["split"]["train_only"]) == 6
        assert curated["source"]["pipeline_run"]["pipeline"] == "garments-loop"
        shown = json.loads(run(home, "pipelines", "show", "garments-loop", "-o", "json").stdout)
        assert shown["name"] == "garments-loop"

        # Again, on the running cloud: a new version, and the person-facing output works.
        again = run(home, "demo", *args)
        assert again.returncode == 0, again.stderr + again.stdout
        out = again.stdout
        assert "already running" in out and "garments:3" in out and "curated garments:4" in out
        assert "succeeded" in out and "garment-generator:3" in out
        assert "generator: image-generator (a conditional VAE)" in out
        # The pipeline's run printed its steps and its decision (either way) with the reason.
        assert "A pipeline retrains" in out and "run 2: by hand (admin)" in out
        assert "50 USD a month, 5 USD at most per job (already set: kept)" in out
        assert re.search(r"(NOT )?PROMOTED: \S", out), out
        assert "mmd_reference" in out and str(grid) in out.replace("\n", "")
        # The endpoint rolled over to the new version; the consumer got a new key and its
        # invoice now counts both runs' calls.
        assert "serves garment-generator:3" in out
        # Both runs' calls and the first run's calls during its canary window, one picture each.
        extra = flywheel["canary_calls"]
        total = (16 + extra) * 0.02
        assert "atelier-lee" in out and f"{8 + extra} requests, total {total:.2f} USD" in out
        assert "margin" in out
        assert "break-even" in out and "is cheaper" in out
        listed = json.loads(run(home, "datasets", "list", "-o", "json").stdout)
        assert [(d["name"], d["latest_version"]) for d in listed] == [("garments", 4)]
        models = json.loads(run(home, "models", "list", "-o", "json").stdout)
        assert [(m["name"], m["latest_version"]) for m in models] == [("garment-generator", 4)]
    finally:
        # Its replicas run on the session's shared Ray cluster: remove them before stopping.
        run(home, "endpoints", "delete", "garments", "--wait", "--timeout", "60")
        down = run(home, "down")
        assert down.returncode == 0, down.stderr
