"""Curation (issue 12): 100,000 captured calls of a tabular endpoint into a dataset version,
against a plain script that writes the same file and computes its sha256.

The captured calls are made as replicas make them: JSON-lines batch objects (1,000 calls each)
in the artifact store and their index rows through the internal route, on a control plane in
this process (SQLite unless --database-url). Each round alternates: ``datasets curate`` over
REST (query, read every batch object, build and deduplicate the rows, store the CSV, scan the
new version, commit) and the plain script (read the same batch objects, build the same rows,
write one CSV, sha256 it). Target: curate within 2x of the plain script.

    .venv/bin/python -m benchmarks.bench_curate [--records 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.integration.trained_models import register_trained

from benchmarks._util import load_average, median, save
from gureum.client import Client
from gureum.config import Settings
from gureum.samples import write as write_sample
from gureum.server.app import create_app
from gureum.server.db.tables_capture import CapturedRequest
from gureum.server.db.tables_serving import Endpoint
from gureum.server.services.bootstrap import bootstrap
from gureum.server.services.endpoints import endpoint_token

BATCH = 1000
SHIP = 5000


def _base(root: Path) -> tuple[list[str], list[dict[str, str]]]:
    folder = root / "orders"
    write_sample("tabular", folder, count=300)
    table = next(folder.glob("*.csv"))
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return list(rows[0]), rows


def _calls(header: list[str], rows: list[dict[str, str]], n: int) -> list[dict[str, Any]]:
    """``n`` distinct captured calls: base rows with a changed number, the model's answer."""
    rng = random.Random(0)
    numeric = [c for c in header if c != "returned" and rows[0][c].replace(".", "").isdigit()]
    calls = []
    for i in range(n):
        row = {c: v for c, v in rng.choice(rows).items() if c != "returned"}
        row[numeric[0]] = str(1000 + i)  # distinct rows: nothing deduplicated away
        calls.append({"inputs": [row], "prediction": rng.choice(("yes", "no"))})
    return calls


def _capture(app: Any, http: TestClient, calls: list[dict[str, Any]]) -> float:
    """Batch objects in the store and index rows through the internal route; seconds."""
    store = app.state.store
    with app.state.db.read() as s:
        ep = s.scalar(select(Endpoint).where(Endpoint.name == "shop"))
        assert ep is not None
        s.expunge(ep)
    token = endpoint_token(app.state.serving.secret, ep)
    now = datetime.now(UTC).isoformat()
    started = time.perf_counter()
    index: list[dict[str, Any]] = []
    for b in range(0, len(calls), BATCH):
        lines, rids = [], []
        for j, call in enumerate(calls[b : b + BATCH]):
            rid = f"bench-{b + j:08d}"
            rids.append(rid)
            line = {
                "request_id": rid,
                "route": "predict",
                "status": 200,
                "input": {"inputs": call["inputs"]},
                "output": {"outputs": [{"prediction": call["prediction"]}]},
            }
            lines.append(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        info = store.write_blob(ep.workspace_id, [b"".join(lines)], max_bytes=1 << 30)
        for j, rid in enumerate(rids):
            index.append(
                {
                    "request_id": rid,
                    "time": now,
                    "consumer_id": None,
                    "consumer_name": "member:admin",
                    "model_version_id": ep.version_id,
                    "route": "predict",
                    "status": 200,
                    "object": info.sha256,
                    "line": j,
                    "size": len(lines[j]),
                    "has_inputs": True,
                    "has_outputs": True,
                }
            )
        while len(index) >= SHIP or (index and b + BATCH >= len(calls)):
            chunk, index = index[:SHIP], index[SHIP:]
            r = http.post(
                "/v1/internal/endpoints/shop/captured",
                json={"records": chunk},
                headers={"authorization": f"Bearer {token}"},
            )
            assert r.status_code == 200, r.text
    return time.perf_counter() - started


def _plain(app: Any, header: list[str], out: Path) -> float:
    """What curation must do at the least: read the batch objects, build the rows, write one
    CSV and hash it."""
    store = app.state.store
    with app.state.db.read() as s:
        objects = list(dict.fromkeys(s.scalars(select(CapturedRequest.object))))
        ws = s.scalar(select(Endpoint.workspace_id).where(Endpoint.name == "shop"))
    started = time.perf_counter()
    seen: set[tuple[str, ...]] = set()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for obj in objects:
        with store.open_blob(ws, obj) as fh:
            for raw in fh:
                line = json.loads(raw)
                row = line["input"]["inputs"][0]
                label = line["output"]["outputs"][0]["prediction"]
                values = tuple(label if c == "returned" else str(row.get(c, "")) for c in header)
                if values not in seen:
                    seen.add(values)
                    writer.writerow(values)
    data = buf.getvalue().encode()
    out.write_bytes(data)
    hashlib.sha256(out.read_bytes()).hexdigest()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    results: dict[str, Any] = {"records": args.records, "load_before": load_average()}
    with tempfile.TemporaryDirectory(prefix="gureum-bench-curate-") as tmp_name:
        tmp = Path(tmp_name)
        header, rows = _base(tmp)
        home = tmp / "home"
        settings = Settings(home=home, artifacts=str(home / "artifacts"))
        if args.database_url:
            settings = settings.model_copy(update={"database_url": args.database_url})
        app = create_app(settings)
        token = bootstrap(app.state.db)
        assert token is not None
        http = TestClient(app, headers={"authorization": f"Bearer {token}"})
        client = Client("http://testserver", token, http=http)
        client.datasets.push("orders", tmp / "orders")
        model = tmp / "model"
        model.mkdir()
        (model / "config.json").write_text(json.dumps({"target": "returned"}))
        (model / "model.joblib").write_bytes(b"stand-in")
        register_trained(
            client, app.state.db, "returns", model, recipe="tabular", dataset="orders:1"
        )
        r = http.post("/v1/endpoints", json={"name": "shop", "model": "returns:1"})
        assert r.status_code == 201, r.text
        calls = _calls(header, rows, args.records)
        results["capture_index_s"] = round(_capture(app, http, calls), 2)
        ours: list[float] = []
        plain: list[float] = []
        for i in range(args.rounds):
            order = ("ours", "plain") if i % 2 == 0 else ("plain", "ours")
            for which in order:
                if which == "plain":
                    plain.append(_plain(app, header, tmp / f"plain-{i}.csv"))
                    continue
                t = time.perf_counter()
                r = http.post(
                    f"/v1/datasets/curated-{i}/curate",
                    json={"from_endpoint": "shop", "base": "orders:1"},
                )
                ours.append(time.perf_counter() - t)
                assert r.status_code == 201, r.text
                results.setdefault("source", r.json()["source"])
            print(f"  round {i + 1}: curate {ours[-1]:.2f} s, plain {plain[-1]:.2f} s", flush=True)
    source = results.pop("source")
    results.update(
        curate_s=[round(x, 2) for x in ours],
        plain_s=[round(x, 2) for x in plain],
        ratio=round(median(ours) / median(plain), 2),
        samples_added=source["samples_added"],
        load_after=load_average(),
    )
    results["met"] = {"curate <= 2x plain": results["ratio"] <= 2.0}
    print(json.dumps(results, indent=2))
    print(f"saved {save('curate', results)}")


if __name__ == "__main__":
    main()
