"""Scoring a model without an evaluation of its own (a user's predictor): what is scored,
against which truth, and what a user is told when there is nothing to score."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from gureum.recipes.base import DatasetMismatch, RecipeError
from gureum.recipes.dataset import LocalDataset
from gureum.recipes.prediction_scores import (
    check_scored_dataset,
    label_of,
    score,
    validation_examples,
)
from tests.unit.test_recipes_dataset import classes, write


def table(tmp_path: Path) -> LocalDataset:
    rows = ["text,stars"] + [f"review {i},{i % 5}" for i in range(40)]
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "reviews.csv").write_text("\n".join(rows) + "\n")
    return LocalDataset.from_folder(tmp_path / "t", validation_ratio=0.25)


def test_labelled_images_are_scored_by_their_folder_sent_as_base64(tmp_path: Path) -> None:
    ds = LocalDataset.from_folder(write(tmp_path / "pets", classes()), validation_ratio=0.25)
    inputs, truth = validation_examples(ds, {})
    held = ds.select("image", "validation")
    assert truth == [f.label for f in held] and set(truth) == {"cat", "dog"}
    assert base64.b64decode(inputs[0]) == ds.path(held[0]).read_bytes()


def test_table_rows_lose_the_truth_column_and_only_validation_rows_count(
    tmp_path: Path,
) -> None:
    ds = table(tmp_path)
    inputs, truth = validation_examples(ds, {"target": "stars"})
    assert 0 < len(inputs) < 40 and len(inputs) == len(truth)
    assert all(set(row) == {"text"} for row in inputs)
    assert all(t == str(int(r["text"].split()[1]) % 5) for t, r in zip(truth, inputs, strict=True))


def test_tables_need_a_truth_column_named_and_text_has_nothing_to_score(
    tmp_path: Path,
) -> None:
    with pytest.raises(DatasetMismatch, match=r"params\.target"):
        check_scored_dataset(table(tmp_path), {})
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("just words\n" * 20)
    with pytest.raises(DatasetMismatch, match="neither"):
        check_scored_dataset(LocalDataset.from_folder(tmp_path / "notes"), {"target": "x"})


def test_a_prediction_is_the_output_or_its_label_field() -> None:
    assert label_of("cat", 0) == "cat"
    assert label_of(3, 0) == 3.0
    assert label_of({"label": "dog", "score": 0.9}, 0) == "dog"
    assert label_of({"prediction": {"value": 2.5}}, 0) == 2.5
    assert label_of({"probs": [0.1, 0.7, 0.2]}, 0) == "1"  # class scores: the largest's index
    assert label_of({"y": [2.5]}, 0) == 2.5  # the only field; one number is the value
    with pytest.raises(RecipeError, match="output 4: nothing to score"):
        label_of({"hits": ["a"], "misses": 2}, 4)
    with pytest.raises(RecipeError):
        label_of(True, 0)


def test_numbers_against_numeric_truth_are_a_regression_else_a_classification() -> None:
    metrics, details = score(["1.5", "2", "4.5"], [1.5, 2.0, 3.5])
    assert details == {"task": "regression", "samples": 3}
    assert metrics["mae"] == pytest.approx(1 / 3)
    # A few distinct whole numbers are class ids, as the tabular recipe decides.
    metrics, details = score(["1", "2", "2"], [1.0, 2.0, 1.0])
    assert details["task"] == "classification" and metrics["accuracy"] == pytest.approx(2 / 3)

    metrics, details = score(["a", "b", "b", "a"], ["a", "b", "a", "c"])
    assert details["task"] == "classification"
    assert details["classes"] == ["a", "b", "c"]  # a predicted label never seen in the truth
    assert metrics["accuracy"] == 0.5

    # Whole numbers predicted for a numeric truth given as classes: "3" and 3.0 agree.
    metrics, _ = score(["3", "x"], [3.0, "x"])
    assert metrics["accuracy"] == 1.0
