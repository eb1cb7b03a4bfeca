"""tabular on the shop-orders sample: classification of ``returned``, regression of ``price``,
predictions from plain row dicts, and the refusals around them."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import joblib
import numpy as np
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
from gureum.recipes.base import ModelMismatch
from gureum.recipes.tabular import UnsafeModelFile, features, load_pipeline

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


# -- loading never runs code from the file (issue 10, item 2) -------------------------------


class _Touch:
    """Unpickling this creates ``path``: what a crafted model file would do (or worse)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def crafted_model(folder: Path, payload: object) -> Path:
    """A tabular model folder whose ``model.joblib`` is ``payload``, with a valid config."""
    folder.mkdir(parents=True)
    joblib.dump(payload, folder / "model.joblib")
    config = {"recipe": "tabular", "params": {}, "target": "returned", "columns": {}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda m: _Touch(m), id="reduce-to-open"),
        pytest.param(lambda m: {"steps": [_Touch(m)]}, id="nested"),
        pytest.param(lambda m: np.array([_Touch(m)], dtype=object), id="object-array"),
        pytest.param(lambda m: {"a": np.zeros(3), "b": np.array([_Touch(m)])}, id="after-array"),
    ],
)
def test_a_crafted_model_file_is_refused_without_running(
    payload: Any, orders: LocalDataset, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    folder = crafted_model(tmp_path / "model", payload(marker))
    recipe = get_recipe("tabular")
    with pytest.raises(UnsafeModelFile, match=r"refus|object or foreign array"):
        recipe.load(folder)
    with pytest.raises(ModelMismatch):
        recipe.evaluate(LocalRunContext(tmp_path / "run"), folder, orders)
    with pytest.raises(ModelMismatch):
        recipe.predict(folder, [{"garment": "dress"}])
    assert not marker.exists()
    # The check is in the file format, not the folder: joblib itself would have run it.
    joblib.load(folder / "model.joblib")
    assert marker.exists()


def test_a_truncated_model_file_is_a_model_mismatch(
    returned: tuple[LocalRunContext, Any], tmp_path: Path
) -> None:
    _, result = returned
    folder = tmp_path / "model"
    shutil.copytree(result.train.model_dir, folder)
    data = (folder / "model.joblib").read_bytes()
    (folder / "model.joblib").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelMismatch, match="not a model file"):
        get_recipe("tabular").load(folder)


@pytest.mark.parametrize("model", ["gradient_boosting", "random_forest", "linear"])
@pytest.mark.parametrize("target", ["returned", "price", "garment"])
def test_every_model_the_recipe_trains_loads_through_the_safe_reader(
    model: str, target: str, orders: LocalDataset, tmp_path: Path
) -> None:
    """The allow-list covers every estimator x task ``train`` can write (numbers compared)."""
    params = {"target": target, "model": model, "max_iter": 5}
    result = train_and_evaluate(LocalRunContext(tmp_path), "tabular", params, orders)
    path = result.train.model_dir / "model.joblib"
    safe, plain = load_pipeline(path), joblib.load(path)
    rows = [{"garment": "dress", "price": 20.0}, {"garment": "jacket", "colour": "red"}]
    x = [
        features(r, json.loads((path.parent / "config.json").read_text())["columns"]) for r in rows
    ]
    assert np.array_equal(safe.predict(x), plain.predict(x))
