"""Evaluation arithmetic shared by recipes: classification reports and kernel MMD."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray


def confusion(y_true: Sequence[int], y_pred: Sequence[int], n: int) -> NDArray[np.int64]:
    """Rows are true classes, columns predicted ones."""
    m = np.zeros((n, n), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        m[int(t), int(p)] += 1
    return m


def classification_report(
    y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]
) -> tuple[dict[str, float], dict[str, Any]]:
    """Flat scalars for gates (accuracy, macro F1, ``precision/<class>``, ``recall/<class>``)
    and the details (confusion matrix with its labels, per-class support)."""
    m = confusion(y_true, y_pred, len(classes))
    total = int(m.sum())
    metrics: dict[str, float] = {"accuracy": float(np.trace(m) / total) if total else 0.0}
    f1s = []
    per_class: dict[str, dict[str, float]] = {}
    for i, name in enumerate(classes):
        tp = float(m[i, i])
        predicted, actual = float(m[:, i].sum()), float(m[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        metrics[f"precision/{name}"] = precision
        metrics[f"recall/{name}"] = recall
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
        if actual:
            f1s.append(f1)
    metrics["f1_macro"] = float(np.mean(f1s)) if f1s else 0.0
    details = {
        "classes": list(classes),
        "confusion_matrix": m.tolist(),
        "per_class": per_class,
        "samples": total,
    }
    return metrics, details


def regression_metrics(y: NDArray[Any], pred: NDArray[Any]) -> dict[str, float]:
    err = pred - y
    total = float(((y - y.mean()) ** 2).sum())
    return {
        "rmse": float(np.sqrt((err**2).mean())),
        "mae": float(np.abs(err).mean()),
        "r2": 1.0 - float((err**2).sum()) / total if total else 0.0,
    }


def median_bandwidth(x: torch.Tensor) -> float:
    """The median heuristic: the RBF width is the median pairwise distance of the reference."""
    d = torch.cdist(x, x)
    off = d[~torch.eye(len(x), dtype=torch.bool, device=x.device)]
    median = float(off.median()) if off.numel() else 1.0
    return median if median > 0 else 1.0


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """Unbiased squared maximum mean discrepancy with an RBF kernel; 0 means the same
    distribution, and small negative values are sampling noise around 0."""
    if len(x) < 2 or len(y) < 2:
        return float("nan")
    gamma = 1.0 / (2 * bandwidth * bandwidth)

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-gamma * torch.cdist(a, b).pow(2))

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(xx + yy - 2 * kxy.mean())
