"""`gureum budgets set|show|events` and the budget in `gureum costs`, against a real server:
a budget lowered to nothing refuses `gureum train` with its reason."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.cli_runner import run, run_json


def test_budgets_through_the_cli(env: dict[str, str], tmp_path: Path) -> None:
    out = run_json(env, "budgets", "set", "default", "--monthly", "50", "--per-job", "5")
    assert (out["monthly"], out["per_job"], out["state"]) == (50, 5, "ok")
    shown = run(env, "budgets", "show", "default")
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.stdout.split())
    assert "monthly 50 USD" in text and "per job 5 USD" in text and "ok since" in text

    folder = tmp_path / "rows"
    folder.mkdir()
    rows = ["x1,label"] + [f"{i},{'a' if i % 2 else 'b'}" for i in range(30)]
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    assert run(env, "datasets", "push", "rows", str(folder)).exit_code == 0
    train = ("train", "--recipe", "tabular", "--dataset", "rows", "--param", "target=label")
    job = run_json(env, *train)
    # 5 at 0.05 a CPU-hour: a time limit of 100 hours.
    assert job["timeout_s"] == 100 * 3600

    costs = run(env, "costs")
    assert costs.exit_code == 0, costs.output
    assert "budget" in costs.stdout and "monthly 50 USD" in " ".join(costs.stdout.split())
    assert run_json(env, "costs")["budget"]["reserved"] == 5

    zero = run_json(env, "budgets", "set", "default", "--monthly", "0")
    assert zero["state"] == "exceeded" and zero["per_job"] is None
    refused = run(env, *train, "-o", "json")
    assert refused.exit_code == 1
    err = json.loads(refused.stdout)["error"]
    assert err["code"] == "budget_exceeded" and "limit of 0 USD" in err["message"]

    bad = run(env, "budgets", "set", "default", "--monthly", "-3", "-o", "json")
    assert bad.exit_code == 1 and json.loads(bad.stdout)["error"]["code"] == "invalid_request"
    missing = run(env, "budgets", "show", "nowhere", "-o", "json")
    assert json.loads(missing.stdout)["error"]["code"] == "not_found"
    kinds = [e["kind"] for e in run_json(env, "budgets", "events", "default")]
    assert kinds[:3] == ["exceeded", "warning", "set"] and kinds[-1] == "set"
