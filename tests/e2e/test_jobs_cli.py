"""`gureum train | evaluate | predict-batch | jobs ... | workspaces quotas` against a real server.

The server has no Ray cluster here: jobs are accepted and stay queued ("no compute cluster
connected"), and cancelling a queued job ends it at once. That is enough to drive every
command, the exit codes of `--wait` and `logs -f`, and what travels in the request.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from gureum.cli.main import app
from tests.conftest import LiveServer
from tests.integration.trained_models import register_trained

runner = CliRunner()
NO_CLUSTER = "no compute cluster"


@pytest.fixture
def cli_env(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    monkeypatch.setenv("GUREUM_URL", live_server.url)
    monkeypatch.setenv("GUREUM_API_KEY", live_server.cloud.admin_key)
    yield live_server


@pytest.fixture
def rows(cli_env: LiveServer, tmp_path: Path) -> str:
    """A small table dataset, pushed as rows:1."""
    folder = tmp_path / "rows"
    folder.mkdir()
    lines = ["x1,x2,label"] + [f"{i},{i % 3},{'a' if i % 2 else 'b'}" for i in range(40)]
    (folder / "data.csv").write_text("\n".join(lines) + "\n")
    with cli_env.client() as c:
        c.datasets.push("rows", folder)
    return "rows:1"


def flat(text: str) -> str:
    """Table text with its wrapping undone, for substring checks."""
    return " ".join(text.split())


def gureum(*args: str) -> Result:
    return runner.invoke(app, list(args))


def ok_json(*args: str) -> Any:
    result = gureum(*args, "-o", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def cancel_when_queued(server: LiveServer, delay_s: float = 0.3) -> threading.Thread:
    """Cancel the first queued job that shows up, from another thread, while a command waits."""

    def run() -> None:
        with server.client() as c:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                queued = c.jobs.list(state="queued")
                if queued:
                    time.sleep(delay_s)
                    c.jobs.cancel(queued[0].id)
                    return
                time.sleep(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_train_then_list_show_cancel(rows: str) -> None:
    job = ok_json("train", "--recipe", "tabular", "--dataset", rows, "--param", "target=label")
    assert (job["state"], job["kind"], job["recipe"]) == ("queued", "train", "tabular")
    assert job["dataset"] == rows and job["params"]["target"] == "label"
    assert NO_CLUSTER in (job["wait_reason"] or "")
    jid = job["id"]

    assert [j["id"] for j in ok_json("jobs", "list")] == [jid]
    assert [j["id"] for j in ok_json("jobs", "list", "--state", "queued", "--kind", "train")] == [
        jid
    ]
    assert ok_json("jobs", "list", "--state", "running") == []
    table = gureum("jobs", "list")
    assert table.exit_code == 0 and jid in table.stdout and "tabular" in table.stdout

    shown = ok_json("jobs", "show", jid)
    assert shown["id"] == jid and shown["state"] == "queued" and shown["events"]
    text = gureum("jobs", "show", jid)
    assert text.exit_code == 0 and NO_CLUSTER in flat(text.stdout) and "tabular" in text.stdout

    cancelled = ok_json("jobs", "cancel", jid)
    assert cancelled["state"] == "cancelled"
    assert ok_json("jobs", "show", jid)["state"] == "cancelled"
    events = ok_json("jobs", "events", jid)
    assert events and all({"seq", "time", "kind", "message"} <= set(e) for e in events)
    assert ok_json("jobs", "metrics", jid) == []
    assert ok_json("jobs", "outputs", jid) == []
    logs = ok_json("jobs", "logs", jid)
    assert logs["id"] == jid and isinstance(logs["text"], str)
    assert gureum("jobs", "logs", jid).exit_code == 0

    # Following a job that ended cancelled: the stream ends at once, and the exit code says so.
    follow = gureum("jobs", "logs", jid, "-f", "-o", "json")
    assert follow.exit_code == 1, follow.output
    events_seen = [json.loads(line) for line in follow.stdout.splitlines()]
    assert events_seen[-1]["event"] == "end" and events_seen[-1]["job"]["state"] == "cancelled"


def test_wait_ends_with_the_job(cli_env: LiveServer, rows: str) -> None:
    canceller = cancel_when_queued(cli_env)
    result = gureum(
        "train", "--recipe", "tabular", "-d", rows, "-p", "target=label", "--wait", "-o", "json"
    )
    canceller.join(timeout=20)
    assert result.exit_code == 1, result.output
    final = json.loads(result.stdout)  # only the final job, nothing else on stdout
    assert final["state"] == "cancelled"

    canceller = cancel_when_queued(cli_env)
    result = gureum("train", "--recipe", "tabular", "-d", rows, "-p", "target=label", "--wait")
    canceller.join(timeout=20)
    assert result.exit_code == 1
    assert NO_CLUSTER in result.stderr  # the state line while it waited
    assert "cancelled" in result.stdout


def test_logs_follow_streams_until_the_end(cli_env: LiveServer, rows: str) -> None:
    job = ok_json("train", "--recipe", "tabular", "-d", rows, "-p", "target=label")
    canceller = cancel_when_queued(cli_env, delay_s=0.5)
    result = gureum("jobs", "logs", job["id"], "--follow")
    canceller.join(timeout=20)
    assert result.exit_code == 1, result.output
    assert "queued" in result.stderr and "cancelled" in result.stderr


def test_params_are_typed_and_code_is_uploaded(
    cli_env: LiveServer, rows: str, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "main.py").write_text("from gureum import run\nprint(run.params())\n")
    (code / "helper.py").write_text("X = 1\n")
    job = ok_json(
        "train",
        "--recipe",
        "script",
        "--dataset",
        rows,
        "--code",
        str(code),
        "--param",
        "epochs=3",
        "--param",
        "lr=0.01",
        "--param",
        "name=shirts",
        "--param",
        "layers=[8, 4]",
        "--arg",
        "--verbose",
        "--cpus",
        "2",
        "--resource",
        "special=1",
        "--priority",
        "7",
    )
    params = job["params"]
    assert params["epochs"] == 3 and isinstance(params["epochs"], int)
    assert (params["lr"], params["name"], params["layers"]) == (0.01, "shirts", [8, 4])
    assert job["recipe"] == "script" and job["code_hash"]
    assert job["resources"]["cpus"] == 2 and job["resources"]["custom"] == {"special": 1}
    assert job["priority"] == 7
    shown = gureum("jobs", "show", job["id"])
    assert shown.exit_code == 0 and job["code_hash"][:12] in shown.stdout

    # The same code again: nothing new to upload, the same code hash.
    again = ok_json("train", "--recipe", "script", "-d", rows, "--code", str(code))
    assert again["code_hash"] == job["code_hash"]


def test_refusals_exit_non_zero_with_the_message(cli_env: LiveServer, rows: str) -> None:
    result = gureum("train", "--recipe", "no-such-recipe", "-d", rows, "-o", "json")
    assert result.exit_code == 1
    assert "no-such-recipe" in json.loads(result.stdout)["error"]["message"]

    result = gureum(
        "train", "--recipe", "tabular", "-d", rows, "-p", "target=label", "-p", "bogus=1"
    )
    assert result.exit_code == 1 and "bogus" in result.stderr

    result = gureum("train", "--recipe", "tabular", "-d", "absent:1", "-p", "target=label")
    assert result.exit_code == 1 and "absent" in result.stderr

    result = gureum("train", "--recipe", "tabular", "-d", rows, "-p", "noequals")
    assert result.exit_code == 1 and "KEY=VALUE" in result.stderr

    result = gureum("train", "--recipe", "script", "-d", rows)
    assert result.exit_code == 1 and "--code" in result.stderr

    result = gureum("evaluate", "ghost:1", "-d", rows)
    assert result.exit_code == 1 and "ghost" in result.stderr
    result = gureum("predict-batch", "ghost:x", "-d", rows)
    assert result.exit_code == 1 and "positive number" in result.stderr

    result = gureum("jobs", "show", "j-does-not-exist")
    assert result.exit_code == 1 and "j-does-not-exist" in result.stderr
    assert ok_json("jobs", "list") == []  # nothing refused was queued


def test_workspace_quotas(cli_env: LiveServer) -> None:
    empty = {
        "max_cpus": None,
        "max_gpus": None,
        "max_concurrent_jobs": None,
        "max_storage_gb": None,
    }
    assert ok_json("workspaces", "quotas", "default") == {"workspace": "default", **empty}
    got = ok_json("workspaces", "quotas", "default", "--max-gpus", "2", "--max-jobs", "3")
    assert (got["max_gpus"], got["max_concurrent_jobs"], got["max_cpus"]) == (2, 3, None)
    got = ok_json("workspaces", "quotas", "default", "--max-cpus", "8")
    assert (got["max_gpus"], got["max_concurrent_jobs"], got["max_cpus"]) == (2, 3, 8)
    table = gureum("workspaces", "quotas", "default")
    assert table.exit_code == 0 and "max_gpus" in table.stdout
    assert ok_json("workspaces", "quotas", "default", "--clear") == {
        "workspace": "default",
        **empty,
    }
    missing = gureum("workspaces", "quotas", "nowhere")
    assert missing.exit_code == 1


def test_evaluate_and_predict_batch_queue_model_jobs(
    cli_env: LiveServer, rows: str, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"recipe": "tabular", "params": {}}))
    with cli_env.client() as c:
        # As a platform train job would have: uploaded tabular files are never loaded.
        register_trained(
            c, cli_env.cloud.app.state.db, "rowsm", folder, recipe="tabular", dataset=rows
        )
    ev = ok_json("evaluate", "rowsm:1", "--dataset", rows, "--priority", "3")
    assert (ev["kind"], ev["state"], ev["model"], ev["priority"]) == (
        "evaluate",
        "queued",
        "rowsm:1",
        3,
    )
    pr = ok_json("predict-batch", "rowsm:latest", "-d", rows, "--cpus", "2")
    assert (pr["kind"], pr["model"], pr["resources"]["cpus"]) == ("predict", "rowsm:1", 2)
    kinds = [j["kind"] for j in ok_json("jobs", "list")]
    assert kinds == ["predict", "evaluate"]  # newest first
    assert [j["id"] for j in ok_json("jobs", "list", "--kind", "evaluate")] == [ev["id"]]
