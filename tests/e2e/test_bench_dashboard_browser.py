"""benchmarks/bench_dashboard.py at a small scale: it seeds through the real migrations, serves
the real app, signs in through the form in Chromium and times every page to its last chart
(so a page whose chart never draws fails here, not only in the benchmark)."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks._dashboard_seed import Scale

from tests.conftest import PG_URL

if not Path("/usr/bin/chromium").exists():
    pytest.skip("/usr/bin/chromium is missing: apt-get install chromium", allow_module_level=True)


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"] if PG_URL else ["sqlite"])
def test_the_dashboard_benchmark_times_each_page_to_its_last_chart(backend: str) -> None:
    from benchmarks.bench_dashboard import run

    scale = Scale(jobs=30, endpoints=3, usage_rows=3000, metric_points=20, events=3)
    result = run(scale, runs=2, database_url=PG_URL if backend == "postgresql" else None)
    assert result["backend"] == backend
    assert set(result["pages"]) == {"overview", "job", "endpoint"}
    for page in result["pages"].values():
        assert page["n"] == 2
        assert 0 < page["p50_ms"] <= page["p95_ms"] < 30_000
    # The calls each page's charts wait for were seen and timed on their own.
    calls = result["api_direct"]
    for call in (
        "overview /v1/usage",
        "job /v1/jobs/{id}/metrics",
        "endpoint /v1/endpoints/{name}/stats",
        "endpoint /v1/usage",
    ):
        assert calls[call]["n"] == 2, calls
    assert "overview /" in result["browser_ttfb"]
