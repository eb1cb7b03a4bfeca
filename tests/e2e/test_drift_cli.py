"""`gureum endpoints drift E [--window W]` against a real server, as typed (no Ray: the deploy is
recorded and never applied; captured calls are stored and indexed as a replica does)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from gureum.cli.capture import parse_window
from gureum.schemas.capture import CaptureBatch, CapturedIn
from gureum.server.db.base import utcnow
from gureum.server.db.tables_serving import Endpoint
from gureum.server.services import capture as capture_service
from gureum.server.services import endpoints as endpoints_service
from gureum.server.services import models as models_service
from tests.conftest import LiveServer
from tests.e2e.cli_runner import run, run_json


@pytest.fixture
def shop(
    env: dict[str, str], live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tabular endpoint capturing every call, its model trained on orders:1 (a stand-in
    model file: nothing loads it here)."""
    for module in (models_service, endpoints_service):
        monkeypatch.setattr(module, "require_loadable", lambda *a, **k: None, raising=False)
    rng = np.random.default_rng(0)
    folder = tmp_path / "orders"
    folder.mkdir()
    with open(folder / "orders.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["price", "garment", "returned"])
        for i in range(300):
            w.writerow([round(rng.normal(50, 10), 2), ("dress", "shirt")[i % 2], "no"])
    assert run(env, "datasets", "push", "orders", str(folder)).exit_code == 0
    http = live_server.cloud.http()
    data = b"stand-in model"
    digest = hashlib.sha256(data).hexdigest()
    assert http.put(f"/v1/blobs/{digest}", content=data).status_code in (200, 201)
    body = {
        "files": [{"path": "model.joblib", "sha256": digest, "size": len(data)}],
        "recipe": "tabular",
        "params": {"target": "returned"},
        "dataset": "orders:1",
    }
    assert http.post("/v1/models/returns/versions", json=body).status_code == 201
    deployed = run(env, "deploy", "returns:1", "--endpoint", "shop", "--capture", "1")
    assert deployed.exit_code == 0, deployed.output


def _capture(live_server: LiveServer, prices: list[float]) -> None:
    """One captured call per price, in one batch object, as a replica stores and indexes it."""
    app = live_server.cloud.app
    with app.state.db.write() as s:
        ep = s.scalar(select(Endpoint).where(Endpoint.name == "shop"))
        assert ep is not None
        lines = [
            json.dumps(
                {
                    "request_id": f"req-{i:06d}",
                    "route": "predict",
                    "status": 200,
                    "input": {"input": {"price": p, "garment": "dress"}},
                }
            ).encode()
            + b"\n"
            for i, p in enumerate(prices)
        ]
        obj = app.state.store.write_blob(ep.workspace_id, [b"".join(lines)], max_bytes=10**7)
        records = [
            CapturedIn(
                request_id=f"req-{i:06d}",
                time=utcnow(),
                consumer_id=None,
                consumer_name="member:admin",
                model_version_id=ep.version_id,
                route="predict",
                status=200,
                object=obj.sha256,
                line=i,
                size=len(line),
                has_inputs=True,
                has_outputs=False,
            )
            for i, line in enumerate(lines)
        ]
        batch = CaptureBatch(records=records)
        capture_service.ingest_captured(s, ep, batch, app.state.store)


def test_drift_table_json_and_window(
    env: dict[str, str], shop: None, live_server: LiveServer
) -> None:
    few = run_json(env, "endpoints", "drift", "shop")
    assert few["message"].startswith("not enough captured calls (0 of 50)")
    assert "not enough captured calls" in run(env, "endpoints", "drift", "shop").stdout

    _capture(live_server, [round(float(p), 2) for p in np.random.default_rng(1).normal(90, 10, 80)])
    out = run_json(env, "endpoints", "drift", "shop", "--window", "30m")
    assert out["window_s"] == 1800 and out["samples"] == 80
    assert out["verdict"] == "drift" and out["reference"]["dataset"] == "orders:1"
    by_name = {f["name"]: f for f in out["features"]}
    assert by_name["price"]["verdict"] == "drift" and by_name["garment"]["unseen_share"] == 0.0

    table = run(env, "endpoints", "drift", "shop")
    assert table.exit_code == 0, table.output
    text = " ".join(table.stdout.split())
    assert "orders:1" in text and "80 samples in 80 captured calls" in text
    assert "price" in text and "drift" in text and "PSI: below 0.1 stable" in text

    bad = run(env, "endpoints", "drift", "shop", "--window", "2 weeks")
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    missing = run(env, "endpoints", "drift", "ghost", "-o", "json")
    assert missing.exit_code == 1
    assert json.loads(missing.stdout)["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("text", "seconds"), [("30m", 1800), ("1h", 3600), ("2d", 172_800), ("86400", 86_400)]
)
def test_windows_are_read_as_durations(text: str, seconds: int) -> None:
    assert parse_window(text) == seconds
