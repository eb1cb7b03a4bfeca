"""Each built-in recipe trains and evaluates through the server on Ray with its defaults
(issue 10: the server once stored defaults as if given, and every text-generator job failed
on them). Tiny sample datasets; only speed knobs (epochs, steps) are passed, except the one
text-generator job that is submitted with no parameters at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gureum import samples
from tests.integration.test_jobs_ray import RayCloud, _events, _wait, _wait_for, rc

pytestmark = pytest.mark.ray
__all__ = ["rc"]  # the fixture, re-exported for pytest

# recipe -> (sample, rows or pictures, parameters: only what keeps a CPU run to seconds)
RECIPES: dict[str, tuple[str, int, dict[str, Any]]] = {
    "image-classifier": ("digits", 60, {}),
    "image-generator": ("garments", 40, {"epochs": 1}),
    "text-generator": (
        "text",
        20,
        {"epochs": 1, "steps_per_epoch": 3, "eval_windows": 4, "sample_tokens": 8},
    ),
    "tabular": ("tabular", 300, {"target": "returned"}),  # target has no default
    "image-diffusion": (
        "garments",
        40,
        {"epochs": 1, "width": 8, "image_size": 16, "sample_steps": 2, "samples_per_class": 2},
    ),
}


def push(rc: RayCloud, tmp_path: Path, sample: str, count: int) -> str:
    name = f"s-{sample}"
    if not (tmp_path / name).exists():  # two recipes may train on one sample
        samples.write(sample, tmp_path / name, count=count)
        rc.client.datasets.push(name, tmp_path / name)
    return name


def test_text_generator_with_no_parameters_runs(rc: RayCloud, tmp_path: Path) -> None:
    """The defaults stored at submission validate in the worker: the job trains (it takes
    minutes with defaults on a CPU, so the test stops it once training has progressed)."""
    dataset = push(rc, tmp_path, "text", 20)
    r = rc.http.post("/v1/jobs", json={"recipe": "text-generator", "dataset": dataset})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["params"]["lora_r"] == 8 and job["params"]["base_model"] is None
    progressed = _wait_for(
        lambda: (
            (j := rc.client.jobs.get(job["id"])).state in ("failed", "succeeded")
            or (j.progress.step or 0) > 0
        ),
        timeout=180,
        what="the default text-generator job to train",
    )
    assert progressed
    now = rc.client.jobs.get(job["id"])
    assert now.state in ("running", "succeeded"), (now.error, _events(rc.client, job["id"]))
    assert now.progress.total_steps == 5 * 100  # the defaults: 5 epochs of 100 steps
    rc.client.jobs.cancel(job["id"])


def test_every_built_in_recipe_trains_and_evaluates_with_its_defaults(
    rc: RayCloud, tmp_path: Path
) -> None:
    datasets = {r: push(rc, tmp_path, s, n) for r, (s, n, _) in RECIPES.items()}
    trains = {
        r: rc.client.jobs.train(r, datasets[r], model=f"d-{r}", params=p)
        for r, (_, _, p) in RECIPES.items()
    }
    versions = {}
    for recipe, job in trains.items():
        done = _wait(rc.client, job.id, timeout=300)
        assert done.state == "succeeded", (recipe, done.error, _events(rc.client, job.id))
        assert done.metrics, recipe  # the train job evaluated its held-out split
        versions[recipe] = done.model_version
        v = rc.client.models.version(f"d-{recipe}", 1)
        assert (v.platform_written, v.metrics_source) == (True, "measured"), recipe
    evaluations = {r: rc.client.jobs.evaluate(str(versions[r]), datasets[r]) for r in RECIPES}
    for recipe, job in evaluations.items():
        done = _wait(rc.client, job.id, timeout=300)
        assert done.state == "succeeded", (recipe, done.error, _events(rc.client, job.id))
        assert done.metrics, recipe
