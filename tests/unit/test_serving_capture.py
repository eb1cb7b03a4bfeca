"""Capture on the replica: request ids only this endpoint's key signs, sampling that honours a
consumer's opt-out, redaction before storage, batches in the real artifact store with an index,
and feedback that only the caller who got the answer can give."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gureum.schemas.capture import CaptureBatch, CaptureConfig, CaptureSettings
from gureum.serving import capture as capture_module
from gureum.serving.access import Caller
from gureum.serving.capture import (
    REDACTED,
    Capturer,
    new_request_id,
    redact,
    verify_request_id,
    who_of,
)
from gureum.storage.store import ArtifactStore
from tests.unit.test_serving_replica import TOKEN, FakeControl, Make, admit, caller, key, make

KEY = bytes(range(32))
ACME = Caller(7, "acme", "k1")
RIVAL = Caller(8, "rival", "k2")
OPTED_OUT = Caller(9, "quiet", "k3", capture=False)
BODY = json.dumps({"inputs": [{"x": 1, "email": "a@b.c", "card": {"number": "4111"}}]}).encode()
OUTPUT = json.dumps({"outputs": [{"y": 2}], "model": "shop:1"}).encode()

__all__ = ["make"]  # the fixture, used by the feedback tests


def settings(**config: Any) -> CaptureSettings:
    return CaptureSettings(config=CaptureConfig(**config), request_id_key=KEY.hex())


class Index:
    """The control plane's /captured, or an outage of it."""

    def __init__(self) -> None:
        self.batches: list[CaptureBatch] = []
        self.down = False

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        if self.down:
            raise ConnectionError("control plane unreachable")
        # What the control plane would take: the rows must be valid CaptureBatch records.
        self.batches.append(CaptureBatch.model_validate_json(json.dumps({"records": rows})))

    @property
    def rows(self) -> list[Any]:
        return [r for b in self.batches for r in b.records]


@pytest.fixture
def index() -> Index:
    return Index()


@pytest.fixture
def capturer(tmp_path: Path, index: Index) -> Iterator[Capturer]:
    c = Capturer(tmp_path / "spool", "shop", 1, str(tmp_path / "store"), index)
    c.configure(settings(rate=1.0))
    yield c
    index.down = False
    c.close()


def stored(tmp_path: Path, sha: str) -> list[dict[str, Any]]:
    store = ArtifactStore(str(tmp_path / "store"))
    with store.open_blob(1, sha) as fh:
        return [json.loads(line) for line in fh.read().splitlines()]


def blobs(tmp_path: Path) -> list[Path]:
    root = tmp_path / "store" / "workspaces"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def keep(c: Capturer, who: Caller = ACME, status: int = 200, body: bytes = BODY) -> str:
    rid = c.request_id(who)
    c.keep(rid, who, "predict", body, status, OUTPUT, 42, "shop:1")
    return rid


# -- request ids -----------------------------------------------------------------------------------


def test_a_request_id_names_its_caller_and_verifies_only_with_its_endpoints_key() -> None:
    rid = new_request_id(KEY, "shop", who_of(ACME))
    signed = verify_request_id(KEY, "shop", rid)
    assert signed is not None and signed.who == "c7"
    assert verify_request_id(KEY, "other-shop", rid) is None
    assert verify_request_id(bytes(32), "shop", rid) is None
    at, who, nonce, mac = rid.split(".")
    assert verify_request_id(KEY, "shop", f"{at}.c8.{nonce}.{mac}") is None  # another consumer
    assert verify_request_id(KEY, "shop", f"{at}.{who}.{nonce}.{'0' * len(mac)}") is None
    for junk in ("", "req_123", "a.b.c.d", "1.c7.zz.zz", rid + ".x"):
        assert verify_request_id(KEY, "shop", junk) is None
    assert new_request_id(KEY, "shop", "c7") != rid  # a nonce each


def test_the_caller_who_got_an_id_owns_it_and_nobody_else(capturer: Capturer) -> None:
    rid = capturer.request_id(ACME)
    assert capturer.owns(rid, ACME)
    assert not capturer.owns(rid, RIVAL)
    assert not capturer.owns(rid, Caller(None, "member:ann", "k1"))  # a member key, not c7


# -- redaction -------------------------------------------------------------------------------------


def test_redaction_blanks_a_name_or_a_dotted_path_wherever_it_is() -> None:
    value = {"inputs": [{"email": "a@b.c", "card": {"number": "4111", "email": "x"}, "x": 1}]}
    by_name = redact(value, ["email"])
    assert by_name["inputs"][0]["email"] == REDACTED
    assert by_name["inputs"][0]["card"] == {"number": "4111", "email": REDACTED}
    by_path = redact(value, ["card.number"])
    assert by_path["inputs"][0]["card"] == {"number": REDACTED, "email": "x"}
    assert by_path["inputs"][0]["email"] == "a@b.c"
    assert redact(value, ["inputs.card.number"]) == by_path
    assert redact({"number": 1}, ["card.number"]) == {"number": 1}  # no card: kept
    assert value["inputs"][0]["email"] == "a@b.c"  # the call's own data is not changed


# -- sampling, storage, index ----------------------------------------------------------------------


def test_captured_calls_are_stored_redacted_in_one_batch_and_indexed(
    capturer: Capturer, index: Index, tmp_path: Path
) -> None:
    capturer.configure(settings(rate=1.0, redact=["email", "card.number"]))
    rids = [keep(capturer) for _ in range(3)]
    capturer.flush()
    rows = index.rows
    assert [r.request_id for r in rows] == rids and {r.line for r in rows} == {0, 1, 2}
    assert len({r.object for r in rows}) == 1 and all(r.has_inputs and r.has_outputs for r in rows)
    lines = stored(tmp_path, rows[0].object)
    first = lines[0]
    assert first["request_id"] == rids[0] and first["consumer_id"] == 7
    assert first["model_version_id"] == 42 and first["model_label"] == "shop:1"
    assert first["input"] == {"inputs": [{"x": 1, "email": REDACTED, "card": {"number": REDACTED}}]}
    assert first["output"]["outputs"] == [{"y": 2}]
    assert "4111" not in json.dumps(lines) and "a@b.c" not in json.dumps(lines)
    capturer.flush()  # shipped once
    assert len(index.rows) == 3


def test_each_consumers_calls_go_to_batch_objects_of_their_own(
    capturer: Capturer, index: Index, tmp_path: Path
) -> None:
    keep(capturer, ACME)
    keep(capturer, RIVAL)
    keep(capturer, ACME)
    capturer.flush()
    objects = {r.consumer_id: r.object for r in index.rows}
    assert objects.keys() == {7, 8} and objects[7] != objects[8]
    assert [line["consumer_id"] for line in stored(tmp_path, objects[7])] == [7, 7]
    assert [line["consumer_id"] for line in stored(tmp_path, objects[8])] == [8]


def test_inputs_or_outputs_alone_are_kept_as_configured(
    capturer: Capturer, index: Index, tmp_path: Path
) -> None:
    capturer.configure(settings(rate=1.0, outputs=False))
    keep(capturer)
    capturer.flush()
    row = index.rows[0]
    assert row.has_inputs and not row.has_outputs
    assert "output" not in stored(tmp_path, row.object)[0]


def test_nothing_is_kept_at_rate_zero_for_errors_or_for_a_consumer_who_opted_out(
    capturer: Capturer, index: Index, tmp_path: Path
) -> None:
    keep(capturer, OPTED_OUT)
    keep(capturer, status=422)
    capturer.configure(settings(rate=0.0))
    keep(capturer)
    capturer.flush()
    assert index.rows == [] and blobs(tmp_path) == []  # nothing reached the store


def test_a_rate_samples_about_that_share(capturer: Capturer, index: Index) -> None:
    capturer.configure(settings(rate=0.25))
    for _ in range(400):
        keep(capturer)
    capturer.flush()
    assert 50 <= len(index.rows) <= 150


def test_large_strings_become_blobs_and_no_input_passes_for_a_blob_reference(
    capturer: Capturer, index: Index, tmp_path: Path
) -> None:
    image = "iVBOR" + "A" * 10_000
    forged = {"$blob": "0" * 64, "size": 1}
    keep(capturer, body=json.dumps({"inputs": [image, forged]}).encode())
    capturer.flush()
    record = stored(tmp_path, index.rows[0].object)[0]
    ref, escaped = record["input"]["inputs"]
    assert ref["size"] == len(image)
    store = ArtifactStore(str(tmp_path / "store"))
    with store.open_blob(1, ref["$blob"]) as fh:
        assert fh.read().decode() == image
    assert escaped == {"$$blob": "0" * 64, "size": 1}
    assert index.rows[0].blobs == [ref["$blob"]]  # kept alive by the index row


def test_while_storage_is_down_calls_wait_in_the_spool_and_ship_once_it_is_back(
    capturer: Capturer, index: Index, tmp_path: Path
) -> None:
    ArtifactStore(str(tmp_path / "store"))
    blocker = tmp_path / "store" / "workspaces"
    blocker.write_text("not a folder")  # the store refuses writes (root ignores chmod)
    try:
        rids = [keep(capturer) for _ in range(2)]
        with pytest.raises(OSError):
            capturer.flush()
        assert index.rows == [] and capturer.pending == 2
    finally:
        blocker.unlink()
    index.down = True  # the blob is written, the index is not: shipped again later
    with pytest.raises(ConnectionError):
        capturer.flush()
    index.down = False
    capturer.flush()
    assert [r.request_id for r in index.rows] == rids and capturer.pending == 0


def test_a_full_spool_drops_new_calls_counts_them_and_never_raises(
    tmp_path: Path, index: Index
) -> None:
    c = Capturer(tmp_path / "spool", "shop", 1, str(tmp_path / "store"), index, max_bytes=2000)
    c.configure(settings(rate=1.0))
    try:
        index.down = True
        kept = [
            c.keep(c.request_id(ACME), ACME, "predict", BODY, 200, OUTPUT, 1, "m:1")
            for _ in range(20)
        ]
        assert kept[0] and not kept[-1]
        assert c.dropped_untold() == kept.count(False) > 0
        c.told(c.dropped_untold())
        assert c.dropped_untold() == 0
    finally:
        index.down = False
        c.close()


# -- feedback (through a replica) ------------------------------------------------------------------


def feedback_core(make: Make) -> tuple[Any, FakeControl]:
    control = FakeControl([key("k1", "s3cret", 7, "acme"), key("k2", "rival", 8, "rival")])
    control.capture = settings(rate=0.0)  # no call sampled: feedback is still accepted
    return make(control), control


def test_feedback_on_ones_own_answer_is_accepted_and_shipped_with_usage(make: Make) -> None:
    core, control = feedback_core(make)
    me = caller(admit(core, f"Bearer {TOKEN}"))
    rid = core.capture.request_id(me)
    body = json.dumps({"request_id": rid, "rating": 4, "label": "dress", "note": "nice"})
    reply = core.feedback(me, body.encode())
    assert reply.status == 202 and json.loads(reply.body) == {"accepted": True, "request_id": rid}
    core.spool.flush()
    given = [f for b in control.batches for f in b.feedback]
    assert len(given) == 1 and given[0].request_id == rid and given[0].consumer_id == 7
    assert (given[0].rating, given[0].label, given[0].note) == (4, "dress", "nice")
    assert control.records == []  # feedback is not a metered call


def test_feedback_on_another_consumers_or_a_made_up_id_is_404(make: Make) -> None:
    core, _ = feedback_core(make)
    me = caller(admit(core, f"Bearer {TOKEN}"))
    theirs = core.capture.request_id(Caller(8, "rival", "k2"))
    for rid in (theirs, "req_0123456789abcdef0123", theirs[:-1] + "0"):
        reply = core.feedback(me, json.dumps({"request_id": rid, "rating": 5}).encode())
        assert reply.status == 404, rid
        assert json.loads(reply.body)["error"]["code"] == "request_not_found"


@pytest.mark.parametrize(
    "body",
    [
        {"rating": 6},
        {"rating": 0},
        {},  # nothing to say
        {"rating": 3, "colour": "red"},
        {"note": "only a note"},
        {"label": ""},
    ],
)
def test_malformed_feedback_is_422_with_what_is_wrong(make: Make, body: dict[str, Any]) -> None:
    core, _ = feedback_core(make)
    me = caller(admit(core, f"Bearer {TOKEN}"))
    reply = core.feedback(
        me, json.dumps({"request_id": core.capture.request_id(me), **body}).encode()
    )
    assert reply.status == 422
    error = json.loads(reply.body)["error"]
    assert error["code"] == "bad_feedback" and error["details"]


def test_feedback_that_is_not_json_is_422(make: Make) -> None:
    core, _ = feedback_core(make)
    me = caller(admit(core, f"Bearer {TOKEN}"))
    assert core.feedback(me, b"rating=5").status == 422


def test_many_calls_are_indexed_in_chunks_the_control_plane_takes(
    capturer: Capturer, index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(capture_module, "INDEX_CHUNK", 4)
    rids = [keep(capturer) for _ in range(10)]
    capturer.flush()
    assert [len(b.records) for b in index.batches] == [4, 4, 2]
    assert [r.request_id for r in index.rows] == rids
