"""Sample grids as they appear, on a real Ray cluster: an image-diffusion job's grid of each
epoch is listed among its outputs (and downloads) while the job still runs, then kept with its
last bytes when it ends, once per path."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gureum import samples
from tests.integration.test_jobs_ray import RayCloud, _wait, rc  # noqa: F401 (fixture)

pytestmark = pytest.mark.ray

PARAMS = {
    "epochs": 30,
    "width": 8,
    "image_size": 16,
    "sample_steps": 2,
    "samples_per_class": 2,
    "grid_every": 1,
}


def test_epoch_grids_are_outputs_while_the_job_runs(rc: RayCloud, tmp_path: Path) -> None:  # noqa: F811
    samples.write("garments", tmp_path / "garments", count=40)
    rc.client.datasets.push("garments", tmp_path / "garments")
    job = rc.client.jobs.train("image-diffusion", "garments", model="gen", params=PARAMS)
    seen_running: set[str] = set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        state = rc.client.jobs.get(job.id).state
        listed = rc.http.get(f"/v1/jobs/{job.id}/outputs").json()["items"]
        if state == "running":
            seen_running |= {o["path"] for o in listed}
        if state in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.3)
    done = _wait(rc.client, job.id, timeout=60)
    assert done.state == "succeeded", (done.error, rc.client.jobs.logs(job.id)[0][-2000:])
    grids = sorted(p for p in seen_running if p.startswith("samples/epoch-"))
    assert grids, f"no epoch grid listed while running; saw {sorted(seen_running)}"
    first = rc.http.get(f"/v1/jobs/{job.id}/outputs/{grids[0]}")
    assert first.status_code == 200 and first.content.startswith(b"\x89PNG")
    final = [o["path"] for o in rc.http.get(f"/v1/jobs/{job.id}/outputs?limit=200").json()["items"]]
    assert len(final) == len(set(final))
    assert set(grids) <= set(final) and "samples/all.png" in final
