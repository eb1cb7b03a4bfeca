"""Dashboard: time from navigation until the last chart is drawn (issue 14's performance item).

Seeds a fresh database (1,000 jobs with events, metrics and logs, 100 endpoints, 1,000,000
usage rows over the last 30 days; see ``_dashboard_seed``), serves the real app on one
uvicorn worker (no Ray: the pages' numbers come from the database; see docs/benchmarks.md),
signs in through the login form in headless Chromium and opens the overview, a job page and an
endpoint page ``--runs`` times each (after one warm-up each).

"Drawn": every chart of the page (each ``.chart`` container) has had its first draw with data;
``static/charts.js`` stamps ``data-drawn-at`` on the container from uPlot's draw hook with
``performance.now()``, i.e. milliseconds since the navigation started. The time of a page is
the largest stamp. The API calls' own times are reported twice: as the browser saw them (time to
first byte, from Playwright's resource timing) and called directly with httpx. Target: p95 <=
1,500 ms per page.

    .venv/bin/python -m benchmarks.bench_dashboard [--runs 20] [--database-url URL]
        [--jobs 1000 --endpoints 100 --usage-rows 1000000]
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from benchmarks._dashboard_seed import Scale, Seeded, seed
from benchmarks._util import free_port, load_average, save, start_uvicorn, stop, wait_http

TARGET_MS = 1500.0
CHROMIUM = "/usr/bin/chromium"
ALL_DRAWN = """() => {
  const charts = [...document.querySelectorAll('.chart')];
  return charts.length > 0 && charts.every((c) => c.dataset.drawnAt);
}"""
LAST_DRAWN = """() => Math.max(...[...document.querySelectorAll('.chart')]
  .map((c) => Number(c.dataset.drawnAt)))"""
# Ids in a URL's path, so that calls group by route: /v1/jobs/{id}/metrics.
_IDS = [
    (re.compile(r"^/jobs/[^/]+"), "/jobs/{id}"),
    (re.compile(r"^/v1/jobs/[^/]+"), "/v1/jobs/{id}"),
    (re.compile(r"^/endpoints/[^/]+"), "/endpoints/{name}"),
    (re.compile(r"^/v1/endpoints/[^/]+"), "/v1/endpoints/{name}"),
]


def app() -> FastAPI:
    """The real app, for ``uvicorn --factory`` (migrates at start as ``gureum server`` does)."""
    from gureum.config import Settings
    from gureum.server.app import create_app

    home = Path(os.environ["BENCH_HOME"])
    return create_app(Settings(home=home, database_url=os.environ["BENCH_DB_URL"]))


def route(url: str) -> str:
    path = urlsplit(url).path
    for pattern, name in _IDS:
        path = pattern.sub(name, path)
    return path


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    k = max(1, -(-len(ordered) * q // 100))
    return ordered[min(len(ordered), int(k)) - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values), 1),
        "p95_ms": round(pct(values, 95), 1),
        "max_ms": round(max(values), 1),
    }


@contextmanager
def database(url: str | None, home: Path) -> Iterator[str]:
    """A fresh database: a SQLite file under ``home``, or a PostgreSQL database created next
    to the one ``url`` names (that one is never touched) and dropped afterwards."""
    if not url:
        yield f"sqlite:///{home / 'gureum.db'}"
        return
    name = f"gureum_bench_dash_{secrets.token_hex(4)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def served(url: str, home: Path) -> Iterator[str]:
    port = free_port()
    proc = start_uvicorn(
        "benchmarks.bench_dashboard:app", port, {"BENCH_HOME": str(home), "BENCH_DB_URL": url}
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/health", timeout=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def measure(base: str, seeded: Seeded, runs: int) -> dict[str, Any]:
    """Sign in through the form, then time each page ``runs`` times (one warm-up first)."""
    from playwright.sync_api import sync_playwright

    pages = {
        "overview": "/",
        "job": f"/jobs/{seeded.job_id}",
        "endpoint": f"/endpoints/{seeded.endpoint}",
    }
    times: dict[str, list[float]] = defaultdict(list)
    seen: dict[str, list[float]] = defaultdict(list)  # route -> browser TTFB ms
    urls: dict[str, str] = {}  # "page route" -> one full URL the page called, to call again
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        tab = context.new_page()
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.goto(base + "/login")
        tab.get_by_label("API key").fill(seeded.admin_key)
        tab.get_by_role("button", name="Sign in").click()
        tab.wait_for_url(base + "/")
        finished: list[Any] = []
        tab.on("requestfinished", lambda request: finished.append(request))
        for name, path in pages.items():
            for run in range(runs + 1):
                finished.clear()
                tab.goto(base + path, wait_until="commit")
                tab.wait_for_function(ALL_DRAWN, timeout=60_000)
                drawn = float(tab.evaluate(LAST_DRAWN))
                if run == 0:
                    continue  # warm-up: first visit of the page's assets
                times[name].append(drawn)
                for request in list(finished):
                    key = route(request.url)
                    if key.startswith("/static/"):
                        continue
                    t = request.timing
                    if t["responseStart"] >= 0 and t["requestStart"] >= 0:
                        seen[f"{name} {key}"].append(t["responseStart"] - t["requestStart"])
                        urls.setdefault(f"{name} {key}", request.url)
        browser.close()
    if errors:
        raise RuntimeError(f"the pages raised: {errors}")
    return {"pages": dict(times), "browser": dict(seen), "urls": urls}


def direct(base: str, key: str, urls: dict[str, str], runs: int) -> dict[str, list[float]]:
    """Each call the pages made, again with httpx and the API key (server time + loopback)."""
    out: dict[str, list[float]] = defaultdict(list)
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        for name, url in sorted(urls.items()):
            if " /v1/" not in name:
                continue  # the pages themselves need the session cookie: see "browser"
            for _ in range(runs):
                start = time.perf_counter()
                client.get(url).raise_for_status()
                out[name].append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--database-url", default=None, help="PostgreSQL server to use")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--usage-rows", type=int, default=1_000_000)
    parser.add_argument("--metric-points", type=int, default=300)
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/out")
    args = parser.parse_args()
    scale = Scale(args.jobs, args.endpoints, args.usage_rows, args.metric_points)
    result = run(scale, args.runs, args.database_url)
    report(result)
    if not args.no_save:
        print("saved", save(f"dashboard_{result['backend']}", result))


def run(scale: Scale, runs: int, database_url: str | None = None) -> dict[str, Any]:
    """Seed, serve, measure; the numbers as a dict (what ``save`` writes)."""
    home = Path(tempfile.mkdtemp(prefix="gureum-bench-dash-"))
    try:
        with database(database_url, home) as url:
            seeded = seed(url, scale)
            with served(url, home) as base:
                load_before = load_average()
                measured = measure(base, seeded, runs)
                calls = direct(base, seeded.admin_key, measured["urls"], runs)
                load_after = load_average()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    pages = {k: summary(v) for k, v in measured["pages"].items()}
    return {
        "backend": "postgresql" if database_url else "sqlite",
        "scale": scale.__dict__,
        "seed_s": round(seeded.seconds, 1),
        "runs": runs,
        "load_average": [load_before, load_after],
        "pages": pages,
        "browser_ttfb": {k: summary(v) for k, v in sorted(measured["browser"].items())},
        "api_direct": {k: summary(v) for k, v in sorted(calls.items())},
        "target_p95_ms": TARGET_MS,
        "met": all(p["p95_ms"] <= TARGET_MS for p in pages.values()),
    }


def report(result: dict[str, Any]) -> None:
    print(f"backend {result['backend']}, seeded in {result['seed_s']} s, {result['scale']}")
    print(f"load average before/after: {result['load_average']}")
    print(f"{'page: time to last chart':42} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, s in result["pages"].items():
        print(f"{name:42} {s['p50_ms']:8.0f} {s['p95_ms']:8.0f} {s['max_ms']:8.0f}")
    print("calls as the browser saw them (time to first byte):")
    for name, s in result["browser_ttfb"].items():
        print(f"  {name:40} {s['p50_ms']:8.0f} {s['p95_ms']:8.0f} {s['max_ms']:8.0f}")
    print("API calls made directly (httpx, API key):")
    for name, s in result["api_direct"].items():
        print(f"  {name:40} {s['p50_ms']:8.0f} {s['p95_ms']:8.0f} {s['max_ms']:8.0f}")
    verdict = "met" if result["met"] else "NOT met"
    print(f"target p95 <= {result['target_p95_ms']:.0f} ms on every page: {verdict}")


if __name__ == "__main__":
    main()
