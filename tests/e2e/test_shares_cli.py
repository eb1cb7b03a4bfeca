"""`gureum workspaces share` against a real server: a site admin sets and changes a
workspace's guaranteed share of the pool; a workspace admin cannot; bad input is refused."""

from __future__ import annotations

import json

from tests.e2e.cli_runner import run, run_json


def test_workspace_shares_through_the_cli(env: dict[str, str]) -> None:
    shown = run_json(env, "workspaces", "share", "default")
    assert (shown["cpus"], shown["gpus"], shown["borrowed_cpus"]) == (None, None, 0)
    out = run_json(env, "workspaces", "share", "default", "--cpus", "4", "--gpus", "1")
    assert (out["workspace"], out["cpus"], out["gpus"]) == ("default", 4, 1)
    kept = run_json(env, "workspaces", "share", "default", "--cpus", "6")
    assert (kept["cpus"], kept["gpus"]) == (6, 1)  # the option left out keeps its value
    text = " ".join(run(env, "workspaces", "share", "default").stdout.split())
    assert "cpus 6" in text and "gpus 1" in text and "borrowed_cpus 0" in text

    bad = run(env, "workspaces", "share", "default", "--cpus", "-1")
    assert bad.exit_code == 2  # refused before anything is sent
    missing = run(env, "workspaces", "share", "nowhere", "--cpus", "1", "-o", "json")
    assert missing.exit_code == 1
    assert json.loads(missing.stdout)["error"]["code"] == "not_found"

    run_json(env, "users", "add", "ada", "--role", "admin")
    ada = run_json(env, "keys", "create", "ada-key", "--user", "ada")["token"]
    refused = run(env, "workspaces", "share", "default", "--cpus", "64", "-o", "json", key=ada)
    assert refused.exit_code == 1
    assert json.loads(refused.stdout)["error"]["code"] == "forbidden"
    assert run_json(env, "workspaces", "share", "default", key=ada)["cpus"] == 6  # she sees it
    cleared = run_json(env, "workspaces", "share", "default", "--clear")
    assert (cleared["cpus"], cleared["gpus"]) == (None, None)
