"""tabular: scikit-learn on the rows of CSV files, predicting one target column.

The task is classification when the target is text or has few distinct whole numbers, else
regression (``task`` overrides). Features go through a DictVectorizer (numbers as they are,
text one-hot as ``column=value``), so predictions take rows as plain dicts, unseen categories
are ignored and missing values imputed.

Rows are split as the version records: a version of one table splits its rows (unit ``row``,
by row index with the version's seed and ratio); otherwise each CSV is wholly on its file's
side. Column names and row numbers are the platform readers' own. Training is one ``fit`` of a few
seconds, so there are no checkpoints: a retry fits again. The model is a joblib (pickle) file:
load only model folders the platform wrote.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import joblib
import numpy as np
from pydantic import Field, field_validator
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.feature_extraction import DictVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from gureum.datasets.readers import TABLE_EXTENSIONS, extension, table_rows
from gureum.recipes.base import (
    BadInput,
    Cancelled,
    DatasetMismatch,
    EvalOutput,
    ModelConfig,
    ModelMismatch,
    RecipeBase,
    RecipeParams,
    RunContext,
    TrainOutput,
    export_files,
)
from gureum.recipes.dataset import DataFile, LocalDataset
from gureum.recipes.metrics import classification_report

NAME = "tabular"
MODEL_FILE = "model.joblib"
MAX_CLASS_VALUES = 10
Row = dict[str, str]


class TabularParams(RecipeParams):
    target: str = Field(..., min_length=1, description="the column to predict")
    task: Literal["auto", "classification", "regression"] = "auto"
    model: Literal["gradient_boosting", "random_forest", "linear"] = "gradient_boosting"
    drop: list[str] = Field(default_factory=list, description="columns to leave out (ids)")
    max_iter: int = Field(200, ge=1, le=100_000, description="boosting rounds / forest trees")
    learning_rate: float = Field(0.1, gt=0, le=1)
    max_depth: int | None = Field(None, ge=1, le=1000)

    @field_validator("drop", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        return [c.strip() for c in v.split(",") if c.strip()] if isinstance(v, str) else v


def _is_number(v: str) -> bool:
    try:
        return math.isfinite(float(v))
    except ValueError:
        return False


def _read_rows(ds: LocalDataset, f: DataFile) -> list[Row]:
    try:
        with open(ds.path(f), "rb") as fh:
            return list(table_rows(fh, TABLE_EXTENSIONS.get(extension(f.path), ",")))
    except csv.Error as exc:
        raise DatasetMismatch(f"{NAME}: {f.path} is not a valid CSV file: {exc}") from None


def load_rows(ds: LocalDataset) -> tuple[list[Row], list[Row]]:
    """(train, validation) rows of every table, split as the version records."""
    train: list[Row] = []
    val: list[Row] = []
    for f in ds.select("table"):
        rows = _read_rows(ds, f)
        if ds.split.splits_rows_of(f.path):
            kept, held = ds.split.split_rows(rows)
            train.extend(kept)
            val.extend(held)
        else:
            (val if f.split == "validation" else train).extend(rows)
    return train, val


def table_columns(schema: Mapping[str, Any]) -> list[str] | None:
    """The column names every table shares, from the version's schema (one table: its
    ``columns``; several: ``tables``), or None when the schema records none."""
    if isinstance(schema.get("columns"), list):
        tables: list[Any] = [schema]
    elif isinstance(schema.get("tables"), Mapping):
        tables = list(schema["tables"].values())
    else:
        return None
    shared: list[str] | None = None
    for t in tables:
        columns = t.get("columns") if isinstance(t, Mapping) else None
        names = [str(c["name"]) for c in columns or [] if isinstance(c, Mapping) and "name" in c]
        shared = names if shared is None else [c for c in shared if c in names]
    return shared


def column_types(rows: list[Row], columns: list[str]) -> dict[str, str]:
    """``number`` when every non-empty value parses as a finite float, else ``category``."""
    out = {}
    for c in columns:
        values = [r.get(c) or "" for r in rows]
        numeric = all(_is_number(v) for v in values if v != "")
        out[c] = "number" if numeric and any(values) else "category"
    return out


def features(row: dict[str, Any], types: dict[str, str]) -> dict[str, Any]:
    """One row as the vectorizer wants it: numbers as floats (NaN when missing), text as is."""
    out: dict[str, Any] = {}
    for c, kind in types.items():
        v = row.get(c)
        if kind == "number":
            try:
                out[c] = float(v) if v not in (None, "") else math.nan
            except (TypeError, ValueError):
                raise BadInput(f"column {c!r} must be a number, not {v!r}") from None
        elif v not in (None, ""):
            out[c] = str(v)
    return out


def _estimator(p: TabularParams, classify: bool) -> Any:
    if p.model == "gradient_boosting":
        cls = HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor
        return cls(
            max_iter=p.max_iter,
            learning_rate=p.learning_rate,
            max_depth=p.max_depth,
            random_state=p.seed,
        )
    if p.model == "random_forest":
        forest = RandomForestClassifier if classify else RandomForestRegressor
        return forest(n_estimators=p.max_iter, max_depth=p.max_depth, random_state=p.seed)
    return LogisticRegression(max_iter=max(p.max_iter, 1000)) if classify else Ridge()


def regression_metrics(y: np.ndarray[Any, Any], pred: np.ndarray[Any, Any]) -> dict[str, float]:
    err = pred - y
    total = float(((y - y.mean()) ** 2).sum())
    return {
        "rmse": float(np.sqrt((err**2).mean())),
        "mae": float(np.abs(err).mean()),
        "r2": 1.0 - float((err**2).sum()) / total if total else 0.0,
    }


class TabularPredictor:
    def __init__(self, pipeline: Any, cfg: ModelConfig) -> None:
        self.pipeline = pipeline
        self.types: dict[str, str] = cfg.info["columns"]
        self.classes: list[str] | None = cfg.info.get("classes")

    def predict(self, inputs: list[Any]) -> list[Any]:
        """Rows (dicts of column -> value) -> ``{"prediction"}``, plus ``probabilities`` for
        classification. Unknown columns are ignored; missing ones are imputed."""
        if not inputs:
            return []
        if not all(isinstance(r, dict) for r in inputs):
            raise BadInput("each input must be a row: an object of column -> value")
        x = [features(r, self.types) for r in inputs]
        if self.classes is None:
            return [{"prediction": float(v)} for v in self.pipeline.predict(x)]
        probs = self.pipeline.predict_proba(x)
        order = [self.classes[int(i)] for i in self.pipeline.classes_]
        out = []
        for row in probs:
            best = int(np.argmax(row))
            out.append(
                {
                    "prediction": order[best],
                    "probabilities": {c: float(p) for c, p in zip(order, row, strict=True)},
                }
            )
        return out


class Tabular(RecipeBase):
    name = NAME
    description = "scikit-learn classification or regression on a CSV target column"
    Params = TabularParams

    def check_dataset(self, ds: LocalDataset, params: TabularParams | None = None) -> None:
        if not ds.select("table"):
            raise DatasetMismatch(f"{NAME} needs CSV files with a header row; got {ds.describe()}")
        columns = table_columns(ds.schema)
        if params is not None and columns is not None:
            if params.target not in columns:
                raise DatasetMismatch(
                    f"{NAME}: target column {params.target!r} is not in the table; "
                    f"columns: {', '.join(columns)}"
                )
            if len([c for c in columns if c != params.target and c not in params.drop]) < 1:
                raise DatasetMismatch(f"{NAME}: no feature columns left besides the target")

    def train(self, ctx: RunContext, ds: LocalDataset, params: TabularParams) -> TrainOutput:
        self.check_dataset(ds, params)
        train, val = load_rows(ds)
        if not train or params.target not in train[0]:
            raise DatasetMismatch(f"{NAME}: no training rows with a {params.target!r} column")
        rows = [r for r in train if (r.get(params.target) or "") != ""]
        columns = [c for c in train[0] if c != params.target and c not in params.drop]
        types = column_types(rows, columns)
        target_values = [r[params.target] for r in rows]
        classify = self._classify(params, target_values)
        classes = sorted(set(target_values)) if classify else None
        y = (
            np.array([classes.index(v) for v in target_values])
            if classes is not None
            else np.array([float(v) for v in target_values])
        )
        steps: list[tuple[str, Any]] = [
            ("vectorize", DictVectorizer(sparse=False)),
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ]
        if params.model == "linear":
            steps.append(("scale", StandardScaler()))
        steps.append(("model", _estimator(params, classify)))
        pipeline = Pipeline(steps)
        task = "classification" if classify else "regression"
        ctx.log(f"{NAME}: {task} of {params.target!r} on {len(rows)} rows, {len(columns)} columns")
        if ctx.should_stop():
            raise Cancelled("stopped before fitting")
        ctx.progress(1, 0, 1)
        pipeline.fit([features(r, types) for r in rows], y)
        ctx.progress(1, 1, 1)
        model_dir = ctx.artifacts_dir / "model"
        model_dir.mkdir(parents=True, exist_ok=True)
        joblib.dump(pipeline, model_dir / MODEL_FILE)
        info: dict[str, Any] = {"task": task, "target": params.target, "columns": types}
        if classes is not None:
            info["classes"] = classes
        cfg = ModelConfig(NAME, params.model_dump(), info)
        cfg.write(model_dir)
        metrics = self._score(TabularPredictor(pipeline, cfg), val, params.target)[0] if val else {}
        ctx.log_metrics(1, metrics, 1)
        return TrainOutput(model_dir, metrics, epochs_run=1)

    @staticmethod
    def _classify(params: TabularParams, values: list[str]) -> bool:
        if params.task != "auto":
            return params.task == "classification"
        if not all(_is_number(v) for v in values):
            return True
        distinct = set(values)
        return len(distinct) <= MAX_CLASS_VALUES and all(float(v).is_integer() for v in distinct)

    def _score(
        self, predictor: TabularPredictor, rows: list[Row], target: str
    ) -> tuple[dict[str, float], dict[str, Any]]:
        rows = [r for r in rows if (r.get(target) or "") != ""]
        if not rows:
            raise DatasetMismatch(f"{NAME}: no validation rows with a {target!r} value")
        predicted = [p["prediction"] for p in predictor.predict(list(rows))]
        truth = [r[target] for r in rows]
        if predictor.classes is None:
            y = np.array([float(v) for v in truth])
            metrics = regression_metrics(y, np.array(predicted, dtype=float))
            return metrics, {"task": "regression", "samples": len(rows)}
        classes = predictor.classes
        index = {c: i for i, c in enumerate(classes)}
        known = [(index[t], index[p]) for t, p in zip(truth, predicted, strict=True) if t in index]
        metrics, details = classification_report(
            [t for t, _ in known], [p for _, p in known], classes
        )
        return metrics, {"task": "classification", **details}

    def evaluate(self, ctx: RunContext, model_dir: Path, ds: LocalDataset) -> EvalOutput:
        predictor = self.load(model_dir)
        target = ModelConfig.read(model_dir, NAME).info["target"]
        _, val = load_rows(ds)
        metrics, details = self._score(predictor, val, target)
        report = ctx.artifacts_dir / "evaluation.json"
        report.write_text(json.dumps({"metrics": metrics, **details}, indent=2))
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "/" not in k)
        ctx.log(f"{NAME}: {shown}")
        return EvalOutput(metrics, details, [report])

    def load(self, model_dir: Path, device: str = "cpu") -> TabularPredictor:
        cfg = ModelConfig.read(model_dir, NAME)
        path = model_dir / MODEL_FILE
        if not path.is_file():
            raise ModelMismatch(f"{model_dir} holds no {MODEL_FILE}")
        return TabularPredictor(joblib.load(path), cfg)

    def export(self, model_dir: Path, dest: Path) -> list[Path]:
        ModelConfig.read(model_dir, NAME)
        return export_files(model_dir, dest, [MODEL_FILE, "config.json"])
