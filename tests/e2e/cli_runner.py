"""The CLI in-process against a live server, as a user with a key in the environment runs it."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner, Result

from gureum.cli.main import app

runner = CliRunner()


def run(env: dict[str, str], *args: str, key: str | None = None) -> Result:
    if key is not None:
        env = {**env, "GUREUM_API_KEY": key}
    return runner.invoke(app, list(args), env=env)


def run_json(env: dict[str, str], *args: str, key: str | None = None) -> Any:
    result = run(env, *args, "-o", "json", key=key)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)
