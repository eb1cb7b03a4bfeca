"""What replicas call: the keys allowed on their endpoint, and usage batches to store.

Authenticated with the endpoint's own token (derived from the server's secret), never with a
user or consumer key; not part of the public API.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.schemas.metering import AccessKey, AccessSnapshot, UsageAccepted, UsageBatch
from gureum.server.db.base import utcnow
from gureum.server.db.tables import ApiKey, User
from gureum.server.db.tables_serving import Endpoint
from gureum.server.deps import DbDep, ServingDep
from gureum.server.services import consumers, usage
from gureum.server.services.endpoints import by_token

router = APIRouter(prefix="/internal/endpoints", tags=["internal"], include_in_schema=False)
Name = Annotated[str, Path(max_length=63)]


@router.get("/{name}/access")
def access(name: Name, request: Request, db: DbDep, serving: ServingDep) -> AccessSnapshot:
    with db.read() as s:
        ep = by_token(s, name, request.headers.get("authorization"))
        keys = consumers.access_snapshot(s, ep) + _member_keys(s, ep)
        return AccessSnapshot(
            endpoint=name,
            keys=keys,
            replicas=max(1, serving.live(name).primary),
            generated_at=utcnow(),
        )


@router.post("/{name}/usage")
def ship(
    name: Name, body: UsageBatch, request: Request, db: DbDep, serving: ServingDep
) -> UsageAccepted:
    with db.write() as s:
        ep = by_token(s, name, request.headers.get("authorization"))
        accepted = usage.ingest(s, ep, body)
    if not accepted.duplicates:  # a re-shipped batch was counted the first time
        serving.gauges.observe(name, body)
    return accepted


def _member_keys(s: Session, ep: Endpoint) -> list[AccessKey]:
    """The workspace's own API keys may call its endpoints (team use: metered, not charged)."""
    now = utcnow()
    rows = s.execute(
        select(ApiKey.key_id, ApiKey.secret_hash, ApiKey.expires_at, User.name)
        .join(User, User.id == ApiKey.user_id)
        .where(ApiKey.workspace_id == ep.workspace_id, ApiKey.revoked_at.is_(None))
    ).all()
    return [
        AccessKey(
            key_id=r.key_id,
            secret_hash=r.secret_hash,
            kind="member",
            consumer_id=None,
            consumer_name=f"member:{r.name}",
        )
        for r in rows
        if r.expires_at is None or r.expires_at > now
    ]
