"""Dashboard sessions: a browser trades an API key for an HttpOnly cookie.

The cookie holds a random token; the database holds only its SHA-256 and the id of the key it
was opened with. Every request re-reads that key (revoked, expired, demoted: the session ends
or shrinks with it), so a session never carries more than its key. Requests authenticated by
the cookie that change anything must echo the session's CSRF token in ``X-CSRF-Token``: the
token is an HMAC of the cookie's secret, so a page of another site can neither read nor guess
it. Bearer-key callers never touch this module.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from gureum.server.auth import Authenticator, Principal, hash_secret
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import ApiKey
from gureum.server.db.tables_web import WebSession
from gureum.server.errors import Forbidden, Unauthorized

COOKIE = "gureum_session"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL = timedelta(hours=12)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CSRF_CONTEXT = b"gureum dashboard csrf v1"


@dataclass(frozen=True)
class Opened:
    token: str
    principal: Principal
    expires_at: datetime


def csrf_token(session_token: str) -> str:
    """The session's CSRF token: derived, so it needs no storage and dies with the session."""
    return hmac.new(session_token.encode(), _CSRF_CONTEXT, hashlib.sha256).hexdigest()


def csrf_ok(session_token: str, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(
        csrf_token(session_token).encode(), (sent or "").encode()
    )


def open_session(db: Database, auth: Authenticator, api_key: str) -> Opened:
    """Sign in: the key is checked past the cache (Unauthorized with a reason if refused)."""
    principal = auth.verify(f"Bearer {api_key.strip()}")
    token = secrets.token_urlsafe(32)
    now = utcnow()
    with db.write() as s:
        key = s.scalars(select(ApiKey).where(ApiKey.key_id == principal.key_id)).one()
        expires_at = now + SESSION_TTL
        if key.expires_at is not None and key.expires_at < expires_at:
            expires_at = key.expires_at
        s.execute(delete(WebSession).where(WebSession.expires_at <= now))  # housekeeping
        s.add(WebSession(token_hash=hash_secret(token), api_key_id=key.id, expires_at=expires_at))
    return Opened(token, principal, expires_at)


def close_session(db: Database, token: str) -> None:
    with db.write() as s:
        s.execute(delete(WebSession).where(WebSession.token_hash == hash_secret(token)))


def session_principal(db: Database, auth: Authenticator, token: str) -> Principal:
    """The principal of a live session, from its key as the database has it now."""
    with db.read() as s:
        row = s.execute(
            select(WebSession.expires_at, ApiKey.key_id)
            .join(ApiKey, ApiKey.id == WebSession.api_key_id)
            .where(WebSession.token_hash == hash_secret(token))
        ).one_or_none()
    if row is None or row.expires_at <= utcnow():
        raise Unauthorized("your dashboard session has ended: sign in again")
    return auth.session_principal(row.key_id)[0]


def cookie_principal(
    db: Database, auth: Authenticator, token: str, method: str, sent_csrf: str | None
) -> Principal:
    """What the API's auth dependency asks for a request that came with the cookie only."""
    principal = session_principal(db, auth, token)
    if method.upper() not in SAFE_METHODS and not csrf_ok(token, sent_csrf):
        raise Forbidden(
            "this request came from a signed-in browser without its CSRF token "
            "(send the page's token in the X-CSRF-Token header)"
        )
    return principal
