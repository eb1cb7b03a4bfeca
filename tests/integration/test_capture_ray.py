"""Capture and feedback on a real Ray Serve endpoint, as a team and its consumers reach them:
sampled calls land redacted in the artifact store and in the index, an opted-out consumer's
inputs never reach storage, and only the consumer who got an answer can rate it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from gureum.cli.main import app as cli_app
from gureum.client.serving import signed_request_id
from tests.integration.test_serving_ray import (  # noqa: F401 (fixtures)
    SMALL,
    Cloud,
    cloud,
    consumer,
    deploy,
    model_dirs,
    predict,
    serve_port,
    wait_for,
)

pytestmark = pytest.mark.ray

QUIET_PRICE = 777_777  # only the opted-out consumer ever sends this number
SECRET_FABRIC = "zanzibar-velvet"  # redacted: must never reach the store


def row(price: int, fabric: str = "cotton") -> dict[str, Any]:
    return {"price": price, "garment": "dress", "size": "M", "usual_size": "M", "fabric": fabric}


def feedback(url: str, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{url}/feedback", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
    )


def stored_bytes(c: Cloud) -> bytes:
    root = Path(c.settings.artifacts) / "workspaces"
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_calls_are_captured_redacted_and_rated_by_their_own_consumer(
    cloud: Cloud,  # noqa: F811 (the fixture)
) -> None:
    acme = consumer(cloud, "acme")
    quiet = consumer(cloud, "quiet")
    with cloud.api() as api:
        r = api.patch("/v1/consumers/quiet", json={"capture": False})
        assert r.status_code == 200 and r.json()["capture"] is False, r.text
    capture = {"rate": 1.0, "redact": ["fabric"]}
    ep = deploy(cloud, "t-capture", config=SMALL, capture=capture)
    url = ep["url"]

    answers = [predict(url, acme, [row(30 + i, SECRET_FABRIC)]) for i in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    ids = [signed_request_id(a.headers["x-request-id"]) for a in answers]
    assert len(set(ids)) == 3
    quiet_answer = predict(url, quiet, [row(QUIET_PRICE)])
    assert quiet_answer.status_code == 200
    refused = predict(url, "gck_nope_nope")
    assert refused.status_code == 401 and refused.headers["x-request-id"]

    records = wait_for(
        lambda: len(_index(cloud, "acme")) >= 3 and _index(cloud, "acme"), 60, "capture"
    )
    assert {r["request_id"] for r in records} == set(ids)
    first = next(r for r in records if r["request_id"] == ids[0])
    assert first["consumer"] == "acme" and first["model_label"] == "orders:1"
    assert first["input"]["inputs"][0]["fabric"] == "[redacted]"
    assert first["input"]["inputs"][0]["price"] == 30
    assert first["output"]["outputs"][0]["prediction"] in ("yes", "no")
    assert SECRET_FABRIC.encode() not in stored_bytes(cloud)  # redacted before it reached the store
    assert str(QUIET_PRICE).encode() not in stored_bytes(cloud)  # never captured

    # Feedback: by the consumer who got the answer; anyone else's id is a 404.
    ok = feedback(url, acme, {"request_id": ids[0], "rating": 5, "label": "no"})
    assert ok.status_code == 202, ok.text
    assert feedback(url, quiet, {"request_id": ids[1], "rating": 1}).status_code == 404
    assert (
        feedback(url, acme, {"request_id": "req_made_up_0000000000", "rating": 1}).status_code
        == 404
    )
    bad = feedback(url, acme, {"request_id": ids[1], "rating": 9})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "bad_feedback"
    # A valid id whose call was not captured is accepted: sampling is not revealed.
    not_kept = signed_request_id(quiet_answer.headers["x-request-id"])
    assert feedback(url, quiet, {"request_id": not_kept, "rating": 2}).status_code == 202

    def summarised() -> dict[str, Any] | None:
        with cloud.api() as api:
            s: dict[str, Any] = api.get("/v1/endpoints/t-capture/feedback").json()
        return s if s["count"] >= 2 else None

    summary = wait_for(summarised, 30, "feedback summary")
    assert summary["count"] == 2 and summary["rated"] == 2 and summary["mean_rating"] == 3.5
    assert summary["labelled"] == 1 and summary["captured"] == 1
    with cloud.api() as api:
        rated = api.get("/v1/endpoints/t-capture/captured", params={"consumer": "acme"}).json()
    joined = next(r for r in rated if r["request_id"] == ids[0])
    assert joined["feedback"]["rating"] == 5 and joined["feedback"]["label"] == "no"

    # Curated from the CLI into the next version of the training data.
    cloud.client().datasets.push("orders", cloud.models / "orders")
    code, out = _cli(
        cloud,
        "datasets",
        "curate",
        "orders",
        "--from-endpoint",
        "t-capture",
        "--base",
        "orders:1",
        "--labelled-only",
        "-o",
        "json",
    )
    assert code == 0, out
    version = json.loads(out)
    assert version["version"] == 2 and version["source"]["records"] == 1
    assert version["source"]["samples_added"] == 1 and version["source"]["endpoint"] == "t-capture"


def _cli(c: Cloud, *args: str) -> tuple[int, str]:
    env = {"GUREUM_URL": c.url, "GUREUM_API_KEY": c.token, "NO_COLOR": "1", "COLUMNS": "200"}
    result = CliRunner().invoke(cli_app, list(args), env=env)
    return result.exit_code, result.output


def _index(c: Cloud, name: str) -> list[dict[str, Any]]:
    with c.api() as api:
        r = api.get("/v1/endpoints/t-capture/captured", params={"consumer": name, "limit": 100})
        assert r.status_code == 200, r.text
        rows: list[dict[str, Any]] = r.json()
        return rows
