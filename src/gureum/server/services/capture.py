"""Capture and feedback, control-plane side: an endpoint's capture settings, the index rows and
feedback replicas ship, and how a team reads them back.

Replicas do the capturing (sampling, redaction, the spool, the batch objects in the artifact
store); this side only stores settings they poll, indexes what they ship and reads it back.
Shipping is at least once, so both ingestions are idempotent on the replicas' ids. Captured
inputs are the consumers' data: listing them needs the developer role, as deploying does.

Feedback is read per request id: a consumer may rate an answer and later correct its label,
so the latest value of each field (rating, label, target, note) wins.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Protocol

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gureum.schemas.capture import (
    CaptureBatch,
    CaptureConfig,
    CapturedRecordOut,
    CaptureOut,
    CaptureSettings,
    CaptureUpdate,
    FeedbackIn,
    FeedbackOut,
    FeedbackSummary,
)
from gureum.schemas.metering import ReplicaGauges, UsageAccepted
from gureum.server.auth import Principal
from gureum.server.db.session import Database
from gureum.server.db.tables import Model, ModelVersion
from gureum.server.db.tables_capture import CapturedBlob, CapturedRequest, Feedback
from gureum.server.db.tables_serving import Consumer, Endpoint
from gureum.server.errors import Unprocessable
from gureum.server.services.audit import record
from gureum.server.services.blobs import lock_workspace
from gureum.server.services.endpoint_stats import LiveGauges
from gureum.server.services.endpoints import add_event, apply_capture, config_of, find_endpoint
from gureum.storage.store import ArtifactStore

RECENT = 20
RATINGS = ("1", "2", "3", "4", "5")
# Fields of CaptureConfig that a PATCH may not set to null (null means "keep" nowhere).
NOT_NULL = ("rate", "inputs", "outputs", "redact")


# -- settings ------------------------------------------------------------------------------------


def request_id_key(secret: bytes, ep: Endpoint) -> str:
    """The endpoint's key for signing request ids: derived (every replica and every restart
    gets the same one), and another endpoint's replicas cannot sign for this one."""
    msg = f"request-ids|{ep.id}|{ep.name}".encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def capture_settings(ep: Endpoint, secret: bytes) -> CaptureSettings:
    """What the access snapshot carries: always sent, since every answer's request id is
    signed whether or not its call is captured."""
    return CaptureSettings(config=config_of(ep), request_id_key=request_id_key(secret, ep))


def _capture_out(s: Session, ep: Endpoint, gauges: LiveGauges | None) -> CaptureOut:
    count, last = s.execute(
        select(func.count(), func.max(CapturedRequest.time)).where(
            CapturedRequest.endpoint_id == ep.id
        )
    ).one()
    return CaptureOut(
        endpoint=ep.name,
        config=config_of(ep),
        captured=int(count or 0),
        last_captured_at=_utc(last) if last is not None else None,
        dropped=ep.capture_dropped,
        pending=gauges.capture_pending(ep.name) if gauges is not None else 0,
    )


def get_capture(
    db: Database, principal: Principal, name: str, gauges: LiveGauges | None = None
) -> CaptureOut:
    principal.require("viewer")
    with db.read() as s:
        return _capture_out(s, find_endpoint(s, principal.workspace_id, name), gauges)


def set_capture(
    db: Database,
    principal: Principal,
    name: str,
    body: CaptureUpdate,
    gauges: LiveGauges | None = None,
) -> CaptureOut:
    """Merge the fields ``body`` sets into the endpoint's capture settings."""
    principal.require("developer")
    changes = {k: getattr(body, k) for k in body.model_fields_set}
    nulls = sorted(k for k in NOT_NULL if k in changes and changes[k] is None)
    if nulls:
        raise Unprocessable(f"{', '.join(nulls)} cannot be null")
    with db.write() as s:
        ep = find_endpoint(s, principal.workspace_id, name, lock=True)
        merged = config_of(ep).model_dump() | changes
        try:
            config = CaptureConfig.model_validate(merged)
        except ValidationError as exc:  # pragma: no cover - CaptureUpdate has the same bounds
            raise Unprocessable("invalid capture settings", details=exc.errors()) from exc
        if apply_capture(s, ep, config):
            details = {"changes": changes, "config": config.model_dump(mode="json")}
            record(s, principal, "endpoint.capture", "endpoint", name, details)
        return _capture_out(s, ep, gauges)


# -- ingestion (replicas) ------------------------------------------------------------------------


def _insert(s: Session, table: Any, keys: Sequence[str], rows: list[dict[str, Any]]) -> list[Any]:
    """Insert ``rows``, skipping keys already stored (safe under concurrent shipments); the
    first key of each row inserted."""
    if not rows:
        return []
    dialect = s.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table).on_conflict_do_nothing(index_elements=list(keys))
    return list(s.scalars(stmt.returning(table.c[keys[0]]), rows))


def _consumers(s: Session, ep: Endpoint, ids: Iterable[int | None]) -> dict[int, bool]:
    """Consumer id -> opted out of capture, for the ids that are the endpoint's workspace's."""
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    rows = s.execute(
        select(Consumer.id, Consumer.no_capture).where(
            Consumer.id.in_(wanted), Consumer.workspace_id == ep.workspace_id
        )
    )
    return {cid: bool(no_capture) for cid, no_capture in rows}


def _labels(s: Session, version_ids: set[int]) -> dict[int, str]:
    if not version_ids:
        return {}
    rows = s.execute(
        select(ModelVersion.id, Model.name, ModelVersion.version)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(ModelVersion.id.in_(version_ids))
    )
    return {vid: f"{model}:{version}" for vid, model, version in rows}


def ingest_captured(
    s: Session, ep: Endpoint, batch: CaptureBatch, store: ArtifactStore
) -> UsageAccepted:
    """Index a replica's captured calls (in the caller's transaction).

    Every batch object and every blob a line refers to must already be a blob of the
    endpoint's workspace (422 otherwise, and nothing of the batch is kept); they are checked
    under the workspace's shared lock, so garbage collection cannot remove one in between. A
    consumer id not of the workspace is stored as none; a call of a consumer who has opted
    out meanwhile is not indexed (and counted in neither number): it never reaches a listing
    or a curated dataset. A re-shipped record adds nothing, its blobs included.
    """
    lock_workspace(s, ep.workspace_id, exclusive=False)
    objects = sorted({r.object for r in batch.records})
    blobs = sorted({b for r in batch.records for b in r.blobs} - set(objects))
    missing = store.missing(ep.workspace_id, [*objects, *blobs])
    if missing:
        kind = "batch object" if missing[0] in objects else "blob"
        raise Unprocessable(
            f"{kind} {missing[0]} is not in the workspace's store; write it first",
            details={"missing": missing},
        )
    consumers = _consumers(s, ep, (r.consumer_id for r in batch.records))
    labels = _labels(s, {r.model_version_id for r in batch.records})
    rows: list[dict[str, Any]] = []
    refs: dict[str, list[str]] = {}
    for r in batch.records:
        opted_out = consumers.get(r.consumer_id) if r.consumer_id is not None else False
        if opted_out:
            continue
        rows.append(
            {
                **r.model_dump(exclude={"consumer_id", "blobs"}),
                "time": _utc(r.time),
                "workspace_id": ep.workspace_id,
                "endpoint_id": ep.id,
                "consumer_id": r.consumer_id if r.consumer_id in consumers else None,
                "model_label": labels.get(r.model_version_id, f"version #{r.model_version_id}"),
            }
        )
        refs[r.request_id] = list(dict.fromkeys(r.blobs))
    accepted = _insert(s, CapturedRequest.__table__, ["request_id"], rows)
    # Only the records stored now: a re-shipped one (its row already there) adds no blob row.
    blob_rows = [{"request_id": rid, "sha256": b} for rid in accepted for b in refs[rid]]
    _insert(s, CapturedBlob.__table__, ["request_id", "sha256"], blob_rows)
    return UsageAccepted(accepted=len(accepted), duplicates=len(rows) - len(accepted))


def ingest_feedback(s: Session, ep: Endpoint, items: Sequence[FeedbackIn]) -> UsageAccepted:
    """Store feedback the replica verified (the request id is this endpoint's and the
    sender's own); a re-shipped item (same ``id``) is stored once."""
    consumers = _consumers(s, ep, (f.consumer_id for f in items))
    rows = [
        {
            **f.model_dump(exclude={"consumer_id"}),
            "time": _utc(f.time),
            "endpoint_id": ep.id,
            "consumer_id": f.consumer_id if f.consumer_id in consumers else None,
        }
        for f in items
    ]
    accepted = len(_insert(s, Feedback.__table__, ["id"], rows))
    return UsageAccepted(accepted=accepted, duplicates=len(rows) - accepted)


def record_gauges(s: Session, ep: Endpoint, gauges: Sequence[ReplicaGauges]) -> int:
    """Add the records replicas dropped (spool full) to the endpoint's count, with an event
    saying so; how many were dropped in this shipment."""
    dropped = sum(g.capture_dropped for g in gauges)
    if dropped <= 0:
        return 0
    s.execute(
        update(Endpoint)
        .where(Endpoint.id == ep.id)
        .values(capture_dropped=Endpoint.capture_dropped + dropped)
    )
    s.refresh(ep, with_for_update=True)  # event_seq: one writer at a time
    replicas = sorted(g.replica for g in gauges if g.capture_dropped)
    add_event(
        s,
        ep,
        "capture",
        f"capture dropped {dropped} records: its spool is full (the artifact store has been "
        "unreachable or too slow); requests are still served",
        dropped=dropped,
        replicas=replicas,
    )
    return dropped


# -- reading -------------------------------------------------------------------------------------


_MERGED_FIELDS = ("rating", "label", "target", "note")  # the latest non-null value of each wins


@dataclass
class _Merged:
    """The feedback on one request id, the latest value of each field winning."""

    request_id: str
    time: datetime
    consumer: str
    rating: int | None = None
    label: str | int | None = None
    target: float | str | None = None
    note: str | None = None

    def out(self, captured: bool) -> FeedbackOut:
        return FeedbackOut(
            request_id=self.request_id,
            time=self.time,
            consumer=self.consumer,
            rating=self.rating,
            label=self.label,
            target=self.target,
            note=self.note,
            captured=captured,
        )


def merged_feedback(
    s: Session, ep: Endpoint, request_ids: Sequence[str] | None = None
) -> dict[str, _Merged]:
    """Request id -> its merged feedback, in one query of the columns merging needs (plain
    rows, not ORM objects: an endpoint may hold feedback on every one of 100,000 calls)."""
    stmt = (
        select(
            Feedback.request_id,
            Feedback.time,
            Feedback.consumer_name,
            Feedback.rating,
            Feedback.label,
            Feedback.target,
            Feedback.note,
        )
        .where(Feedback.endpoint_id == ep.id)
        .order_by(Feedback.time, Feedback.id)
        .execution_options(yield_per=5000)
    )
    if request_ids is not None:
        if not request_ids:
            return {}
        stmt = stmt.where(Feedback.request_id.in_(request_ids))
    merged: dict[str, _Merged] = {}
    for request_id, time, consumer, *values in s.execute(stmt):
        m = merged.get(request_id)
        if m is None:
            m = merged[request_id] = _Merged(request_id, time, consumer)
        m.time, m.consumer = time, consumer
        for name, value in zip(_MERGED_FIELDS, values, strict=True):
            if value is not None:
                setattr(m, name, value)
    return merged


def _captured_ids(s: Session, ep: Endpoint) -> set[str]:
    """Request ids that have both feedback and a captured record on ``ep``."""
    rows = s.scalars(
        select(Feedback.request_id)
        .join(CapturedRequest, CapturedRequest.request_id == Feedback.request_id)
        .where(Feedback.endpoint_id == ep.id, CapturedRequest.endpoint_id == ep.id)
        .distinct()
    )
    return set(rows)


def feedback_summary(db: Database, principal: Principal, name: str) -> FeedbackSummary:
    """Counts are of rated calls (request ids), each with its latest feedback."""
    principal.require("viewer")
    with db.read() as s:
        ep = find_endpoint(s, principal.workspace_id, name)
        merged = merged_feedback(s, ep)
        captured = _captured_ids(s, ep)
    ratings = dict.fromkeys(RATINGS, 0)
    for m in merged.values():
        if m.rating is not None:
            ratings[str(m.rating)] += 1
    rated = sum(ratings.values())
    total = sum(int(k) * n for k, n in ratings.items())
    recent = sorted(merged.values(), key=lambda m: (m.time, m.request_id), reverse=True)
    return FeedbackSummary(
        endpoint=name,
        count=len(merged),
        rated=rated,
        mean_rating=total / rated if rated else None,
        ratings=ratings,
        labelled=sum(1 for m in merged.values() if m.label is not None or m.target is not None),
        captured=len(captured & merged.keys()),
        recent=[m.out(m.request_id in captured) for m in recent[:RECENT]],
    )


def list_captured(
    db: Database,
    store: ArtifactStore,
    principal: Principal,
    name: str,
    *,
    limit: int = 50,
    consumer: str | None = None,
) -> list[CapturedRecordOut]:
    """The latest captured calls with their inputs and outputs read back from their batch
    objects, and their feedback. Customer data: developer or above."""
    principal.require("developer")
    with db.read() as s:
        ep = find_endpoint(s, principal.workspace_id, name)
        stmt = select(CapturedRequest).where(CapturedRequest.endpoint_id == ep.id)
        if consumer is not None:
            stmt = stmt.where(CapturedRequest.consumer_name == consumer)
        rows = s.scalars(
            stmt.order_by(CapturedRequest.time.desc(), CapturedRequest.request_id).limit(limit)
        ).all()
        feedback = merged_feedback(s, ep, [r.request_id for r in rows])
        workspace_id = ep.workspace_id
    lines = read_lines(store, workspace_id, rows)
    out = []
    for r in rows:
        line = lines.get((r.object, r.line))
        readable = line is not None and line.get("request_id") == r.request_id
        fb = feedback.get(r.request_id)
        out.append(
            CapturedRecordOut(
                request_id=r.request_id,
                time=r.time,
                consumer=r.consumer_name,
                model_label=r.model_label,
                route=r.route,
                status=r.status,
                input=line.get("input") if readable and line else None,
                output=line.get("output") if readable and line else None,
                feedback=fb.out(True) if fb is not None else None,
                readable=readable,
            )
        )
    return out


class Located(Protocol):
    """Where a captured call's line is: a row of captured_requests, or just those columns."""

    @property
    def object(self) -> str: ...

    @property
    def line(self) -> int: ...


def read_raw_lines(
    store: ArtifactStore, workspace_id: int, rows: Iterable[Located]
) -> dict[tuple[str, int], bytes]:
    """(object, line) -> the stored line's bytes (see :func:`read_lines_at`)."""
    return read_lines_at(store, workspace_id, ((r.object, r.line) for r in rows))


def read_lines_at(
    store: ArtifactStore, workspace_id: int, where: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], bytes]:
    """(object, line) -> the stored line's bytes, each batch object read once and only up to
    the last line wanted; a missing object is left out (and an object that fails part way
    keeps the lines read before it failed). Takes plain pairs: a database row's attributes
    cost more to read than the lines themselves."""
    wanted: dict[str, set[int]] = {}
    for obj, number in where:
        numbers = wanted.get(obj)
        if numbers is None:
            numbers = wanted[obj] = set()
        numbers.add(number)
    found: dict[tuple[str, int], bytes] = {}
    for obj, numbers in wanted.items():
        head: list[bytes] = []
        try:
            with store.open_blob(workspace_id, obj) as fh:
                # extend keeps what was read before an error, as a line-by-line loop would
                head.extend(islice(fh, max(numbers) + 1))
        except OSError:
            pass
        for number in numbers:
            if number < len(head):
                found[(obj, number)] = head[number]
    return found


def read_lines(
    store: ArtifactStore, workspace_id: int, rows: Iterable[Located]
) -> dict[tuple[str, int], dict[str, Any]]:
    """(object, line) -> the parsed line; a missing object or a bad line is left out (the
    record shows as unreadable)."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for where, raw in read_raw_lines(store, workspace_id, rows).items():
        value = parse_line(raw)
        if value is not None:
            found[where] = value
    return found


_DECODER = json.JSONDecoder()
_JSON_SPACE = " \t\n\r"


def parse_line(raw: bytes) -> dict[str, Any] | None:
    """The stored line as a JSON object, None when it is not one. Lines are UTF-8 (replicas
    write them with json.dumps), so the usual line skips ``json.loads``'s encoding detection
    and whitespace scan (a quarter of the time of a curation's parse); anything else takes
    ``json.loads(raw)``, so the result is the same for every line."""
    try:
        text = raw.decode()
        value, end = _DECODER.raw_decode(text)
        if end != len(text) and text[end:].strip(_JSON_SPACE):
            raise ValueError("extra data")
    except ValueError:  # UnicodeDecodeError too
        try:
            value = json.loads(raw)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
