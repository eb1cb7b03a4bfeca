"""Scoring a model's predictions against a dataset's truth: the evaluation of a model that has
none of its own (a script job's ``gureum.serve.Predictor``, an imported ONNX file).

The truth is the validation split's: an image's class (its folder) or, for tables, the column
the job names (``params.target``); the input is the image (base64, as batch prediction sends
it) or the row without that column (for ONNX, its numbers in column order). A prediction is
the output itself when it is a string or a number, else its first ``label``/``prediction``/
``class``/``value`` field (or its only field); a list of one number is that number, a list of
several (class scores) the index of the largest. Numbers against numeric truth are scored as a
regression (RMSE, MAE, R2), unless the truth is a few (at most 10) distinct whole numbers, class
ids; anything else as a classification over the labels seen (accuracy, macro F1, per-class
precision and recall).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Any

from gureum.recipes.base import (
    DatasetMismatch,
    EvalOutput,
    RecipeError,
    RunContext,
    evaluation_report,
)
from gureum.recipes.dataset import LocalDataset

LABEL_KEYS = ("label", "prediction", "class", "value")
MAX_CLASS_VALUES = 10  # more distinct whole numbers are a quantity (the tabular recipe's rule)
Truth = str | float


def check_scored_dataset(ds: LocalDataset, params: Any) -> None:
    """From the manifest alone (at submission): something to score, and a truth column named
    when the truth is in tables."""
    if [f for f in ds.select("image", "validation") if f.label]:
        return
    if not ds.select("table"):
        raise DatasetMismatch(
            "an evaluation scores validation images of labelled folders or table rows; this "
            "dataset has neither"
        )
    target = params.get("target") if isinstance(params, Mapping) else None
    if not isinstance(target, str) or not target:
        raise DatasetMismatch(
            "say which column is the truth: params.target (gureum evaluate ... --param "
            "target=COLUMN)"
        )


def check_scored_tables(ds: LocalDataset, params: Any) -> None:
    """The same, for a model that takes numbers only (an ONNX file): table rows."""
    if not ds.select("table"):
        raise DatasetMismatch(
            "this model is evaluated on table rows (numeric columns in its input order); the "
            "dataset has no tables"
        )
    check_scored_dataset(ds, params)


def numeric_rows(rows: list[Any]) -> list[list[float]]:
    """Each row's values in column order, as numbers (an ONNX model's feature vector)."""
    out = []
    for i, row in enumerate(rows):
        values = []
        for column, value in row.items():
            try:
                values.append(float(value))
            except (TypeError, ValueError):
                raise DatasetMismatch(
                    f"column {column!r} is not numeric (validation row {i}: {str(value)[:50]!r}); "
                    "this model takes numbers"
                ) from None
        out.append(values)
    return out


def text_column(rows: list[Any], name: object) -> list[str]:
    """The rows' texts: column ``name``, or the only column there is."""
    columns = list(rows[0]) if rows else []
    if name is None and len(columns) == 1:
        name = columns[0]
    if not isinstance(name, str) or name not in columns:
        raise DatasetMismatch(
            f"name the text column: params.text (one of {', '.join(map(repr, columns[:20]))})"
        )
    return [str(r[name]) for r in rows]


def validation_examples(ds: LocalDataset, params: Any) -> tuple[list[Any], list[Truth]]:
    """(inputs, truth) of the dataset's validation split."""
    check_scored_dataset(ds, params)
    images = [f for f in ds.select("image", "validation") if f.label]
    if images:
        inputs = [base64.b64encode(ds.path(f).read_bytes()).decode() for f in images]
        return inputs, [str(f.label) for f in images]
    target = str(params["target"])
    from gureum.recipes.tabular import load_rows  # sklearn: only where tables are read

    _, rows = load_rows(ds)
    rows = [r for r in rows if (r.get(target) or "") != ""]
    if not rows:
        raise DatasetMismatch(f"no validation rows with a {target!r} value")
    features: list[Any] = [{k: v for k, v in r.items() if k != target} for r in rows]
    return features, [str(r[target]) for r in rows]


def scored(
    ctx: RunContext,
    recipe: str,
    predict: Callable[[list[Any]], list[Any]],
    inputs: list[Any],
    truth: list[Truth],
    batch: int,
    pick: Callable[[Any], object] = lambda output: output,
    details: Mapping[str, Any] | None = None,
) -> EvalOutput:
    """The evaluation: ``inputs`` predicted ``batch`` at a time, the prediction in each output
    (``pick``) scored against ``truth``, reported as ``evaluation.json``."""
    predicted: list[Truth] = []
    for start in range(0, len(inputs), batch):
        outputs = predict(inputs[start : start + batch])
        predicted += [label_of(pick(o), start + i) for i, o in enumerate(outputs)]
        ctx.progress(1, min(start + batch, len(inputs)), len(inputs))
    metrics, found = score(truth, predicted)
    return evaluation_report(ctx, recipe, metrics, {**found, **(details or {})})


def label_of(output: object, index: int) -> Truth:
    if isinstance(output, Mapping):
        for key in LABEL_KEYS:
            if key in output:
                return label_of(output[key], index)
        if len(output) == 1:
            return label_of(next(iter(output.values())), index)
    if isinstance(output, list) and output and all(_is_number(v) for v in output):
        # One number is the value; several are class scores: the index of the largest.
        return float(output[0]) if len(output) == 1 else str(output.index(max(output)))
    if isinstance(output, str):
        return output
    if isinstance(output, int | float) and not isinstance(output, bool):
        return float(output)
    raise RecipeError(
        f"output {index}: nothing to score; return a string or number, or an object with one "
        f"of {', '.join(LABEL_KEYS)} (got {str(output)[:200]})"
    )


def score(truth: list[Truth], predicted: list[Truth]) -> tuple[dict[str, float], dict[str, Any]]:
    from gureum.recipes import metrics as m  # numpy and torch: the job worker's

    numbers = _floats(truth)
    quantities = numbers is not None and not _classes(numbers)
    if quantities and all(isinstance(p, float) for p in predicted):
        import numpy as np

        y, pred = np.array(numbers, dtype=float), np.array(predicted, dtype=float)
        return m.regression_metrics(y, pred), {"task": "regression", "samples": len(truth)}
    said = [_text(p) for p in predicted]
    classes = sorted({str(t) for t in truth} | set(said))
    index = {c: i for i, c in enumerate(classes)}
    metrics, details = m.classification_report(
        [index[str(t)] for t in truth], [index[p] for p in said], classes
    )
    return metrics, {"task": "classification", **details}


def _classes(values: list[float]) -> bool:
    """Few distinct whole numbers are class ids, as the tabular recipe decides."""
    distinct = set(values)
    return len(distinct) <= MAX_CLASS_VALUES and all(v.is_integer() for v in distinct)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _floats(values: list[Truth]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def _text(value: Truth) -> str:
    """A predicted class as the truth's text: 3.0 predicted for a "3" column is "3"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
