"""The CLI of validation and the catalog against a live server (no cluster): `gureum deploy
--sample-inputs`, `gureum models show NAME:V` with the last report, `gureum models validate`
without a cluster, `gureum models list --catalog`."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner, Result

from gureum.cli.main import app as cli_app
from tests.conftest import LiveServer
from tests.integration.test_endpoints_api import register
from tests.integration.trained_models import mark_platform_trained


def cli(live_server: LiveServer, tmp_path: Path, *args: str) -> Result:
    variables = {
        "GUREUM_URL": live_server.url,
        "GUREUM_API_KEY": live_server.cloud.admin_key,
        "GUREUM_HOME": str(tmp_path / "cli-home"),
    }
    return CliRunner().invoke(cli_app, list(args), env=variables)


def test_deploy_with_sample_inputs_then_show_the_report_and_the_catalog(
    live_server: LiveServer, tmp_path: Path
) -> None:
    register(live_server.cloud.http(), "m", recipe=None)  # uploaded, then marked as trained
    mark_platform_trained(live_server.cloud.app.state.db, "m", 1, recipe="tabular")
    not_a_list = tmp_path / "one.json"
    not_a_list.write_text('"just one"')
    r = cli(
        live_server, tmp_path, "deploy", "m:1", "-e", "shop", "--sample-inputs", str(not_a_list)
    )
    assert r.exit_code == 1 and "must hold a JSON list of 1 to 64 inputs" in r.output

    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps([{"price": 3}, {"price": 4}]))
    r = cli(live_server, tmp_path, "deploy", "m:1", "-e", "shop", "--sample-inputs", str(inputs))
    assert r.exit_code == 0, r.output

    r = cli(live_server, tmp_path, "models", "show", "m:1", "-o", "json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)["validation"]
    assert (report["state"], report["kind"], report["endpoint"], report["samples"]) == (
        "pending",
        "deploy",
        "shop",
        2,
    )
    assert report["source"] == "2 inputs given with the deploy"
    r = cli(live_server, tmp_path, "models", "show", "m:1")
    assert r.exit_code == 0 and "m:1 pending (deploy to shop)" in r.stdout

    r = cli(live_server, tmp_path, "models", "validate", "m:1", "--sample-inputs", str(inputs))
    assert r.exit_code == 1 and "this server has none" in r.output

    r = cli(live_server, tmp_path, "models", "list", "--catalog", "-o", "json")
    assert r.exit_code == 0, r.output
    entries = json.loads(r.stdout)
    assert entries[0]["name"] == "m:1" and entries[0]["resources"]["cpus"] == 1.0
    r = cli(live_server, tmp_path, "models", "list", "--catalog")
    assert r.exit_code == 0 and "m:1" in r.stdout and "gureum deploy NAME" in r.stdout
