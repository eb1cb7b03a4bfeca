"""`gureum datasets ...` as a user runs it against a real server: output, files, failures."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console
from rich.style import Style
from typer.testing import CliRunner

from gureum.cli import datasets as datasets_cli
from gureum.cli.datasets import HALF_BLOCK, thumbnail_text
from gureum.cli.main import app
from gureum.cli.refs import parse_ref
from tests.conftest import LiveServer

runner = CliRunner()
MiB = 1024 * 1024


@pytest.fixture
def cli_env(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    env = {"GUREUM_URL": live_server.url, "GUREUM_API_KEY": live_server.cloud.admin_key}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield env


def gureum(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["datasets", *args])
    return result.exit_code, result.stdout, result.stderr


def ok_json(*args: str) -> object:
    code, out, err = gureum(*args, "-o", "json")
    assert code == 0, err or out
    return json.loads(out)


def images(root: Path) -> Path:
    for cls, color in (("shirt", (220, 30, 30)), ("skirt", (30, 30, 220))):
        for i in range(3):
            path = root / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 12), color).save(path)
    return root


def test_push_list_show_pull_delete_round_trip(cli_env: dict[str, str], tmp_path: Path) -> None:
    src = images(tmp_path / "garments")
    pushed = ok_json("push", "garments", str(src), "-m", "first", "--validation-ratio", "0.5")
    assert isinstance(pushed, dict)
    assert (pushed["dataset"], pushed["version"], pushed["file_count"]) == ("garments", 1, 6)
    assert pushed["split"]["validation_ratio"] == 0.5 and pushed["message"] == "first"

    listed = ok_json("list")
    assert isinstance(listed, list)
    assert [(d["name"], d["latest_version"]) for d in listed] == [("garments", 1)]

    shown = ok_json("show", "garments:1")
    assert isinstance(shown, dict)
    assert shown["schema"]["classes"] == {"shirt": 3, "skirt": 3}

    pulled = ok_json("pull", "garments", str(tmp_path / "out"))
    assert isinstance(pulled, dict) and pulled["version"] == 1
    for p in src.rglob("*.png"):
        assert (tmp_path / "out" / p.relative_to(src)).read_bytes() == p.read_bytes()

    deleted = ok_json("delete", "garments:1", "--yes")
    assert deleted == {"deleted": True, "dataset": "garments", "version": 1}
    code, out, _ = gureum("show", "garments:1", "-o", "json")
    assert code == 1 and json.loads(out)["error"]["code"] == "not_found"


def test_table_output_for_people(cli_env: dict[str, str], tmp_path: Path) -> None:
    src = images(tmp_path / "garments")
    code, out, _ = gureum("push", "garments", str(src))
    assert code == 0
    assert "pushed garments:1" in out and "6 files" in out
    code, out, _ = gureum("show", "garments")
    assert code == 0
    for shown in ("garments:1", "images", "shirt", "skirt", "16x12", "train", "shirt/0.png"):
        assert shown in out, shown
    assert HALF_BLOCK not in out  # no colours when piped: the preview lists the pictures
    code, out, _ = gureum("list")
    assert code == 0 and "garments" in out
    code, out, _ = gureum("versions", "garments")
    assert code == 0 and "images" in out
    code, out, _ = gureum("files", "garments:latest")
    assert code == 0 and "shirt/0.png" in out


def test_show_draws_thumbnails_on_a_colour_terminal(
    cli_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert gureum("push", "garments", str(images(tmp_path / "garments")))[0] == 0
    screen = io.StringIO()
    colour = Console(file=screen, force_terminal=True, color_system="truecolor", width=100)
    monkeypatch.setattr(datasets_cli, "console", colour)
    assert gureum("show", "garments")[0] == 0
    drawn = screen.getvalue()
    assert HALF_BLOCK in drawn
    assert "\x1b[38;2;220;30;30" in drawn  # the shirts' red, as a 24-bit colour


def test_table_preview_shows_first_rows(cli_env: dict[str, str], tmp_path: Path) -> None:
    csv = tmp_path / "sales.csv"
    csv.write_text("region,amount\nnorth,12\nsouth,7\n")
    assert gureum("push", "sales", str(csv))[0] == 0
    code, out, _ = gureum("show", "sales:1")
    assert code == 0
    for shown in ("region", "amount", "north", "south"):
        assert shown in out


def test_errors_are_one_line_and_exit_1(cli_env: dict[str, str], tmp_path: Path) -> None:
    code, _, err = gureum("show", "missing")
    assert code == 1 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    code, _, err = gureum("push", "x", str(tmp_path / "nope"))
    assert code == 1 and "cannot read" in err and "Traceback" not in err
    code, _, err = gureum("show", "x:zero")
    assert code == 1 and "positive number" in err
    images(tmp_path / "g")
    assert gureum("push", "g", str(tmp_path / "g"))[0] == 0
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    code, out, _ = gureum("pull", "g", str(tmp_path / "full"), "-o", "json")
    assert code == 1 and json.loads(out)["error"]["code"] == "conflict"
    assert gureum("pull", "g", str(tmp_path / "full"), "--overwrite")[0] == 0


def test_delete_needs_yes_when_not_interactive(cli_env: dict[str, str], tmp_path: Path) -> None:
    assert gureum("push", "keep", str(images(tmp_path / "g")))[0] == 0
    code, _, err = gureum("delete", "keep")
    assert code == 1 and "--yes" in err
    assert ok_json("show", "keep")
    assert gureum("delete", "keep", "--yes")[0] == 0
    assert gureum("show", "keep")[0] == 1


def test_parse_ref() -> None:
    assert parse_ref("data") == ("data", None)
    assert parse_ref("data:3") == ("data", 3)
    assert parse_ref("data:latest") == ("data", "latest")


def test_thumbnail_is_drawn_with_half_blocks() -> None:
    im = Image.new("RGB", (4, 3), (255, 0, 0))
    im.putpixel((0, 1), (0, 0, 255))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    text = thumbnail_text(base64.b64encode(buf.getvalue()).decode())
    assert text is not None
    assert text.plain == "\n".join([HALF_BLOCK * 4] * 2)
    first = text.spans[0].style
    assert isinstance(first, Style)
    assert first.color is not None and first.color.get_truecolor() == (255, 0, 0)
    assert first.bgcolor is not None and first.bgcolor.get_truecolor() == (0, 0, 255)
    assert thumbnail_text("not base64!") is None


# Runs the CLI and prints its own peak RSS (VmHWM of this process image) at exit. The rusage
# of a child would also count the pages of the pytest process it was forked from.
PEAK_RSS_LAUNCHER = (
    "import atexit, runpy, sys\n"
    "def peak():\n"
    "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
    "    sys.stderr.write(hwm[0])\n"
    "atexit.register(peak)\n"
    "sys.argv[0] = 'gureum'\n"
    "runpy.run_module('gureum', run_name='__main__')\n"
)


def test_push_of_a_large_file_stays_small_in_memory(
    live_server: LiveServer, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:
        for _ in range(100):
            fh.write(os.urandom(MiB))
    env = {
        **os.environ,
        "GUREUM_URL": live_server.url,
        "GUREUM_API_KEY": live_server.cloud.admin_key,
    }
    cmd = [
        sys.executable,
        "-c",
        PEAK_RSS_LAUNCHER,
        "datasets",
        "push",
        "big",
        str(big),
        "-o",
        "json",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total_bytes"] == 100 * MiB
    peak_mib = int(proc.stderr.rsplit("VmHWM:", 1)[1].split()[0]) / 1024  # kB in /proc
    assert peak_mib < 200, f"CLI peak RSS {peak_mib:.0f} MiB"
