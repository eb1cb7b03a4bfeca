"""Drift of a tabular endpoint (issue 12, item 5) on the control plane: captured calls (written
as replicas write them: batch objects in the artifact store, index rows through the internal
route) against the training split of the served model's dataset. REST, SDK, the Prometheus
gauges and the trigger function. No Ray. SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import csv
import io
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from gureum.config import Settings
from gureum.datasets.split import count_validation_rows
from gureum.recipes.textdata import load_text
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables_capture import CapturedRequest
from gureum.server.services import drift as drift_service
from gureum.server.services import drift_data
from gureum.storage.store import ArtifactStore
from tests.integration.test_consumers_api import member_key
from tests.integration.test_curate_api import Traffic, _local, _register
from tests.integration.test_endpoints_api import Env, make_env

HEADER = ["price", "garment", "size", "returned"]
GARMENTS = ("dress", "shirt", "coat")
TRAIN_ROWS = 1000


@pytest.fixture
def env(settings: Settings) -> Iterator[Env]:
    yield from make_env(settings)


def _rows(seed: int, n: int, *, price: float = 50.0, hats: float = 0.0) -> list[dict[str, Any]]:
    """Orders as the shop sees them: a price, a garment (a share of hats: a category the
    training data never had), a size; ``returned`` is the model's target."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        garment = "hat" if rng.random() < hats else str(rng.choice(GARMENTS, p=[0.5, 0.3, 0.2]))
        out.append(
            {
                "price": round(float(rng.normal(price, 10)), 2),
                "garment": garment,
                "size": int(rng.integers(1, 5)),
            }
        )
    return out


def _deploy(env: Env, tmp: Path, rate: float = 1.0) -> Traffic:
    folder = tmp / "orders"
    folder.mkdir()
    with open(folder / "orders.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, HEADER)
        writer.writeheader()
        for i, row in enumerate(_rows(0, TRAIN_ROWS)):
            writer.writerow({**row, "returned": ("no", "yes")[i % 3 == 0]})
    env.cloud.client().datasets.push("orders", folder)
    _register(env, "returns", "tabular", "orders:1", target="returned")
    env.deploy("returns:1", capture={"rate": rate})
    return Traffic(env, "shop")  # one per endpoint: it numbers the request ids


def _send(traffic: Traffic, rows: list[dict[str, Any]], per_call: int = 4) -> list[str]:
    """The rows as captured calls: ``{"inputs": [...]}`` of ``per_call`` rows, and one-row
    calls as ``{"input": row}``."""
    calls = []
    for i in range(0, len(rows), per_call):
        chunk = rows[i : i + per_call]
        body = {"inputs": chunk} if len(chunk) > 1 else {"input": chunk[0]}
        calls.append((body, {"outputs": [{"prediction": "no"} for _ in chunk]}))
    return traffic.calls(calls)


def _drift(env: Env, status: int = 200, name: str = "shop", **params: Any) -> Any:
    r = env.http.get(f"/v1/endpoints/{name}/drift", params=params)
    assert r.status_code == status, r.text
    return r.json()


def _features(out: Any) -> dict[str, Any]:
    return {f["name"]: f for f in out["features"]}


def _db(env: Env) -> Database:
    db: Database = env.cloud.app.state.db
    return db


def _store(env: Env) -> ArtifactStore:
    store: ArtifactStore = env.cloud.app.state.store
    return store


def test_live_rows_like_the_training_rows_are_stable(env: Env, tmp_path: Path) -> None:
    traffic = _deploy(env, tmp_path)
    _send(traffic, _rows(1, 300, price=50.0), per_call=3)
    out = _drift(env)
    assert (out["endpoint"], out["model"], out["recipe"]) == ("shop", "returns:1", "tabular")
    assert out["captured_calls"] == 100 and out["samples"] == 300 and out["enough"] is True
    assert out["verdict"] == "stable" and out["score"] < 0.1
    assert out["message"].startswith("stable: largest PSI")
    split = env.cloud.client().datasets.version("orders", 1).split
    held = count_validation_rows(split["seed"], TRAIN_ROWS, split["validation_ratio"])
    assert out["reference"] == {
        "dataset": "orders:1",
        "samples": TRAIN_ROWS - held,
        "total": TRAIN_ROWS - held,
    }
    features = _features(out)
    assert set(features) == {"price", "garment", "size"}  # the target is not a feature
    assert features["price"]["kind"] == "numeric" and features["garment"]["kind"] == "categorical"
    assert all(f["verdict"] == "stable" for f in features.values())
    assert features["price"]["ks_pvalue"] > 0.05
    assert features["price"]["reference_mean"] == pytest.approx(50, abs=1.5)
    quality = out["quality"]
    assert quality["samples"] == 300 and quality["schema_violations"] == 0
    assert features["garment"]["unseen_share"] == 0.0
    # The trigger function gives the same score.
    score = drift_service.drift_score(_db(env), _store(env), "shop")
    assert score == pytest.approx(out["score"])


def test_shifted_prices_and_a_new_garment_are_drift_the_rest_stable(
    env: Env, tmp_path: Path
) -> None:
    traffic = _deploy(env, tmp_path)
    live = _rows(2, 200, price=75.0, hats=0.4)
    live[0] = {**live[0], "price": "cheap", "colour": "red"}  # a text price, an unknown column
    live[1] = {**live[1], "size": None}
    _send(traffic, live)
    out = _drift(env)
    assert out["verdict"] == "drift" and out["score"] > 0.25
    features = _features(out)
    assert features["price"]["verdict"] == "drift" and features["price"]["ks_pvalue"] < 1e-6
    assert features["price"]["live_mean"] == pytest.approx(75, abs=2)
    assert features["price"]["out_of_range_share"] > 0.05
    assert features["garment"]["verdict"] == "drift"
    hats = sum(r["garment"] == "hat" for r in live)
    assert features["garment"]["unseen_share"] == pytest.approx(hats / 200)
    assert features["size"]["verdict"] == "stable"
    assert features["size"]["missing_share"] == pytest.approx(1 / 200)
    assert out["score"] == max(f["psi"] for f in features.values())
    assert "(price)" in out["message"] or "(garment)" in out["message"]
    quality = out["quality"]
    assert quality["unknown_columns"] == {"colour": 1}
    assert quality["invalid_values"] == {"price": 1}
    assert quality["schema_violations"] == 2 and features["price"]["invalid"] == 1


def test_too_few_calls_give_no_verdict_and_old_calls_are_outside_the_window(
    env: Env, tmp_path: Path
) -> None:
    traffic = _deploy(env, tmp_path)
    _send(traffic, _rows(3, 30, price=90.0), per_call=1)
    out = _drift(env)
    assert out["enough"] is False and out["samples"] == 30
    assert out["message"] == "not enough captured calls (30 of 50)"
    assert (out["score"], out["verdict"], out["features"]) == (None, None, [])
    assert out["quality"]["samples"] == 30  # the checks still run
    old = _send(traffic, _rows(4, 100, price=90.0))
    with _db(env).write() as s:
        s.execute(
            update(CapturedRequest)
            .where(CapturedRequest.request_id.in_(old))
            .values(time=utcnow() - timedelta(days=2))
        )
    assert _drift(env)["samples"] == 30  # the last 24 h only
    wide = _drift(env, window_s=3 * 86_400)
    assert wide["samples"] == 130 and wide["verdict"] == "drift" and wide["window_s"] == 259_200
    assert _drift(env, window_s=3600)["samples"] == 30
    assert drift_service.drift_score(_db(env), _store(env), "shop") is None
    r = env.http.get("/v1/endpoints/shop/drift", params={"window_s": 5})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


def test_capture_off_says_so(env: Env, tmp_path: Path) -> None:
    _deploy(env, tmp_path, rate=0.0)
    out = _drift(env)
    assert out["samples"] == 0 and out["captured_calls"] == 0
    assert out["message"] == (
        "not enough captured calls (0 of 50); capture is off: "
        "`gureum endpoints capture shop --rate R`"
    )


def test_viewers_read_drift_other_workspaces_get_404_and_models_without_data_422(
    env: Env, tmp_path: Path
) -> None:
    traffic = _deploy(env, tmp_path)
    _send(traffic, _rows(5, 60))
    viewer = env.cloud.client(member_key(env.cloud, "vic", "viewer"))
    seen = viewer.endpoints.drift("shop", window_s=7200)
    assert seen.enough and seen.window_s == 7200 and seen.reference.dataset == "orders:1"
    admin = env.cloud.client()
    admin.workspaces.create("other")
    other = env.cloud.http(admin.keys.create("o", workspace="other").token)
    r = other.get("/v1/endpoints/shop/drift")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert env.http.get("/v1/endpoints/ghost/drift").status_code == 404
    env.deploy("m:1", name="plain")  # a model registered without its dataset
    r = env.http.get("/v1/endpoints/plain/drift")
    assert r.status_code == 422 and "names no dataset" in r.json()["error"]["message"]


def test_training_statistics_are_read_once(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    traffic = _deploy(env, tmp_path)
    _send(traffic, _rows(6, 80))
    first = _drift(env)

    def unread(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the training data was read again")

    monkeypatch.setattr(drift_data, "training_rows", unread)
    _send(traffic, _rows(7, 40))
    again = _drift(env)
    assert again["samples"] == 120 and again["reference"] == first["reference"]


def _scrape(env: Env) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = env.http.get("/v1/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_drift_gauges_are_exported_for_endpoints_that_capture(env: Env, tmp_path: Path) -> None:
    traffic = _deploy(env, tmp_path)
    env.deploy("m:1", name="plain")  # capture off: no drift gauges, and no error either
    _send(traffic, _rows(8, 120, price=80.0))
    score_key = ("gureum_drift_score", frozenset({("endpoint", "shop")}))
    deadline = time.monotonic() + 30
    samples = _scrape(env)
    while score_key not in samples and time.monotonic() < deadline:
        time.sleep(0.2)  # computed in a thread; a busy machine may need more than one scrape
        samples = _scrape(env)
    out = _drift(env)
    assert samples[score_key] == pytest.approx(out["score"]) and out["score"] > 0.25
    price = ("gureum_drift_psi", frozenset({("endpoint", "shop"), ("feature", "price")}))
    assert samples[price] == pytest.approx(_features(out)["price"]["psi"])
    assert samples[("gureum_drift_samples", frozenset({("endpoint", "shop")}))] == 120
    assert not any(
        dict(labels).get("endpoint") == "plain" for name, labels in samples if "drift" in name
    )


# -- pictures and text ----------------------------------------------------------------------------


def _picture(rng: np.random.Generator, shift: tuple[int, int, int] = (0, 0, 0)) -> bytes:
    base = rng.integers(60, 160, size=3) + np.array(shift)
    pixels = np.clip(base + rng.normal(0, 20, size=(12, 12, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def test_image_classifier_drift_reads_training_pictures_and_live_blobs(
    env: Env, tmp_path: Path
) -> None:
    rng = np.random.default_rng(9)
    folder = tmp_path / "pics"
    for cls in ("dress", "shirt"):
        (folder / cls).mkdir(parents=True)
        for i in range(40):
            (folder / cls / f"{i}.png").write_bytes(_picture(rng))
    client = env.cloud.client()
    client.datasets.push("pics", folder)
    _register(env, "kinds", "image-classifier", "pics:1")
    env.deploy("kinds:1", name="kinds", capture={"rate": 1.0})
    train = [f for f in client.datasets.files("pics", 1) if f.split == "train"]
    traffic = Traffic(env, "kinds")
    ws = env.row("kinds").workspace_id
    calls = []
    for i, f in enumerate(train):  # the training pictures themselves: nothing moved
        raw = (folder / f.path).read_bytes()
        b64 = base64.b64encode(raw)
        if i % 2:  # a large input is stored as a blob of its own
            blob = _store(env).write_blob(ws, [b64], max_bytes=10**6)
            item: Any = {"image": {"$blob": blob.sha256, "size": blob.size}}
        else:
            item = b64.decode()
        calls.append(({"inputs": [item]}, {"outputs": [{"label": f.label}]}))
    traffic.calls(calls)
    same = _drift(env, name="kinds")
    assert same["reference"] == {"dataset": "pics:1", "samples": len(train), "total": len(train)}
    assert same["samples"] == len(train) and same["score"] == 0.0 and same["verdict"] == "stable"
    names = {f["name"] for f in same["features"]}
    assert {"brightness", "red_mean", "blue_std", "embedding_pc1", "embedding_pc2"} <= names

    bluer = [_picture(rng, shift=(-40, -40, 90)) for _ in range(len(train))]
    traffic.calls(
        [({"inputs": [base64.b64encode(p).decode()]}, {"outputs": []}) for p in bluer]
        + [({"inputs": ["aGVsbG8="]}, {"outputs": []})]  # base64 of "hello": no picture
    )
    out = _drift(env, name="kinds")
    assert out["verdict"] == "drift" and _features(out)["blue_mean"]["verdict"] == "drift"
    assert out["quality"]["undecodable_share"] == pytest.approx(1 / (2 * len(train) + 1))


def test_text_generator_drift_compares_prompts_with_the_training_texts(
    env: Env, tmp_path: Path
) -> None:
    rng = np.random.default_rng(10)
    words = ["a", "red", "linen", "dress", "with", "long", "sleeves", "and", "collar"]
    folder = tmp_path / "corpus"
    folder.mkdir()
    lines = [" ".join(rng.choice(words, size=rng.integers(2, 9))) for _ in range(150)]
    (folder / "corpus.txt").write_text("\n".join(lines) + "\n")
    client = env.cloud.client()
    client.datasets.push("corpus", folder)
    _register(env, "writer", "text-generator", "corpus:1")
    env.deploy("writer:1", name="writer", capture={"rate": 1.0})
    texts = load_text(_local(env, "corpus", 1, tmp_path), "x").train.splitlines()
    traffic = Traffic(env, "writer")
    half = len(texts) // 2
    traffic.calls(
        [({"prompt": t, "max_tokens": 8}, {"choices": []}) for t in texts[:half]],
        route="completions",
    )
    chats = [{"messages": [{"role": "user", "content": t}]} for t in texts[half:]]
    traffic.calls([(c, {"choices": []}) for c in chats], route="chat/completions")
    same = _drift(env, name="writer")
    assert same["reference"]["samples"] == same["reference"]["total"] == len(texts)
    assert same["samples"] == len(texts) and same["score"] == 0.0
    assert {f["name"] for f in same["features"]} == {"length_chars", "tokens"}
    long = [" ".join(rng.choice(words, size=40)) for _ in range(len(texts))]
    traffic.calls([({"prompt": p}, None) for p in [*long, ""]], route="completions")
    out = _drift(env, name="writer")
    tokens = _features(out)["tokens"]
    assert tokens["verdict"] == "drift" and tokens["live_mean"] > tokens["reference_mean"] + 10
    assert out["quality"]["empty_share"] == pytest.approx(1 / (2 * len(texts) + 1))
