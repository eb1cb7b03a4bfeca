"""Captured data's bytes on the control plane (issue 12, item 3: retention and erasure): the
blobs a captured call's line refers to are indexed and kept alive like dataset files, `consumers
forget` erases one consumer's records, feedback and bytes (the test reads the artifact store),
and the retention sweep erases what is older than an endpoint keeps, run by the endpoint
controller at most every `capture_sweep_interval_s`. Real batch objects in a real store; a
fake Ray Serve behind the controller. SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from gureum.client.errors import ForbiddenError, NotFoundError
from gureum.config import Settings
from gureum.schemas.capture import CapturedIn, FeedbackIn
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import AuditEvent
from gureum.server.db.tables_capture import CapturedBlob, CapturedRequest, Feedback
from gureum.server.services import capture_erasure
from gureum.storage.store import ArtifactStore
from tests.integration.test_blobs_api import sha
from tests.integration.test_consumers_api import consumer_id, member_key
from tests.integration.test_datasets_api import push
from tests.integration.test_endpoints_api import Env, make_env


@pytest.fixture
def env(settings: Settings) -> Iterator[Env]:
    yield from make_env(settings)


def _db(env: Env) -> Database:
    db: Database = env.cloud.app.state.db
    return db


def _store(env: Env) -> ArtifactStore:
    store: ArtifactStore = env.cloud.app.state.store
    return store


def _image(tag: str) -> bytes:
    """A stand-in for a large input (an image a replica stored as a blob of its own)."""
    return f"{tag}:".encode() + secrets.token_bytes(4096)


def _put(env: Env, data: bytes) -> str:
    return _store(env).write_blob(env.row().workspace_id, [data], max_bytes=10**7).sha256


class Shipment:
    """One consumer's calls in one shipment, as a replica writes them: the large values as
    blobs, then one JSON-lines batch object, then the index rows."""

    def __init__(self, env: Env, consumer: str, cid: int | None, endpoint: str = "shop") -> None:
        self.env, self.consumer, self.cid, self.endpoint = env, consumer, cid, endpoint
        self.calls: list[tuple[str, dict[str, Any], list[str], timedelta]] = []

    def call(
        self, request_id: str, text: str, *images: bytes, ago: timedelta = timedelta(0)
    ) -> None:
        digests = [_put(self.env, data) for data in images]
        value = {"text": text, "images": [{"$blob": d, "size": 4101} for d in digests]}
        self.calls.append((request_id, value, digests, ago))

    def ship(self, status: int = 200) -> Any:
        ep = self.env.row(self.endpoint)
        lines = [
            json.dumps({"request_id": rid, "consumer_name": self.consumer, "input": value})
            for rid, value, _, _ in self.calls
        ]
        obj = _put(self.env, "".join(line + "\n" for line in lines).encode())
        records = [
            CapturedIn(
                request_id=rid,
                time=utcnow() - ago,
                consumer_id=self.cid,
                consumer_name=self.consumer,
                model_version_id=ep.version_id,
                route="predict",
                status=200,
                object=obj,
                line=i,
                size=len(lines[i]) + 1,
                has_inputs=True,
                has_outputs=False,
                blobs=digests,
            )
            for i, (rid, _, digests, ago) in enumerate(self.calls)
        ]
        body = {"records": [r.model_dump(mode="json") for r in records]}
        r = self.env.replica(self.endpoint).post(
            f"/v1/internal/endpoints/{self.endpoint}/captured", json=body
        )
        assert r.status_code == status, r.text
        self.object = obj
        return r.json()


def _stored(env: Env) -> dict[str, bytes]:
    """Every blob of every workspace in the artifact store, read from disk."""
    root = Path(env.cloud.settings.resolved_artifacts) / "workspaces"
    return {p.name: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _count(env: Env, table: Any, *where: Any) -> int:
    with _db(env).read() as s:
        return int(s.scalar(select(func.count()).select_from(table).where(*where)) or 0)


def _feedback(request_id: str, consumer: str, cid: int, rating: int) -> dict[str, Any]:
    item = FeedbackIn(
        id=secrets.token_hex(10),
        time=utcnow(),
        request_id=request_id,
        consumer_id=cid,
        consumer_name=consumer,
        rating=rating,
    )
    return item.model_dump(mode="json")


# -- the blobs a captured call refers to ---------------------------------------------------------


def test_referenced_blobs_must_be_stored_and_are_indexed_once(env: Env) -> None:
    env.deploy("m:1", capture={"rate": 1.0})
    cid = consumer_id(env.cloud, env.cloud.client().consumers.create("acme").token)
    first = Shipment(env, "acme", cid)
    first.call("req-500001", "a", _image("x"), _image("y"))
    first.call("req-500002", "b")
    assert first.ship() == {"accepted": 2, "duplicates": 0}
    assert first.ship() == {"accepted": 0, "duplicates": 2}  # re-shipped: no row added
    with _db(env).read() as s:
        rows = s.execute(select(CapturedBlob.request_id, CapturedBlob.sha256)).all()
    assert sorted(rows) == sorted(("req-500001", d) for d in first.calls[0][2])

    # A line referring to a blob the store does not have: the batch is refused whole.
    second = Shipment(env, "acme", cid)
    second.call("req-500003", "c", _image("z"))
    absent = _image("never-written")
    second.calls[0][2].append(sha(absent))
    r = second.ship(status=422)
    assert r["error"]["details"]["missing"] == [sha(absent)]
    assert r["error"]["message"].startswith(f"blob {sha(absent)} is not in")
    assert _count(env, CapturedRequest) == 2 and _count(env, CapturedBlob) == 2


def test_a_blob_shared_by_a_dataset_and_a_captured_call_stays_while_either_uses_it(
    env: Env,
) -> None:
    env.deploy("m:1", capture={"rate": 1.0})
    admin = env.cloud.client()
    cid = consumer_id(env.cloud, admin.consumers.create("acme").token)
    shared, alone = _image("shared"), _image("dataset-only")
    assert push(env.http, "photos", {"a.png": shared, "b.png": alone}).status_code == 201
    calls = Shipment(env, "acme", cid)
    calls.call("req-510001", "look", shared)
    calls.ship()

    # Deleting the dataset keeps the image the captured call still refers to.
    assert env.http.delete("/v1/datasets/photos").status_code == 204
    stored = _stored(env)
    assert sha(shared) in stored and sha(alone) not in stored
    assert admin.endpoints.captured("shop")[0].input["images"][0]["$blob"] == sha(shared)

    # And the other way round: erasing the call keeps what a dataset version still uses.
    assert push(env.http, "photos", {"a.png": shared}).status_code == 201
    assert admin.consumers.forget("acme").blobs_removed == 1  # the batch object only
    stored = _stored(env)
    assert sha(shared) in stored and calls.object not in stored
    assert env.http.get("/v1/datasets/photos").status_code == 200


# -- consumers forget ----------------------------------------------------------------------------


def test_forget_erases_a_consumers_records_feedback_and_bytes_only(env: Env) -> None:
    admin = env.cloud.client()
    env.deploy("m:1", capture={"rate": 1.0})
    env.deploy("m:1", name="other", capture={"rate": 1.0})
    acme = admin.consumers.create("acme")
    acme_id = consumer_id(env.cloud, acme.token)
    bob_id = consumer_id(env.cloud, admin.consumers.create("bob").token)
    in_dataset, in_both = _image("acme-and-dataset"), _image("acme-and-bob")
    acme_only = [_image("acme-only-1"), _image("acme-only-2")]
    assert push(env.http, "photos", {"a.png": in_dataset}).status_code == 201

    # acme on two endpoints (two batch objects), bob on one, sharing an image with acme.
    shop = Shipment(env, "acme", acme_id)
    shop.call("req-600001", "acme-secret-1", acme_only[0], in_dataset)
    shop.call("req-600002", "acme-secret-2", in_both)
    shop.ship()
    other = Shipment(env, "acme", acme_id, endpoint="other")
    other.call("req-600003", "acme-secret-3", acme_only[1])
    other.ship()
    bob = Shipment(env, "bob", bob_id)
    bob.call("req-600004", "bob-says", in_both)
    bob.ship()
    env.ship(
        [],
        feedback=[
            _feedback("req-600001", "acme", acme_id, 5),
            _feedback("req-600009", "acme", acme_id, 1),  # a call that was not sampled
            _feedback("req-600004", "bob", bob_id, 4),
        ],
    )
    env.ship([], name="other", feedback=[_feedback("req-600003", "acme", acme_id, 2)])
    assert any(b"acme-secret" in data for data in _stored(env).values())

    done = admin.consumers.forget("acme")
    # Both of acme's batch objects and its two own images; not the shared ones.
    assert done.model_dump() == {
        "consumer": "acme",
        "records": 3,
        "feedback": 3,
        "blobs_removed": 4,
    }

    stored = _stored(env)
    assert not any(b"acme-secret" in data or b"acme-only" in data for data in stored.values())
    assert {shop.object, other.object, *map(sha, acme_only)}.isdisjoint(stored)
    assert {sha(in_dataset), sha(in_both), bob.object} <= stored.keys()
    assert [r.request_id for r in admin.endpoints.captured("shop")] == ["req-600004"]
    assert admin.endpoints.captured("other") == []
    assert admin.endpoints.captured("shop")[0].readable
    with _db(env).read() as s:
        left = s.scalars(select(Feedback.request_id)).all()
        blob_rows = s.scalars(select(CapturedBlob.request_id)).all()
        audit = s.scalar(select(AuditEvent).where(AuditEvent.action == "consumer.forget"))
    assert left == ["req-600004"] and blob_rows == ["req-600004"]
    assert audit is not None and audit.target == "acme" and audit.details["records"] == 3

    # The consumer stays, its key still admitted by replicas; a second forget finds nothing.
    assert admin.consumers.get("acme").active_keys == 1
    snapshot = env.replica().get("/v1/internal/endpoints/shop/access").json()
    assert acme.key_id in {k["key_id"] for k in snapshot["keys"]}
    again = admin.consumers.forget("acme")
    assert (again.records, again.feedback, again.blobs_removed) == (0, 0, 0)


def test_forget_is_for_admins_of_the_consumers_workspace(env: Env) -> None:
    admin = env.cloud.client()
    env.deploy("m:1", capture={"rate": 1.0})
    cid = consumer_id(env.cloud, admin.consumers.create("acme").token)
    calls = Shipment(env, "acme", cid)
    calls.call("req-700001", "kept")
    calls.ship()
    developer = env.cloud.client(member_key(env.cloud, "dev", "developer"))
    with pytest.raises(ForbiddenError):
        developer.consumers.forget("acme")
    r = env.cloud.http(member_key(env.cloud, "vic", "viewer")).post("/v1/consumers/acme/forget")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    admin.workspaces.create("elsewhere")
    foreign = env.cloud.client(admin.keys.create("o", workspace="elsewhere").token)
    with pytest.raises(NotFoundError):
        foreign.consumers.forget("acme")
    r = env.http.post("/v1/consumers/ghost/forget")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert _count(env, CapturedRequest) == 1 and calls.object in _stored(env)


# -- retention -----------------------------------------------------------------------------------


def _aged(env: Env, endpoint: str, cid: int, tag: str, ago: timedelta) -> Shipment:
    calls = Shipment(env, "acme", cid, endpoint=endpoint)
    calls.call(f"req-{tag}", f"{tag}-text", _image(tag), ago=ago)
    calls.ship()
    return calls


def test_the_sweep_erases_what_is_older_than_retention_and_keeps_the_rest(env: Env) -> None:
    admin = env.cloud.client()
    env.deploy("m:1", capture={"rate": 1.0, "retention_days": 7})
    env.deploy("m:1", name="forever", capture={"rate": 1.0})
    cid = consumer_id(env.cloud, admin.consumers.create("acme").token)
    old = _aged(env, "shop", cid, "800001", timedelta(days=8))
    new = _aged(env, "shop", cid, "800002", timedelta(days=6))
    kept = _aged(env, "forever", cid, "800003", timedelta(days=400))
    env.ship([], feedback=[_feedback("req-800001", "acme", cid, 3)])

    swept = capture_erasure.sweep_retention(_db(env), _store(env))
    assert {s.endpoint: (s.records, s.blobs_removed) for s in swept.values()} == {"shop": (1, 2)}
    stored = _stored(env)
    assert old.object not in stored and old.calls[0][2][0] not in stored
    assert b"800001-text" not in b"".join(stored.values())
    assert {new.object, new.calls[0][2][0], kept.object, kept.calls[0][2][0]} <= stored.keys()
    assert [r.request_id for r in admin.endpoints.captured("shop")] == ["req-800002"]
    assert [r.request_id for r in admin.endpoints.captured("forever")] == ["req-800003"]
    # Feedback stays for the summaries; its call shows as no longer captured.
    summary = admin.endpoints.feedback("shop")
    assert (summary.count, summary.captured) == (1, 0)
    with _db(env).read() as s:
        audit = s.scalar(
            select(AuditEvent).where(AuditEvent.action == "endpoint.capture.retention")
        )
    assert audit is not None and audit.details == {
        "retention_days": 7,
        "records": 1,
        "blobs_removed": 2,
    }

    # Nothing more to do until time passes; then the newer record goes as well.
    again = capture_erasure.sweep_retention(_db(env), _store(env))
    assert [(s.records, s.blobs_removed) for s in again.values()] == [(0, 0)]
    later = capture_erasure.sweep_retention(_db(env), _store(env), utcnow() + timedelta(days=2))
    assert [(s.records, s.blobs_removed) for s in later.values()] == [(1, 2)]
    assert _count(env, CapturedRequest) == 1 and _count(env, CapturedBlob) == 1


def test_the_controller_sweeps_at_most_every_interval_and_survives_failures(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    env.deploy("m:1", capture={"rate": 1.0, "retention_days": 1})
    cid = consumer_id(env.cloud, env.cloud.client().consumers.create("acme").token)
    _aged(env, "shop", cid, "900001", timedelta(days=2))
    env.tick()  # the first tick sweeps
    assert _count(env, CapturedRequest) == 0
    _aged(env, "shop", cid, "900002", timedelta(days=2))
    env.tick()  # within the interval (600 s by default): not again
    assert _count(env, CapturedRequest) == 1

    env.controller.settings = env.controller.settings.model_copy(
        update={"capture_sweep_interval_s": 0.001}
    )

    def broken(*_: Any, **__: Any) -> Any:
        raise OSError("store unreachable")

    monkeypatch.setattr(capture_erasure, "sweep_retention", broken)
    with caplog.at_level(logging.ERROR):
        env.tick()  # logged; the tick still finishes
    assert "capture retention sweep failed" in caplog.text
    assert _count(env, CapturedRequest) == 1
    monkeypatch.undo()
    env.tick()
    assert _count(env, CapturedRequest) == 0


def test_a_deleted_endpoints_captured_calls_go_with_it_rows_and_bytes(env: Env) -> None:
    admin = env.cloud.client()
    env.deploy("m:1", capture={"rate": 1.0})
    env.deploy("m:1", name="other", capture={"rate": 1.0})
    cid = consumer_id(env.cloud, admin.consumers.create("acme").token)
    gone = _aged(env, "shop", cid, "900001", timedelta(0))
    stays = _aged(env, "other", cid, "900002", timedelta(0))
    assert env.http.delete("/v1/endpoints/shop").status_code == 202
    env.tick(3)
    assert env.http.get("/v1/endpoints/shop").status_code == 404
    stored = _stored(env)
    assert gone.object not in stored and gone.calls[0][2][0] not in stored
    assert b"900001-text" not in b"".join(stored.values())
    assert {stays.object, stays.calls[0][2][0]} <= stored.keys()
    assert [r.request_id for r in admin.endpoints.captured("other")] == ["req-900002"]


def test_a_shipment_of_an_opted_out_consumers_calls_leaves_no_bytes(env: Env) -> None:
    admin = env.cloud.client()
    env.deploy("m:1", capture={"rate": 1.0})
    cid = consumer_id(env.cloud, admin.consumers.create("shy").token)
    admin.consumers.update("shy", capture=False)  # after the replica spooled its calls
    late = Shipment(env, "shy", cid)
    late.call("req-910001", "910001-text", _image("910001"))
    assert late.ship() == {"accepted": 0, "duplicates": 0}
    stored = _stored(env)
    assert late.object not in stored and late.calls[0][2][0] not in stored
    assert b"910001-text" not in b"".join(stored.values())
