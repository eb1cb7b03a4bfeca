"""`gureum samples` as a user runs it: the files, the printed summary and the failures."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from gureum.cli.main import app

runner = CliRunner()


def test_list_names_every_sample_with_its_default_count() -> None:
    result = runner.invoke(app, ["samples", "list", "-o", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["garments", "digits", "text", "tabular"]
    assert {r["name"]: r["default_count"] for r in rows}["garments"] == 320


def test_garments_default_writes_a_few_hundred_pictures(tmp_path: Path) -> None:
    out = tmp_path / "garments"
    result = runner.invoke(app, ["samples", "garments", str(out), "-o", "json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["files"] == 320 == len(list(out.glob("*/*.png")))
    assert summary["bytes"] == sum(p.stat().st_size for p in out.glob("*/*.png"))
    assert set(summary["classes"]) == {p.name for p in out.iterdir()}
    assert summary["path"] == str(out)


def test_table_output_summarises_for_people(tmp_path: Path) -> None:
    result = runner.invoke(app, ["samples", "tabular", str(tmp_path / "t"), "--count", "50"])
    assert result.exit_code == 0, result.output
    for shown in ("tabular", "columns", "returned", "rows", "50"):
        assert shown in result.stdout


def test_seed_option_reproduces_the_same_files(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        args = ["samples", "text", str(tmp_path / folder), "-n", "30", "--seed", "5"]
        assert runner.invoke(app, args).exit_code == 0
    assert (tmp_path / "a" / "corpus.txt").read_bytes() == (
        tmp_path / "b" / "corpus.txt"
    ).read_bytes()


def test_unknown_sample_fails_listing_the_names(tmp_path: Path) -> None:
    result = runner.invoke(app, ["samples", "shoes", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "unknown sample 'shoes'" in result.output
    assert "garments, digits, text, tabular" in result.output
    as_json = runner.invoke(app, ["samples", "shoes", str(tmp_path / "x"), "-o", "json"])
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["error"]["code"] == "bad_request"
    assert not (tmp_path / "x").exists()


def test_non_empty_folder_needs_force(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    refused = runner.invoke(app, ["samples", "digits", str(tmp_path), "-n", "10", "-o", "json"])
    assert refused.exit_code == 1
    error = json.loads(refused.stdout)["error"]
    assert error["code"] == "conflict" and "--force" in error["message"]
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]

    forced = runner.invoke(app, ["samples", "digits", str(tmp_path), "-n", "10", "--force"])
    assert forced.exit_code == 0, forced.output
    assert len(list(tmp_path.glob("*/*.png"))) == 10
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_missing_folder_and_bad_count_are_usage_errors(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["samples", "garments"])
    assert missing.exit_code == 1
    assert "DIR" in missing.output
    zero = runner.invoke(app, ["samples", "garments", str(tmp_path / "g"), "--count", "0"])
    assert zero.exit_code == 2
    too_many = runner.invoke(app, ["samples", "digits", str(tmp_path / "d"), "-n", "5000"])
    assert too_many.exit_code == 1
    assert "1797" in too_many.output
    assert not (tmp_path / "g").exists() and not (tmp_path / "d").exists()
