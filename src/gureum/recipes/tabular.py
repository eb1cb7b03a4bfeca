"""tabular: scikit-learn on the rows of CSV files, predicting one target column.

The task is classification when the target is text or has few distinct whole numbers, else
regression (``task`` overrides). Features go through a DictVectorizer (numbers as they are,
text one-hot as ``column=value``), so predictions take rows as plain dicts, unseen categories
are ignored and missing values imputed.

Rows are split as the version records: a version of one table splits its rows (unit ``row``,
by row index with the version's seed and ratio); otherwise each CSV is wholly on its file's
side. Column names and row numbers are the platform readers' own. Training is one ``fit`` of a few
seconds, so there are no checkpoints: a retry fits again.

The model is a joblib (pickle) file, and unpickling runs code. Two locks keep uploaded files
from doing so: the server hands this recipe only versions its own train jobs wrote
(``platform_written``), and ``load`` reads the file with an unpickler that resolves only the
classes a trained pipeline is made of (and no object arrays, which joblib would unpickle with
no such check), so a crafted file fails to load instead of running.
"""

from __future__ import annotations

import csv
import math
import pickle
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from joblib.numpy_pickle import NDArrayWrapper, NumpyArrayWrapper, NumpyUnpickler
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
    RunContext,
    TrainOutput,
    evaluation_report,
    export_files,
)
from gureum.recipes.dataset import DataFile, LocalDataset
from gureum.recipes.metrics import classification_report, regression_metrics
from gureum.recipes.params import TABULAR as NAME
from gureum.recipes.params import TabularParams as TabularParams
from gureum.recipes.params import check_tabular_dataset
from gureum.recipes.prediction_scores import MAX_CLASS_VALUES
from gureum.recipes.specs import SPECS

MODEL_FILE = "model.joblib"
Row = dict[str, str]
_SK = "sklearn."
_HGB = "sklearn.ensemble._hist_gradient_boosting."
# Exactly the globals the pipelines ``train`` builds pickle to (every model x task): nothing
# else is resolved, so a crafted file cannot reach os.system, eval, getattr or the like.
SAFE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("joblib.numpy_pickle", "NumpyArrayWrapper"),
        ("numpy", "dtype"),
        ("numpy", "float64"),
        ("numpy", "ndarray"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.random._pcg64", "PCG64"),
        ("numpy.random._mt19937", "MT19937"),
        ("numpy.random._pickle", "__bit_generator_ctor"),
        ("numpy.random._pickle", "__generator_ctor"),
        ("numpy.random.bit_generator", "SeedSequence"),
        ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
        (_SK + "_loss._loss", "CyHalfBinomialLoss"),
        (_SK + "_loss._loss", "CyHalfMultinomialLoss"),
        (_SK + "_loss._loss", "CyHalfSquaredError"),
        (_SK + "_loss._loss", "__pyx_unpickle_CyHalfMultinomialLoss"),
        (_SK + "_loss.link", "IdentityLink"),
        (_SK + "_loss.link", "Interval"),
        (_SK + "_loss.link", "LogitLink"),
        (_SK + "_loss.link", "MultinomialLogit"),
        (_SK + "_loss.loss", "HalfBinomialLoss"),
        (_SK + "_loss.loss", "HalfMultinomialLoss"),
        (_SK + "_loss.loss", "HalfSquaredError"),
        (_SK + "ensemble._forest", "RandomForestClassifier"),
        (_SK + "ensemble._forest", "RandomForestRegressor"),
        (_HGB + "binning", "_BinMapper"),
        (_HGB + "gradient_boosting", "HistGradientBoostingClassifier"),
        (_HGB + "gradient_boosting", "HistGradientBoostingRegressor"),
        (_HGB + "predictor", "TreePredictor"),
        (_SK + "feature_extraction._dict_vectorizer", "DictVectorizer"),
        (_SK + "impute._base", "SimpleImputer"),
        (_SK + "linear_model._logistic", "LogisticRegression"),
        (_SK + "linear_model._ridge", "Ridge"),
        (_SK + "pipeline", "Pipeline"),
        (_SK + "preprocessing._data", "StandardScaler"),
        (_SK + "preprocessing._label", "LabelEncoder"),
        (_SK + "tree._classes", "DecisionTreeClassifier"),
        (_SK + "tree._classes", "DecisionTreeRegressor"),
        (_SK + "tree._tree", "Tree"),
    }
)


class UnsafeModelFile(ModelMismatch):
    """A model file that asks the unpickler for something a trained pipeline never holds."""


class _PipelineUnpickler(NumpyUnpickler):  # type: ignore[misc]
    """joblib's unpickler, resolving only ``SAFE_GLOBALS`` and only plain-dtype arrays."""

    dispatch = NumpyUnpickler.dispatch.copy()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in SAFE_GLOBALS:
            raise UnsafeModelFile(
                f"{NAME}: {MODEL_FILE} refers to {module}.{name}, which no tabular model holds; "
                "refusing to load it (only files a platform train job wrote are loaded)"
            )
        return super().find_class(module, name)

    def load_build(self) -> None:
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
        top = self.stack[-1]
        if isinstance(top, NDArrayWrapper):
            raise UnsafeModelFile(f"{NAME}: {MODEL_FILE} uses joblib's old array format")
        if isinstance(top, NumpyArrayWrapper):
            # joblib reads an object array with a plain pickle.load: never let it.
            dtype = getattr(top, "dtype", None)
            plain = isinstance(dtype, np.dtype) and not dtype.hasobject
            if type(top) is not NumpyArrayWrapper or top.subclass is not np.ndarray or not plain:
                raise UnsafeModelFile(f"{NAME}: {MODEL_FILE} holds an object or foreign array")
            self.stack[-1] = top.read(self, self.ensure_native_byte_order)

    dispatch[pickle.BUILD[0]] = load_build


def load_pipeline(path: Path) -> Any:
    """The fitted pipeline in ``path``, read by the restricted unpickler."""
    with open(path, "rb") as fh:
        try:
            return _PipelineUnpickler(str(path), fh, True).load()
        except UnsafeModelFile:
            raise
        except Exception as exc:  # a truncated or foreign file: not a model we wrote
            raise ModelMismatch(f"{NAME}: {path.name} is not a model file: {exc}") from None


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
            except (TypeError, ValueError, OverflowError):
                raise BadInput(f"column {c!r} must be a number, not {str(v)[:40]!r}") from None
            if math.isinf(out[c]):  # the pipeline refuses it (a 500); NaN is a missing value
                raise BadInput(f"column {c!r} must be a finite number, not {str(v)[:40]!r}")
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
    description = SPECS[NAME].description
    Params = TabularParams
    unpickles_model = SPECS[NAME].unpickles_model

    def check_dataset(self, ds: LocalDataset, params: TabularParams | None = None) -> None:
        check_tabular_dataset(ds, params)

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
        return evaluation_report(ctx, NAME, metrics, details)

    def load(self, model_dir: Path, device: str = "cpu") -> TabularPredictor:
        cfg = ModelConfig.read(model_dir, NAME)
        path = model_dir / MODEL_FILE
        if not path.is_file():
            raise ModelMismatch(f"{model_dir} holds no {MODEL_FILE}")
        return TabularPredictor(load_pipeline(path), cfg)

    def export(self, model_dir: Path, dest: Path) -> list[Path]:
        ModelConfig.read(model_dir, NAME)
        return export_files(model_dir, dest, [MODEL_FILE, "config.json"])
