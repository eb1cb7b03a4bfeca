"""`gureum consumers | plans | usage | invoices | costs` against a real server, as typed."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from pathlib import Path

import pytest

from gureum.server.db.base import utcnow
from tests.conftest import LiveServer
from tests.e2e.cli_runner import run, run_json
from tests.integration.test_consumers_api import consumer_id, ingest, make_endpoint, record


def test_consumers_plans_and_keys(env: dict[str, str]) -> None:
    plan = run_json(
        env, "plans", "create", "gold", "--rate-limit", "600/min", "--quota", "1000/month",
        "--price-per-request", "0.01", "--endpoint", "gen",
    )  # fmt: skip
    assert (plan["rate_limit"], plan["monthly_quota"], plan["endpoints"]) == (10.0, 1000, ["gen"])
    assert [p["name"] for p in run_json(env, "plans", "list")] == ["gold"]
    assert run_json(env, "plans", "show", "gold")["price_per_request"] == 0.01

    shown = run(env, "consumers", "create", "acme", "--rate-limit", "5/s", "--quota", "100")
    assert shown.exit_code == 0, shown.output
    assert "will not be shown again" in shown.stdout
    token = next(w for w in shown.stdout.split() if w.startswith("gck_"))
    created = run_json(env, "consumers", "create", "shop", "--plan", "gold")
    assert created["token"].startswith(f"gck_{created['key_id']}_")
    assert created["plan"]["name"] == "gold"

    listed = run_json(env, "consumers", "list")
    assert [(c["name"], c["plan"]["name"]) for c in listed] == [("acme", "acme"), ("shop", "gold")]
    assert token not in json.dumps(listed)
    acme = run_json(env, "consumers", "show", "acme")
    assert (acme["plan"]["rate_limit"], acme["plan"]["monthly_quota"]) == (5.0, 100)
    table = run(env, "consumers", "list")
    assert table.exit_code == 0 and "5/s" in table.stdout and "100/month" in table.stdout

    updated = run_json(env, "consumers", "update", "acme", "--rate-limit", "unlimited")
    assert updated["plan"]["rate_limit"] is None
    assert run_json(env, "consumers", "update", "acme", "--disable")["disabled"] is True
    assert run_json(env, "consumers", "update", "acme", "--enable")["disabled"] is False

    key = run_json(env, "consumers", "keys", "create", "acme")
    keys = run_json(env, "consumers", "keys", "list", "acme")
    assert [k["key_id"] for k in keys][-1] == key["key_id"] and "token" not in keys[0]
    revoked = run_json(env, "consumers", "keys", "revoke", "acme", key["key_id"])
    assert revoked["revoked_at"]
    deleted = run_json(env, "consumers", "delete", "shop")
    assert deleted["disabled"] is True and deleted["active_keys"] == 0
    # A consumer key is refused by the control plane.
    denied = run(env, "consumers", "list", "-o", "json", key=token)
    assert denied.exit_code == 1
    assert json.loads(denied.stdout)["error"]["code"] == "unauthorized"


def test_bad_inputs_are_clean_cli_errors(env: dict[str, str]) -> None:
    bad_rate = run(env, "consumers", "create", "x", "--rate-limit", "fast", "-o", "json")
    assert bad_rate.exit_code == 2 and "Traceback" not in bad_rate.output
    assert "rate limit 'fast'" in json.loads(bad_rate.stdout)["error"]["message"]
    bad_quota = run(env, "plans", "create", "p", "--quota", "10/day")
    assert bad_quota.exit_code == 2 and "quota" in bad_quota.output
    unknown = run(env, "consumers", "create", "x", "--plan", "nope", "-o", "json")
    assert unknown.exit_code == 1
    assert json.loads(unknown.stdout)["error"]["code"] == "not_found"
    run_json(env, "consumers", "create", "dup")
    again = run(env, "consumers", "create", "dup", "-o", "json")
    assert again.exit_code == 1 and json.loads(again.stdout)["error"]["code"] == "conflict"
    period = run(env, "invoices", "--period", "2025-13", "-o", "json")
    assert period.exit_code == 1
    assert "YYYY-MM" in json.loads(period.stdout)["error"]["message"]
    since = run(env, "usage", "--since", "last tuesday")
    assert since.exit_code == 2 and "--since" in since.output


def test_usage_invoices_and_costs(
    env: dict[str, str], live_server: LiveServer, tmp_path: Path
) -> None:
    cloud = live_server.cloud
    gen = make_endpoint(cloud, "gen")
    created = run_json(env, "consumers", "create", "acme", "--price-per-request", "0.25")
    acme = consumer_id(cloud, created["token"])
    ingest(
        cloud,
        gen,
        record(gen, acme, "acme", latency_ms=10),
        record(gen, acme, "acme", latency_ms=20),
        record(gen, acme, "acme", latency_ms=30, status=500),
    )
    report = run_json(env, "usage", "--consumer", "acme", "--group-by", "consumer,endpoint")
    assert report["group_by"] == ["consumer", "endpoint"]
    [row] = report["rows"]
    assert (row["consumer"], row["endpoint"], row["requests"], row["errors"]) == (
        "acme",
        "gen",
        3,
        1,
    )
    assert row["amount"] == pytest.approx(0.5) and row["latency_p50_ms"] == 20.0
    since = (utcnow() - timedelta(days=1)).date().isoformat()
    table = run(env, "usage", "--since", since)
    assert table.exit_code == 0 and "acme" in table.stdout and "gen" in table.stdout

    period = utcnow().strftime("%Y-%m")
    out = tmp_path / "invoices.csv"
    invoices = run_json(env, "invoices", "--period", period, "--csv", str(out))
    [invoice] = invoices["invoices"]
    assert (invoice["consumer"], invoice["total"], invoice["requests"]) == ("acme", 0.5, 2)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(r["consumer"], r["endpoint"], float(r["amount"])) for r in rows] == [
        ("acme", "gen", 0.5)
    ]
    only_csv = run(env, "invoices", "--period", period, "--csv", "-")
    assert only_csv.exit_code == 0 and only_csv.stdout.startswith("consumer,period,")
    table = run(env, "invoices")
    assert table.exit_code == 0 and "acme" in table.stdout and "total 0.50 USD" in table.stdout

    costs = run_json(env, "costs", "--period", period)
    assert costs["period"] == period and costs["totals"]["revenue"] == pytest.approx(0.5)
    assert [e["endpoint"] for e in costs["endpoints"]] == ["gen"]
    assert run(env, "costs").exit_code == 0
