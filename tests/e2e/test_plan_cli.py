"""`gureum plan` against a real server, as typed: the table, `-o json`, the chart, traces, and
the bad inputs that exit 2."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image

from gureum.cli.demo_plan import plan_summary
from gureum.cli.output import Format
from gureum.schemas.endpoints import ReplicaResources
from gureum.server.db.base import utcnow
from gureum.server.services import costs
from tests.conftest import LiveServer
from tests.e2e.cli_runner import run, run_json
from tests.integration.test_consumers_api import db_of, workspace_id
from tests.integration.test_planner_api import record_march

PNG = b"\x89PNG\r\n\x1a\n"
MARCH = ("--period", "2025-03", "--months", "1")


def test_plan_prints_the_comparison_and_draws_the_chart(
    env: dict[str, str], live_server: LiveServer, tmp_path: Path
) -> None:
    record_march(live_server.cloud)
    shown = run(env, "plan", *MARCH)
    assert shown.exit_code == 0, shown.output
    out = shown.stdout
    assert "default" in out and "2025-03-10 00:00" in out and "528 hours" in out
    assert "elastic cloud" in out and "fleet for the peak" in out and "4 CPUs, 2 GPUs" in out
    assert "break-even" in out and "utilisation" in out
    # The fleet is on order for 3 months: all of this March is served by the cloud.
    assert "after the replay" in out and "neither: both cost the same over the replay" in out
    assert "cloud is cheaper for a year at this load" in out

    data = run_json(env, "plan", *MARCH, "--lead-time-months", "0", "--purchase-per-gpu", "0")
    c = data["comparison"]
    assert data["prices"]["purchase_per_gpu"] == 0 and data["prices"]["lead_time_months"] == 0
    assert (c["fleet"]["cpus"], c["fleet"]["gpus"]) == (4, 2)
    assert c["cheaper"] in ("cloud", "fleet") and len(data["series"]["cpus"]) == c["hours"]

    chart = tmp_path / "plan.png"
    drawn = run_json(env, "plan", *MARCH, "--chart", str(chart))
    assert drawn["chart"] == str(chart)
    assert chart.read_bytes()[:8] == PNG
    with Image.open(chart) as img:
        img.load()
        # Two panels (CPUs and GPUs) of a 10-inch figure at 100 dpi.
        assert img.format == "PNG" and img.width == 1000 and img.height > 500
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 10  # something was drawn


def test_a_csv_trace_is_replayed(env: dict[str, str], tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    rows = [f"2026-01-01T{h:02d}:00:00Z,{8 if h < 20 else 0},2" for h in range(24)]
    trace.write_text("hour,cpus,gpus\n" + "\n".join(rows) + "\n")
    chart = tmp_path / "trace.png"
    data = run_json(env, "plan", "--trace", str(trace), "--chart", str(chart))
    assert data["source"] == "trace" and data["comparison"]["hours"] == 24
    assert data["comparison"]["fleet"]["cpus"] == 8 and data["comparison"]["fleet"]["gpus"] == 2
    assert chart.read_bytes()[:8] == PNG and chart.stat().st_size > 5000
    shown = run(env, "plan", "--trace", str(trace), "--lead-time-months", "0")
    assert shown.exit_code == 0, shown.output
    assert "the trace" in shown.stdout and "fleet for the peak" in shown.stdout


def test_no_recorded_usage_exits_2(env: dict[str, str]) -> None:
    shown = run(env, "plan")
    assert shown.exit_code == 2, shown.output
    assert "no recorded usage in workspace 'default'" in shown.stderr
    as_json = run(env, "plan", "--period", "2025-03", "-o", "json")
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout)["error"]["code"] == "not_found"


def test_bad_input_exits_2(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("hour,cpus,gpus\n2026-01-01T00:00:00Z,4,0\n2026-01-01T01:00:00Z,four,0\n")
    shown = run(env, "plan", "--trace", str(bad))
    assert shown.exit_code == 2, shown.output
    assert f"{bad} line 3: cpus 'four' is not a number" in shown.stderr.replace("\n", "")
    as_json = run(env, "plan", "--trace", str(bad), "-o", "json")
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout)["error"]["code"] == "invalid_trace"
    headless = tmp_path / "headless.csv"
    headless.write_text("2026-01-01T00:00:00Z,4,0\n")
    assert run(env, "plan", "--trace", str(headless)).exit_code == 2
    # A bad period (the server refuses it), a bad option, a missing file, and a trace with a
    # recorded replay's options.
    assert run(env, "plan", "--period", "2025-13").exit_code == 2
    assert run(env, "plan", "--spot-share", "2").exit_code == 2
    assert run(env, "plan", "--purchase-per-gpu", "1e12").exit_code == 2
    nan = run(env, "plan", "--gpu-hour", "nan")
    assert nan.exit_code == 2 and "--gpu-hour" in nan.stderr, nan.output
    assert run(env, "plan", "--trace", str(tmp_path / "none.csv")).exit_code == 2
    assert run(env, "plan", "--trace", str(bad), "--months", "3").exit_code == 2


def test_the_demos_chapter_replays_this_months_hours_quickly(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """As `gureum demo` ends: an endpoint ran half a CPU for the last hour and a half."""
    cloud = live_server.cloud
    now = utcnow()
    with db_of(cloud).write() as s:
        costs.record_endpoint(
            s, workspace_id(cloud), "garments", now - timedelta(minutes=90), now, 1,
            ReplicaResources(cpus=0.5),
        )  # fmt: skip
    began = time.monotonic()
    summary = plan_summary(live_server.client(), tmp_path, Format.table)
    assert time.monotonic() - began < 2.0
    assert summary["hours"] in (2, 3) and summary["fleet"]["cpus"] == 1
    assert summary["cheaper"] == "cloud" and summary["fleet"]["usable_from"] is None
    assert summary["cloud"]["total"] == pytest.approx(0.75 * 0.05, abs=1e-6)
    assert Path(summary["chart"]).read_bytes()[:8] == PNG
