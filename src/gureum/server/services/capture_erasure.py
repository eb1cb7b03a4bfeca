"""Erasing captured data: all of one consumer's (``gureum consumers forget``), and what is
older than its endpoint's retention (a periodic sweep).

Captured bytes are blobs of the workspace: the JSON-lines batch objects (one per consumer
per shipment, so a consumer's lines never share an object with another's) and the large
values their lines refer to. Records are erased in chunks, each in one transaction that
holds the workspace exclusively, deletes the rows and then removes the blobs nothing else
uses any more (a dataset file sharing an image keeps it). If removing bytes fails, that
chunk's rows come back, so running the erasure again finishes it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.orm import Session

from gureum.schemas.capture import ForgetOut
from gureum.server.auth import Principal
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables_capture import CapturedBlob, CapturedRequest, Feedback
from gureum.server.db.tables_serving import Endpoint
from gureum.server.services.audit import record
from gureum.server.services.blobs import lock_workspace, remove_unreferenced
from gureum.server.services.consumers import find_consumer
from gureum.server.services.endpoints import config_of
from gureum.storage.store import ArtifactStore

log = logging.getLogger(__name__)
# Records erased per transaction: the workspace is held exclusively (pushes and captured
# shipments wait) only while one chunk's rows and bytes go.
CHUNK = 1000


@dataclass(frozen=True)
class Erased:
    records: int = 0
    blobs_removed: int = 0

    def __add__(self, other: Erased) -> Erased:
        return Erased(self.records + other.records, self.blobs_removed + other.blobs_removed)


@dataclass(frozen=True)
class Swept:
    """What one endpoint's retention removed in a sweep."""

    endpoint: str
    workspace_id: int
    retention_days: int
    records: int
    blobs_removed: int


def _erase_chunk(s: Session, store: ArtifactStore, workspace_id: int, ids: Sequence[str]) -> Erased:
    """Delete these records and their blob rows, then the blobs nothing uses any more."""
    in_ids = CapturedRequest.request_id.in_(ids)
    objects = set(s.scalars(select(CapturedRequest.object).where(in_ids).distinct()))
    blobs = set(
        s.scalars(select(CapturedBlob.sha256).where(CapturedBlob.request_id.in_(ids)).distinct())
    )
    s.execute(delete(CapturedBlob).where(CapturedBlob.request_id.in_(ids)))
    gone = s.scalars(delete(CapturedRequest).where(in_ids).returning(CapturedRequest.request_id))
    records = len(gone.all())
    return Erased(records, len(remove_unreferenced(s, store, workspace_id, objects | blobs)))


def _erase_where(
    db: Database, store: ArtifactStore, workspace_id: int, which: ColumnElement[bool]
) -> Erased:
    """Erase every captured record of the workspace that ``which`` selects, chunk by chunk."""
    total = Erased()
    while True:
        with db.write() as s:
            lock_workspace(s, workspace_id, exclusive=True)
            ids = s.scalars(
                select(CapturedRequest.request_id)
                .where(CapturedRequest.workspace_id == workspace_id, which)
                .order_by(CapturedRequest.time, CapturedRequest.request_id)
                .limit(CHUNK)
            ).all()
            if ids:
                total += _erase_chunk(s, store, workspace_id, ids)
        if len(ids) < CHUNK:
            return total


def forget(db: Database, store: ArtifactStore, principal: Principal, name: str) -> ForgetOut:
    """Erase a consumer's captured records (inputs, outputs, the blobs they alone used) and
    its feedback, on every endpoint of the workspace. The consumer and its keys stay; to
    stop capturing its calls from now on, set ``capture: false`` on it."""
    principal.require("admin")
    workspace_id = principal.workspace_id
    with db.read() as s:
        consumer_id = find_consumer(s, workspace_id, name).id
    erased = _erase_where(db, store, workspace_id, CapturedRequest.consumer_id == consumer_id)
    with db.write() as s:
        find_consumer(s, workspace_id, name, lock=True)
        feedback = s.scalars(
            delete(Feedback).where(Feedback.consumer_id == consumer_id).returning(Feedback.id)
        ).all()
        out = ForgetOut(
            consumer=name,
            records=erased.records,
            feedback=len(feedback),
            blobs_removed=erased.blobs_removed,
        )
        record(s, principal, "consumer.forget", "consumer", name, out.model_dump())
    return out


def erase_endpoint(db: Database, store: ArtifactStore, endpoint_id: int) -> Erased:
    """Before a deleted endpoint's row goes: its captured records and the bytes they alone
    used (the rows would cascade away, the bytes would stay)."""
    with db.read() as s:
        workspace_id = s.scalar(select(Endpoint.workspace_id).where(Endpoint.id == endpoint_id))
    if workspace_id is None:
        return Erased()
    return _erase_where(db, store, workspace_id, CapturedRequest.endpoint_id == endpoint_id)


def sweep_retention(
    db: Database, store: ArtifactStore, now: datetime | None = None
) -> dict[int, Swept]:
    """Erase captured records older than their endpoint's ``retention_days`` and the blobs
    they alone used; endpoint id -> what went, for each endpoint that has a retention.

    Feedback stays: it is small, holds no inputs, and the endpoint's feedback summary counts
    it (a rated call whose record expired shows as not captured). A batch object whose other
    lines are still within retention stays until they expire too (a shipment spans seconds).
    One endpoint's failure is logged and the others are still swept.
    """
    now = now or utcnow()
    with db.read() as s:
        endpoints = [
            (ep.id, ep.workspace_id, ep.name, config_of(ep).retention_days)
            for ep in s.scalars(select(Endpoint).order_by(Endpoint.id))
        ]
    swept: dict[int, Swept] = {}
    for ep_id, workspace_id, name, days in endpoints:
        if days is None:
            continue
        old = (CapturedRequest.endpoint_id == ep_id) & (
            CapturedRequest.time < now - timedelta(days=days)
        )
        try:
            erased = _erase_where(db, store, workspace_id, old)
        except Exception:
            log.exception("the capture retention sweep of endpoint %s failed", name)
            continue
        swept[ep_id] = Swept(name, workspace_id, days, erased.records, erased.blobs_removed)
        if erased.records:
            details = {"retention_days": days, **asdict(erased)}
            with db.write() as s:
                record(
                    s,
                    None,
                    "endpoint.capture.retention",
                    "endpoint",
                    name,
                    details,
                    workspace_id=workspace_id,
                )
            log.info("capture retention of %s removed %d records", name, erased.records)
    return swept
