"""Capture and feedback on the control plane (issue 12, items 1 and 2): capture settings over
REST and the SDK, what the access snapshot tells replicas, captured calls indexed and read back
from a real batch object in the artifact store, feedback stored once and summarised, and the
dropped-records counter. No Ray: a fake Ray Serve stands behind the controller, and the tests
call the internal routes with the endpoint's token as a replica does. SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from gureum.client.errors import BadRequestError, ForbiddenError
from gureum.config import Settings
from gureum.schemas.capture import CapturedIn, FeedbackIn
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import AuditEvent
from gureum.server.db.tables_capture import CapturedRequest, Feedback
from gureum.storage.store import ArtifactStore
from tests.integration.test_consumers_api import consumer_id, member_key
from tests.integration.test_endpoints_api import Env, make_env, usage_record


@pytest.fixture
def env(settings: Settings) -> Iterator[Env]:
    yield from make_env(settings)


def _db(env: Env) -> Database:
    db: Database = env.cloud.app.state.db
    return db


def _capture(env: Env, client: TestClient | None = None, name: str = "shop") -> Any:
    r = (client or env.http).get(f"/v1/endpoints/{name}/capture")
    assert r.status_code == 200, r.text
    return r.json()


def _patch(env: Env, status: int = 200, **body: Any) -> Any:
    r = env.http.patch("/v1/endpoints/shop/capture", json=body)
    assert r.status_code == status, r.text
    return r.json()


def _snapshot(env: Env, name: str = "shop") -> Any:
    r = env.replica(name).get(f"/v1/internal/endpoints/{name}/access")
    assert r.status_code == 200, r.text
    return r.json()


# -- settings ------------------------------------------------------------------------------------


def test_capture_settings_are_set_at_deploy_read_and_merged(env: Env) -> None:
    env.ready("m:1", capture={"rate": 0.25, "redact": ["email"]})
    generation = env.row().generation
    shown = _capture(env)
    assert shown["config"] == {
        "rate": 0.25,
        "inputs": True,
        "outputs": True,
        "redact": ["email"],
        "retention_days": None,
    }
    assert (shown["captured"], shown["dropped"], shown["last_captured_at"]) == (0, 0, None)

    # A PATCH changes what it names and keeps the rest.
    assert _patch(env, outputs=False)["config"]["redact"] == ["email"]
    merged = _patch(env, retention_days=30)["config"]
    assert merged == {**shown["config"], "outputs": False, "retention_days": 30}
    assert _patch(env, retention_days=None)["config"]["retention_days"] is None
    assert _patch(env, redact=[])["config"] == {**shown["config"], "outputs": False, "redact": []}

    # A deploy of the serving version with new capture settings replaces them, and capture
    # changes never redeploy anything (replicas read them from their access snapshot).
    env.deploy("m:1", status=200, capture={"rate": 0.5})
    assert _capture(env)["config"]["rate"] == 0.5 and _capture(env)["config"]["outputs"]
    assert env.row().generation == generation
    events = [m for kind, m in env.events() if kind == "capture"]
    assert events[0] == "capturing 0.25 of the calls (inputs and outputs), redacting email"
    assert events[-1] == "capturing 0.5 of the calls (inputs and outputs)"
    with _db(env).read() as s:
        actions = s.scalars(select(AuditEvent.action).where(AuditEvent.target == "shop")).all()
    assert actions.count("endpoint.capture") == 4  # the four PATCHes that changed something


def test_without_settings_nothing_is_captured(env: Env) -> None:
    env.deploy("m:1")
    assert _capture(env)["config"]["rate"] == 0.0
    assert _snapshot(env)["capture"]["config"]["rate"] == 0.0


def test_bad_capture_settings_are_422_in_the_error_shape(env: Env) -> None:
    env.deploy("m:1")
    for body in ({"rate": 1.5}, {"rate": -0.1}, {"sample": 0.5}, {"rate": None}):
        r = env.http.patch("/v1/endpoints/shop/capture", json=body)
        assert r.status_code == 422, body
        assert r.json()["error"]["code"] == "invalid_request", r.text
    assert env.http.patch("/v1/endpoints/shop/capture", json={"redact": ["a b"]}).status_code == 422
    r = env.http.post("/v1/endpoints", json={"name": "x", "model": "m:1", "capture": {"rate": 2}})
    assert r.status_code == 422
    assert _capture(env)["config"]["rate"] == 0.0
    with pytest.raises(BadRequestError):
        env.cloud.client().endpoints.set_capture("shop", rate=1.5)


def test_viewers_read_settings_and_feedback_but_not_captured_inputs(env: Env) -> None:
    env.deploy("m:1", capture={"rate": 0.1})
    viewer = env.cloud.http(member_key(env.cloud, "vic", "viewer"))
    assert _capture(env, viewer)["config"]["rate"] == 0.1
    assert viewer.get("/v1/endpoints/shop/feedback").status_code == 200
    r = viewer.patch("/v1/endpoints/shop/capture", json={"rate": 1.0})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert viewer.get("/v1/endpoints/shop/captured").status_code == 403
    developer = env.cloud.client(member_key(env.cloud, "dev", "developer"))
    assert developer.endpoints.set_capture("shop", rate=1.0).config.rate == 1.0
    assert developer.endpoints.captured("shop") == []
    with pytest.raises(ForbiddenError):
        env.cloud.client(member_key(env.cloud, "vera", "viewer")).endpoints.set_capture(
            "shop", rate=0
        )


def test_another_workspaces_endpoint_is_404(env: Env) -> None:
    env.deploy("m:1", capture={"rate": 0.1})
    admin = env.cloud.client()
    admin.workspaces.create("other")
    other = env.cloud.http(admin.keys.create("o", workspace="other").token)
    for method, path in (
        ("GET", "capture"),
        ("PATCH", "capture"),
        ("GET", "feedback"),
        ("GET", "captured"),
    ):
        r = other.request(method, f"/v1/endpoints/shop/{path}", json={"rate": 1.0})
        assert r.status_code == 404, (method, path)
        assert r.json()["error"]["code"] == "not_found"
    assert _capture(env)["config"]["rate"] == 0.1


# -- what replicas are told ----------------------------------------------------------------------


def test_the_snapshot_carries_capture_settings_a_stable_key_and_opt_outs(env: Env) -> None:
    admin = env.cloud.client()
    env.deploy("m:1", capture={"rate": 0.5, "inputs": False, "redact": ["email"]})
    env.deploy("m:1", name="other")
    acme = admin.consumers.create("acme")
    shy = admin.consumers.create("shy")
    assert admin.consumers.update("shy", capture=False).capture is False
    assert admin.consumers.get("acme").capture is True
    dev_key = admin.keys.create("dev-key", data_plane=True).token

    first, second = _snapshot(env), _snapshot(env)
    settings = first["capture"]
    assert settings["config"]["rate"] == 0.5 and settings["config"]["inputs"] is False
    assert settings["config"]["redact"] == ["email"]
    key = settings["request_id_key"]
    assert key == second["capture"]["request_id_key"] and len(bytes.fromhex(key)) == 32
    ep = env.row()
    secret: bytes = env.cloud.app.state.serving.secret
    expected = hmac.new(secret, f"request-ids|{ep.id}|shop".encode(), hashlib.sha256)
    assert key == expected.hexdigest()
    assert _snapshot(env, "other")["capture"]["request_id_key"] != key

    keys = {k["key_id"]: k for k in first["keys"]}
    assert keys[acme.key_id]["capture"] is True
    assert keys[shy.key_id]["capture"] is False
    assert keys[dev_key.split("_")[1]]["capture"] is True

    # Changes reach the next snapshot; nothing is redeployed.
    generation = env.row().generation
    admin.consumers.update("shy", capture=True)
    admin.endpoints.set_capture("shop", rate=0.05)
    later = _snapshot(env)
    assert later["capture"]["config"]["rate"] == 0.05
    assert {k["key_id"]: k["capture"] for k in later["keys"]}[shy.key_id] is True
    assert env.row().generation == generation


# -- captured calls ------------------------------------------------------------------------------


def _line(request_id: str, consumer: str, **fields: Any) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "time": utcnow().isoformat(),
        "consumer_id": None,
        "consumer_name": consumer,
        "model_version_id": 0,
        "model_label": "m:1",
        "route": "predict",
        "status": 200,
        **fields,
    }


def _write_batch(env: Env, lines: list[dict[str, Any]]) -> tuple[str, list[int]]:
    """A batch object as a replica writes it: JSON lines, a blob of the workspace."""
    raw = [json.dumps(line).encode() + b"\n" for line in lines]
    store: ArtifactStore = env.cloud.app.state.store
    info = store.write_blob(env.row().workspace_id, [b"".join(raw)], max_bytes=10**7)
    return info.sha256, [len(r) for r in raw]


def _index(
    obj: str,
    line: int,
    request_id: str,
    consumer: str,
    cid: int | None,
    version_id: int,
    ago: timedelta = timedelta(0),
    size: int = 100,
) -> CapturedIn:
    return CapturedIn(
        request_id=request_id,
        time=utcnow() - ago,
        consumer_id=cid,
        consumer_name=consumer,
        model_version_id=version_id,
        route="predict",
        status=200,
        object=obj,
        line=line,
        size=size,
        has_inputs=True,
        has_outputs=True,
    )


def _ship_captured(env: Env, records: list[CapturedIn], status: int = 200) -> Any:
    body = {"records": [r.model_dump(mode="json") for r in records]}
    r = env.replica().post("/v1/internal/endpoints/shop/captured", json=body)
    assert r.status_code == status, r.text
    return r.json()


def test_captured_calls_are_indexed_once_and_read_back_from_their_batch_object(
    env: Env,
) -> None:
    admin = env.cloud.client()
    env.deploy("m:1", capture={"rate": 1.0})
    version_id = env.row().version_id
    acme = admin.consumers.create("acme")
    cid = consumer_id(env.cloud, acme.token)
    image = {"$blob": "ab" * 32, "size": 123456}
    lines = [
        _line("req-000001", "acme", input={"text": "hello"}, output={"label": "greeting"}),
        _line("req-000002", "member:admin", input={"image": image}, output={"label": "cat"}),
        _line("req-000003", "acme", input={"text": "bye", "email": None}, output="x"),
    ]
    obj, sizes = _write_batch(env, lines)
    records = [
        _index(obj, 0, "req-000001", "acme", cid, version_id, timedelta(seconds=3), sizes[0]),
        _index(obj, 1, "req-000002", "member:admin", None, version_id, timedelta(seconds=2)),
        _index(obj, 2, "req-000003", "acme", cid, version_id, timedelta(seconds=1)),
    ]
    assert _ship_captured(env, records) == {"accepted": 3, "duplicates": 0}
    assert _ship_captured(env, records) == {"accepted": 0, "duplicates": 3}
    with _db(env).read() as s:
        assert s.scalar(select(func.count()).select_from(CapturedRequest)) == 3
        stored = s.get(CapturedRequest, "req-000001")
        assert stored is not None
        assert (stored.consumer_id, stored.model_label, stored.size) == (cid, "m:1", sizes[0])

    listed = admin.endpoints.captured("shop")
    assert [r.request_id for r in listed] == ["req-000003", "req-000002", "req-000001"]
    assert all(r.readable for r in listed)
    assert listed[2].input == {"text": "hello"} and listed[2].output == {"label": "greeting"}
    assert listed[1].input == {"image": image} and listed[1].consumer == "member:admin"
    assert listed[0].output == "x" and listed[0].model_label == "m:1"
    only_acme = admin.endpoints.captured("shop", consumer="acme", limit=1)
    assert [r.request_id for r in only_acme] == ["req-000003"]
    assert env.http.get("/v1/endpoints/shop/captured", params={"limit": 501}).status_code == 422
    assert env.http.get("/v1/endpoints/shop/captured", params={"limit": 0}).status_code == 422

    shown = admin.endpoints.capture("shop")
    assert shown.captured == 3 and shown.last_captured_at is not None


def test_captured_rows_need_their_batch_object_and_honour_opt_outs(env: Env) -> None:
    admin = env.cloud.client()
    env.deploy("m:1", capture={"rate": 1.0})
    version_id = env.row().version_id
    shy = admin.consumers.create("shy")
    shy_id = consumer_id(env.cloud, shy.token)
    admin.workspaces.create("other")
    foreign = env.cloud.client(admin.keys.create("o", workspace="other").token)
    foreign_id = consumer_id(env.cloud, foreign.consumers.create("foreign").token)
    obj, _ = _write_batch(env, [_line("req-100001", "shy"), _line("req-100002", "foreign")])

    # An index row pointing at an object the store does not have: refused whole.
    absent = _index("0" * 64, 0, "req-100003", "member:admin", None, version_id)
    good = _index(obj, 1, "req-100002", "foreign", foreign_id, version_id)
    r = env.replica().post(
        "/v1/internal/endpoints/shop/captured",
        json={"records": [good.model_dump(mode="json"), absent.model_dump(mode="json")]},
    )
    assert r.status_code == 422 and r.json()["error"]["details"]["missing"] == ["0" * 64]

    admin.consumers.update("shy", capture=False)
    opted_out = _index(obj, 0, "req-100001", "shy", shy_id, version_id)
    assert _ship_captured(env, [opted_out, good]) == {"accepted": 1, "duplicates": 0}
    with _db(env).read() as s:
        rows = s.scalars(select(CapturedRequest)).all()
    # Another workspace's consumer id is not kept; the opted-out consumer's call not indexed.
    assert [(r.request_id, r.consumer_id) for r in rows] == [("req-100002", None)]

    # A record whose line is not the one its row names shows as unreadable, never as another's.
    wrong = _index(obj, 0, "req-100004", "member:admin", None, version_id)
    _ship_captured(env, [wrong])
    listed = {r.request_id: r for r in admin.endpoints.captured("shop")}
    assert listed["req-100004"].readable is False and listed["req-100004"].input is None
    assert listed["req-100002"].readable is True


def test_a_malformed_captured_batch_is_422(env: Env) -> None:
    env.deploy("m:1")
    good = _index("a" * 64, 0, "req-200001", "x", None, 1).model_dump(mode="json")
    for bad in ({**good, "object": "xyz"}, {**good, "line": -1}, {**good, "extra": 1}):
        r = env.replica().post("/v1/internal/endpoints/shop/captured", json={"records": [bad]})
        assert r.status_code == 422, bad
    r = env.http.post("/v1/internal/endpoints/shop/captured", json={"records": []})
    assert r.status_code == 401  # a workspace key is not a replica's token


# -- feedback ------------------------------------------------------------------------------------


def _feedback(
    request_id: str, ago_s: float, consumer: str = "acme", cid: int | None = None, **fields: Any
) -> FeedbackIn:
    return FeedbackIn(
        id=secrets.token_hex(10),
        time=utcnow() - timedelta(seconds=ago_s),
        request_id=request_id,
        consumer_id=cid,
        consumer_name=consumer,
        **fields,
    )


def test_feedback_is_stored_once_and_summarised_exactly(env: Env) -> None:
    admin = env.cloud.client()
    env.ready("m:1", capture={"rate": 1.0})
    version_id = env.row().version_id
    cid = consumer_id(env.cloud, admin.consumers.create("acme").token)
    obj, _ = _write_batch(env, [_line("req-300001", "acme"), _line("req-300002", "acme")])
    _ship_captured(
        env,
        [
            _index(obj, 0, "req-300001", "acme", cid, version_id),
            _index(obj, 1, "req-300002", "acme", cid, version_id),
        ],
    )
    items = [
        _feedback("req-300001", 50, cid=cid, rating=5),
        _feedback("req-300002", 40, cid=cid, rating=2, label="cat"),
        _feedback("req-300003", 30, cid=cid, rating=4, note="good"),  # not sampled
        _feedback("req-300004", 20, cid=cid, target=1.5),
        # The same call rated again later: the latest rating wins, the label stays.
        _feedback("req-300002", 10, cid=cid, rating=3),
    ]
    record = usage_record(version_id, "m:1")
    feedback = [f.model_dump(mode="json") for f in items]
    assert env.ship([record], feedback=feedback) == {"accepted": 6, "duplicates": 0}
    assert env.ship([record], feedback=feedback) == {"accepted": 0, "duplicates": 6}
    with _db(env).read() as s:
        assert s.scalar(select(func.count()).select_from(Feedback)) == 5
        stored = s.get(Feedback, items[1].id)
        assert stored is not None and (stored.label, stored.consumer_id) == ("cat", cid)

    summary = admin.endpoints.feedback("shop")
    assert summary.count == 4 and summary.rated == 3
    assert summary.mean_rating == pytest.approx((5 + 3 + 4) / 3)
    assert summary.ratings == {"1": 0, "2": 0, "3": 1, "4": 1, "5": 1}
    assert (summary.labelled, summary.captured) == (2, 2)
    recent = [(f.request_id, f.rating, f.label, f.target, f.captured) for f in summary.recent]
    assert recent == [
        ("req-300002", 3, "cat", None, True),
        ("req-300004", None, None, 1.5, False),
        ("req-300003", 4, None, None, False),
        ("req-300001", 5, None, None, True),
    ]
    assert summary.recent[2].note == "good" and summary.recent[0].consumer == "acme"

    # The captured record carries its feedback.
    listed = {r.request_id: r for r in admin.endpoints.captured("shop")}
    fb = listed["req-300002"].feedback
    assert fb is not None and (fb.rating, fb.label) == (3, "cat")
    assert listed["req-300001"].feedback is not None


def test_no_feedback_summarises_to_zeros(env: Env) -> None:
    env.deploy("m:1")
    summary = env.http.get("/v1/endpoints/shop/feedback").json()
    assert summary == {
        "endpoint": "shop",
        "count": 0,
        "rated": 0,
        "mean_rating": None,
        "ratings": {"1": 0, "2": 0, "3": 0, "4": 0, "5": 0},
        "labelled": 0,
        "captured": 0,
        "recent": [],
    }


def test_malformed_feedback_in_a_usage_batch_is_refused_whole(env: Env) -> None:
    env.deploy("m:1")
    good = _feedback("req-400001", 1, rating=5).model_dump(mode="json")
    for bad in ({**good, "rating": 6}, {**good, "rating": 0}, {**good, "id": "short"}):
        r = env.replica().post("/v1/internal/endpoints/shop/usage", json={"feedback": [bad]})
        assert r.status_code == 422, bad
    with _db(env).read() as s:
        assert s.scalar(select(func.count()).select_from(Feedback)) == 0


# -- the spool's dropped records -----------------------------------------------------------------


def test_dropped_records_add_to_the_counter_with_one_event_and_are_exported(env: Env) -> None:
    env.ready("m:1", capture={"rate": 1.0})
    version_id = env.row().version_id
    gauge = {"replica": "r1", "role": "primary", "in_flight": 0}
    record = usage_record(version_id, "m:1")
    first = [{**gauge, "capture_dropped": 7, "capture_pending": 3}]
    env.ship([record], gauges=first)
    env.ship([record], gauges=first)  # re-shipped: counted the first time only
    shown = _capture(env)
    assert (shown["dropped"], shown["pending"]) == (7, 3)
    dropped_events = [m for kind, m in env.events() if "dropped" in m]
    assert dropped_events == [
        "capture dropped 7 records: its spool is full (the artifact store has been "
        "unreachable or too slow); requests are still served"
    ]
    env.ship([], gauges=[{**gauge, "capture_dropped": 0, "capture_pending": 0}])
    env.ship([], gauges=[{**gauge, "replica": "r2", "capture_dropped": 2}])
    assert _capture(env)["dropped"] == 9
    assert len([m for _, m in env.events() if "dropped" in m]) == 2
    metrics = env.http.get("/v1/metrics").text
    assert 'gureum_capture_dropped_total{endpoint="shop"} 9.0' in metrics
    assert 'gureum_capture_pending{endpoint="shop"} 0.0' in metrics
