"""Helpers of the dashboard's models and datasets page tests: a small tabular dataset and a
model with versions that report metrics (uploaded files in the platform's own format, no
recipe: nothing here is ever loaded)."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from gureum import Client


def push_table(admin: Client, tmp: Path, name: str = "rows") -> None:
    table = tmp / f"{name}.csv"
    table.write_text("x,y,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40)))
    admin.datasets.push(name, table)


def model_versions(
    admin: TestClient | httpx.Client,
    name: str,
    metrics: list[dict[str, Any]],
    dataset: str | None = None,
) -> None:
    """One version per entry of ``metrics``, in order (version 1 first)."""
    for m in metrics:
        data = secrets.token_bytes(32)
        digest = hashlib.sha256(data).hexdigest()
        assert admin.put(f"/v1/blobs/{digest}", content=data).status_code in (200, 201)
        body: dict[str, Any] = {
            "files": [{"path": "weights.bin", "sha256": digest, "size": len(data)}],
            "metrics": m,
        }
        if dataset:
            body["dataset"] = dataset
        made = admin.post(f"/v1/models/{name}/versions", json=body)
        assert made.status_code == 201, made.text


def gate(admin: TestClient | httpx.Client, name: str, metric: str, threshold: float) -> None:
    body = {"gates": [{"metric": metric, "op": ">=", "threshold": threshold}]}
    changed = admin.patch(f"/v1/models/{name}", json=body)
    assert changed.status_code == 200, changed.text
