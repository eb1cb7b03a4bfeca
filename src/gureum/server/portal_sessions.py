"""Consumer portal sessions: a team's customer trades its consumer key for a portal cookie.

Kept apart from the dashboard's member sessions on purpose: another cookie (``gureum_portal``),
another table, another CSRF context. A portal session names one consumer key, so it reaches
that consumer's own usage, invoices and limits and nothing else; the API's auth dependency
never reads this cookie, so a portal session cannot call ``/v1``. Consumer keys are checked
here as the data plane checks them (``gck_<key_id>_<secret>``, sha256 of the secret, not
revoked, consumer enabled), read from the database, so a revoked key ends its sessions at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from gureum.schemas.consumers import split_consumer_key
from gureum.server.auth import hash_secret
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables_serving import Consumer, ConsumerKey
from gureum.server.db.tables_web import PortalSession
from gureum.server.errors import Conflict, Unauthorized
from gureum.server.services import audit
from gureum.server.services.consumers import _new_key

COOKIE = "gureum_portal"
SESSION_TTL = timedelta(hours=12)
_CSRF_CONTEXT = b"gureum portal csrf v1"
REFUSED = "invalid consumer key"


@dataclass(frozen=True)
class PortalConsumer:
    """Who a portal session is: one consumer of one workspace, through one of its keys."""

    consumer_id: int
    name: str
    workspace_id: int
    key_id: str


@dataclass(frozen=True)
class Opened:
    token: str
    consumer: PortalConsumer
    expires_at: datetime


def csrf_token(session_token: str) -> str:
    """Derived from the cookie's secret under the portal's own context: a member session's
    CSRF token is never a portal one."""
    return hmac.new(session_token.encode(), _CSRF_CONTEXT, hashlib.sha256).hexdigest()


def csrf_ok(session_token: str, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(
        csrf_token(session_token).encode(), (sent or "").encode()
    )


def _live_key(s: Session, key_id: str) -> tuple[ConsumerKey, Consumer] | None:
    from_db = s.execute(
        select(ConsumerKey, Consumer)
        .join(Consumer, Consumer.id == ConsumerKey.consumer_id)
        .where(ConsumerKey.key_id == key_id)
    ).one_or_none()
    if from_db is None:
        return None
    key, consumer = from_db
    if key.revoked_at is not None or consumer.disabled:
        return None
    return key, consumer


def _who(key: ConsumerKey, consumer: Consumer) -> PortalConsumer:
    return PortalConsumer(consumer.id, consumer.name, consumer.workspace_id, key.key_id)


def open_session(db: Database, consumer_key: str) -> Opened:
    """Sign in with a consumer key; Unauthorized (one reason for every refusal) otherwise."""
    parts = split_consumer_key(consumer_key.strip())
    if parts is None:
        raise Unauthorized(REFUSED)
    token = secrets.token_urlsafe(32)
    now = utcnow()
    with db.write() as s:
        found = _live_key(s, parts[0])
        digest = hash_secret(parts[1])
        if found is None or not hmac.compare_digest(digest, found[0].secret_hash):
            raise Unauthorized(REFUSED)
        key, consumer = found
        s.execute(delete(PortalSession).where(PortalSession.expires_at <= now))  # housekeeping
        expires_at = now + SESSION_TTL
        s.add(
            PortalSession(
                token_hash=hash_secret(token), consumer_key_id=key.id, expires_at=expires_at
            )
        )
        return Opened(token, _who(key, consumer), expires_at)


def close_session(db: Database, token: str) -> None:
    with db.write() as s:
        s.execute(delete(PortalSession).where(PortalSession.token_hash == hash_secret(token)))


def session_consumer(db: Database, token: str) -> PortalConsumer:
    """The consumer of a live portal session, from its key as the database has it now."""
    with db.read() as s:
        row = s.execute(
            select(PortalSession.expires_at, ConsumerKey, Consumer)
            .join(ConsumerKey, ConsumerKey.id == PortalSession.consumer_key_id)
            .join(Consumer, Consumer.id == ConsumerKey.consumer_id)
            .where(PortalSession.token_hash == hash_secret(token))
        ).one_or_none()
    if row is None or row.expires_at <= utcnow():
        raise Unauthorized("your portal session has ended: sign in again")
    key, consumer = row[1], row[2]
    if key.revoked_at is not None or consumer.disabled:
        raise Unauthorized("the key of this portal session was revoked: sign in again")
    return _who(key, consumer)


def rotate(db: Database, token: str) -> tuple[PortalConsumer, str]:
    """A new key for the session's consumer; the session's key is revoked in the same
    transaction (the data plane drops it at its next snapshot) and ends every other session
    opened with it. This session moves to the new key. Returns the new key, to show once."""
    with db.write() as s:
        row = s.execute(
            select(PortalSession, ConsumerKey, Consumer)
            .join(ConsumerKey, ConsumerKey.id == PortalSession.consumer_key_id)
            .join(Consumer, Consumer.id == ConsumerKey.consumer_id)
            .where(PortalSession.token_hash == hash_secret(token))
            .with_for_update()
        ).one_or_none()
        if row is None or row[0].expires_at <= utcnow():
            raise Unauthorized("your portal session has ended: sign in again")
        session, old, consumer = row
        if old.revoked_at is not None or consumer.disabled:
            raise Conflict("this key is already revoked; sign in with a current key")
        old.revoked_at = utcnow()
        new, full = _new_key(consumer)
        s.add(new)
        s.flush()
        s.execute(
            delete(PortalSession).where(
                PortalSession.consumer_key_id == old.id, PortalSession.id != session.id
            )
        )
        session.consumer_key_id = new.id
        details = {"consumer": consumer.name, "revoked": old.key_id, "by": "consumer portal"}
        audit.record(
            s,
            None,
            "consumer_key.rotate",
            "consumer_key",
            new.key_id,
            details,
            workspace_id=consumer.workspace_id,
        )
        s.flush()
        return _who(new, consumer), full
