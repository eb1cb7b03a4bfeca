"""tabular on the shop-orders sample: classification of ``returned``, regression of ``price``,
predictions from plain row dicts, and the refusals around them."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from gureum import samples
from gureum.recipes import (
    BadInput,
    DatasetMismatch,
    LocalDataset,
    LocalRunContext,
    get_recipe,
    train_and_evaluate,
)

FAST = {"max_iter": 40}


@pytest.fixture(scope="module")
def orders(tmp_path_factory: pytest.TempPathFactory) -> LocalDataset:
    root = tmp_path_factory.mktemp("orders")
    samples.write("tabular", root, count=600)
    return LocalDataset.from_folder(root)


@pytest.fixture(scope="module")
def rows(orders: LocalDataset) -> list[dict[str, str]]:
    with open(orders.root / "garments.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def returned(
    orders: LocalDataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LocalRunContext, Any]:
    ctx = LocalRunContext(tmp_path_factory.mktemp("returned"))
    return ctx, train_and_evaluate(ctx, "tabular", {**FAST, "target": "returned"}, orders)


def test_a_yes_no_target_is_classified_better_than_the_majority(
    returned: tuple[LocalRunContext, Any], rows: list[dict[str, str]]
) -> None:
    ctx, result = returned
    m = result.evaluation.metrics
    majority = max(sum(r["returned"] == v for r in rows) for v in ("yes", "no")) / len(rows)
    assert m["accuracy"] > majority
    assert {"f1_macro", "precision/yes", "recall/yes", "precision/no", "recall/no"} <= m.keys()
    details = result.evaluation.details
    assert details["task"] == "classification" and details["classes"] == ["no", "yes"]
    # The file was split by row (one CSV would otherwise land wholly on one side).
    assert 0.1 * len(rows) < details["samples"] < 0.3 * len(rows)
    config = json.loads((result.train.model_dir / "config.json").read_text())
    assert config["task"] == "classification" and config["columns"]["price"] == "number"
    assert config["columns"]["garment"] == "category"
    assert ctx.last_progress == (1, 1, 1)


def test_predict_takes_row_dicts_with_missing_and_unknown_columns(
    returned: tuple[LocalRunContext, Any], rows: list[dict[str, str]]
) -> None:
    _, result = returned
    predictor = get_recipe("tabular").load(result.train.model_dir)
    row: dict[str, Any] = {k: v for k, v in rows[0].items() if k != "returned"}
    sparse = {"garment": "dress", "price": 99.5, "colour": "red"}
    out = predictor.predict([row, sparse, {**row, "garment": "hat"}])
    assert [o["prediction"] in ("yes", "no") for o in out] == [True] * 3
    assert sum(out[0]["probabilities"].values()) == pytest.approx(1.0)
    with pytest.raises(BadInput, match="column 'price' must be a number"):
        predictor.predict([{**row, "price": "cheap"}])
    with pytest.raises(BadInput, match="each input must be a row"):
        predictor.predict(["garment=dress"])


def test_a_numeric_target_is_regressed(orders: LocalDataset, tmp_path: Path) -> None:
    ctx = LocalRunContext(tmp_path)
    result = train_and_evaluate(ctx, "tabular", {**FAST, "target": "price"}, orders)
    m = result.evaluation.metrics
    assert m["r2"] > 0.5 and m["rmse"] > 0 and m["mae"] > 0
    out = get_recipe("tabular").predict(result.train.model_dir, [{"garment": "jacket"}])
    assert isinstance(out[0]["prediction"], float)


def test_linear_model_and_dropped_columns(orders: LocalDataset, tmp_path: Path) -> None:
    params = {"target": "returned", "model": "linear", "drop": "customer_age,rating"}
    result = train_and_evaluate(LocalRunContext(tmp_path), "tabular", params, orders)
    config = json.loads((result.train.model_dir / "config.json").read_text())
    assert "customer_age" not in config["columns"] and "rating" not in config["columns"]
    assert result.evaluation.metrics["accuracy"] > 0.5
    files = get_recipe("tabular").export(result.train.model_dir, tmp_path / "export")
    assert sorted(p.name for p in files) == ["config.json", "model.joblib"]


def test_a_target_that_is_not_a_column_is_refused(orders: LocalDataset, tmp_path: Path) -> None:
    recipe = get_recipe("tabular")
    with pytest.raises(DatasetMismatch, match="target column 'refunded' is not in the table"):
        recipe.train(LocalRunContext(tmp_path), orders, recipe.Params(target="refunded"))
