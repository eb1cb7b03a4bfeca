"""What replicas call: the keys allowed on their endpoint (and its capture settings), blocks of
consumers' monthly quotas, usage batches (with feedback) and captured calls to store.

Authenticated with the endpoint's own token (derived from the server's secret), never with a
user or consumer key; not part of the public API.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.schemas.capture import CaptureBatch
from gureum.schemas.metering import (
    AccessKey,
    AccessSnapshot,
    LeaseGranted,
    LeaseRequest,
    UsageAccepted,
    UsageBatch,
)
from gureum.server.auth import at_least, role_rank
from gureum.server.db.base import utcnow
from gureum.server.db.tables import ApiKey, Membership, User
from gureum.server.db.tables_serving import Endpoint
from gureum.server.deps import DbDep, ServingDep, SettingsDep, StoreDep
from gureum.server.services import capture, consumers, usage, validations
from gureum.server.services.blobs import collect_garbage
from gureum.server.services.endpoints import by_token
from gureum.serving.validation import ValidationReport

router = APIRouter(prefix="/internal/endpoints", tags=["internal"], include_in_schema=False)
Name = Annotated[str, Path(max_length=63)]


@router.get("/{name}/access")
def access(
    name: Name, request: Request, db: DbDep, serving: ServingDep, settings: SettingsDep
) -> AccessSnapshot:
    with db.read() as s:
        ep = by_token(s, name, request.headers.get("authorization"))
        members = _member_keys(s, ep, settings.data_plane_key_rate_limit)
        return AccessSnapshot(
            endpoint=name,
            keys=consumers.access_snapshot(s, ep) + members,
            replicas=max(1, serving.live(name).primary),
            generated_at=utcnow(),
            max_staleness_s=settings.max_key_staleness_s,
            capture=capture.capture_settings(ep, serving.secret),
        )


@router.post("/{name}/lease")
def lease(
    name: Name,
    body: LeaseRequest,
    request: Request,
    db: DbDep,
    serving: ServingDep,
    settings: SettingsDep,
) -> LeaseGranted:
    """The next block of a consumer's monthly quota for the calling replica (see
    ``consumers.lease``)."""
    replicas = max(1, serving.live(name).primary)
    with db.write() as s:
        ep = by_token(s, name, request.headers.get("authorization"))
        return consumers.lease(
            s, ep, body.consumer_id, body.release, settings.quota_lease_calls, replicas
        )


@router.post("/{name}/usage")
def ship(
    name: Name, body: UsageBatch, request: Request, db: DbDep, serving: ServingDep
) -> UsageAccepted:
    with db.write() as s:
        ep = by_token(s, name, request.headers.get("authorization"))
        metered = usage.ingest(s, ep, body)
        rated = capture.ingest_feedback(s, ep, body.feedback)
        accepted = UsageAccepted(
            accepted=metered.accepted + rated.accepted,
            duplicates=metered.duplicates + rated.duplicates,
        )
        if not accepted.duplicates:  # a re-shipped batch was counted the first time
            capture.record_gauges(s, ep, body.gauges)
    if not accepted.duplicates:
        serving.gauges.observe(name, body)
    return accepted


@router.post("/{name}/captured")
def captured(
    name: Name, body: CaptureBatch, request: Request, db: DbDep, store: StoreDep
) -> UsageAccepted:
    """Index rows of captured calls whose batch object the replica has written to the store.
    Calls of a consumer who opted out meanwhile are not indexed: the bytes the replica wrote
    for them are removed again unless something else uses them."""
    with db.write() as s:
        ep = by_token(s, name, request.headers.get("authorization"))
        accepted = capture.ingest_captured(s, ep, body, store)
        workspace_id = ep.workspace_id
    if accepted.accepted + accepted.duplicates < len(body.records):
        written = {r.object for r in body.records} | {b for r in body.records for b in r.blobs}
        collect_garbage(db, store, workspace_id, written)
    return accepted


@router.post("/{name}/validation", status_code=204)
def validation(name: Name, body: ValidationReport, request: Request, db: DbDep) -> None:
    """A new replica's validation report of the version it loaded (see services.validations):
    a failed one drops the deploy it belongs to, under the endpoint's row lock."""
    with db.write() as s:
        ep = by_token(s, name, request.headers.get("authorization"))
        s.refresh(ep, with_for_update=True)
        validations.record_report(s, ep, body)


def _member_keys(s: Session, ep: Endpoint, rate_limit: float) -> list[AccessKey]:
    """The workspace's own API keys made with ``data_plane`` may call its endpoints while they
    and their user's current role there are developer or above: rate-limited per key, metered,
    not charged. Other workspace keys may not call the data plane at all."""
    now = utcnow()
    rows = s.execute(
        select(ApiKey.key_id, ApiKey.secret_hash, ApiKey.expires_at, ApiKey.role, User, Membership)
        .join(User, User.id == ApiKey.user_id)
        .outerjoin(
            Membership,
            (Membership.user_id == ApiKey.user_id)
            & (Membership.workspace_id == ApiKey.workspace_id),
        )
        .where(
            ApiKey.workspace_id == ep.workspace_id,
            ApiKey.revoked_at.is_(None),
            ApiKey.data_plane.is_(True),
        )
    ).all()
    keys = []
    for key_id, secret_hash, expires_at, role, user, membership in rows:
        if expires_at is not None and expires_at <= now:
            continue
        if membership is not None and role_rank(membership.role) < role_rank(role):
            role = membership.role  # a key never carries more than its user's current role
        elif membership is None and not user.is_site_admin:
            continue  # no longer a member
        if not at_least(role, "developer"):
            continue
        keys.append(
            AccessKey(
                key_id=key_id,
                secret_hash=secret_hash,
                kind="member",
                consumer_id=None,
                consumer_name=f"member:{user.name}",
                rate_limit=rate_limit,
            )
        )
    return keys
