"""`gureum models ...` as a user runs it against a real server: import, gate, promote, show."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from gureum.cli.main import app
from gureum.cli.models import parse_gate
from tests.conftest import LiveServer
from tests.integration.test_blobs_api import member_key

runner = CliRunner()


@pytest.fixture
def cli_env(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    monkeypatch.setenv("GUREUM_URL", live_server.url)
    monkeypatch.setenv("GUREUM_API_KEY", live_server.cloud.admin_key)
    yield live_server


def gureum(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["models", *args])
    return result.exit_code, result.stdout, result.stderr


def gureum_as(key: str, *args: str) -> tuple[int, str, str]:
    """As another key (the CLI reads GUREUM_API_KEY per command)."""
    result = runner.invoke(app, ["models", *args], env={"GUREUM_API_KEY": key})
    return result.exit_code, result.stdout, result.stderr


def ok_json(*args: str) -> object:
    code, out, err = gureum(*args, "-o", "json")
    assert code == 0, err or out
    return json.loads(out)


def weights(path: Path) -> Path:
    save_file({"w": torch.zeros(4, 4)}, str(path))
    return path


def test_import_gate_promote_show(cli_env: LiveServer, tmp_path: Path) -> None:
    st = weights(tmp_path / "model.safetensors")
    v = ok_json("import", "gen", str(st), "-m", "open weights")
    assert isinstance(v, dict)
    assert (v["model"], v["version"], v["format"], v["stage"]) == ("gen", 1, "safetensors", "none")
    m = ok_json("gate", "gen", "--require", "accuracy>=0.9", "--must-beat", "accuracy")
    assert isinstance(m, dict)
    gate = {"metric": "accuracy", "op": ">=", "threshold": 0.9, "measured": False}
    assert m["gates"] == [gate]
    assert m["must_beat_production"] == {
        "metric": "accuracy",
        "higher_is_better": True,
        "measured": False,
    }
    # Gates guard production: a developer cannot change them (issue 10, item 8).
    code, _, stderr = gureum_as(
        member_key(cli_env.cloud, "developer"), "gate", "gen", "--require", "accuracy>=0.1"
    )
    assert code == 1 and "admin" in stderr
    code, out, _ = gureum("gate", "gen", "--require", "accuracy>=0.9", "--measured")
    assert code == 0 and "accuracy >= 0.9 (measured)" in out
    assert ok_json("gate", "gen", "--require", "accuracy>=0.9")["gates"] == [gate]

    # Refused with the reason, as JSON and as a line for people; exit code 1.
    code, out, _ = gureum("promote", "gen:1", "--stage", "production", "-o", "json")
    assert code == 1
    err = json.loads(out)["error"]
    assert err["code"] == "gate_failed" and "accuracy" in err["message"]
    code, _, stderr = gureum("promote", "gen:1", "--stage", "production")
    assert code == 1 and "accuracy" in stderr

    # A developer cannot force; the owner can.
    dev = member_key(cli_env.cloud, "developer")
    code, _, stderr = gureum_as(dev, "promote", "gen:1", "--stage", "production", "--force")
    assert code == 1 and "admin" in stderr
    out_json = ok_json("promote", "gen:1", "--stage", "production", "--force")
    assert isinstance(out_json, dict) and out_json["forced"] is True

    code, out, _ = gureum("show", "gen:production")
    assert code == 0 and "safetensors" in out and "model.safetensors" in out
    shown = ok_json("show", "gen")
    assert isinstance(shown, dict)
    assert shown["production_version"] == 1 and len(shown["versions"]) == 1
    listed = ok_json("list")
    assert isinstance(listed, list) and listed[0]["name"] == "gen"
    code, out, _ = gureum("list")
    assert code == 0 and "gen" in out and "accuracy >= 0.9" in out


def test_import_hf_folder_and_pytorch(cli_env: LiveServer, tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    weights(hf / "model.safetensors")
    assert ok_json("import", "llm", str(hf))["format"] == "huggingface"  # type: ignore[index]
    pt = tmp_path / "sd.pth"
    torch.save({"w": torch.ones(1)}, pt)
    assert ok_json("import", "llm", str(pt))["version"] == 2  # type: ignore[index]
    shown = ok_json("show", "llm:1")
    assert isinstance(shown, dict)
    assert sorted(f["path"] for f in shown["files"]) == ["config.json", "model.safetensors"]


def test_failures_exit_non_zero_with_a_message(cli_env: LiveServer, tmp_path: Path) -> None:
    odd = tmp_path / "weights.h5"
    odd.write_bytes(b"x")
    code, out, _ = gureum("import", "m", str(odd), "-o", "json")
    assert code == 1 and json.loads(out)["error"]["code"] == "invalid_request"
    code, _, stderr = gureum("import", "m", str(tmp_path / "absent.pt"))
    assert code == 1 and "absent.pt" in stderr
    code, _, stderr = gureum("show", "nope")
    assert code == 1 and "no model 'nope'" in stderr
    code, _, stderr = gureum("promote", "nope", "--stage", "staging")
    assert code == 1 and "NAME:VERSION" in stderr
    code, _, stderr = gureum("promote", "nope:x", "--stage", "staging")
    assert code == 1 and "positive number" in stderr
    code, _, stderr = gureum("gate", "nope", "--require", "acc==1")
    assert code == 1 and "METRIC OP NUMBER" in stderr


def test_parse_gate() -> None:
    g = parse_gate(" loss < 0.5 ")
    assert (g.metric, g.op, g.threshold) == ("loss", "<", 0.5)
