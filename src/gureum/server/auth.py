"""Principals, roles and API keys.

A key looks like ``gk_<key id>_<secret>``. The key id is public (shown in lists, written to
the audit log); only a SHA-256 of the secret is stored, and it is compared in constant time.
Verified keys are cached for a few seconds so auth stays off the hot path; revoking a key
clears the cache at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from gureum.schemas.common import ROLES
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import ApiKey, Membership, User, Workspace
from gureum.server.errors import Forbidden, Unauthorized

KEY_PREFIX = "gk"
# A principal acting for no user (a job whose submitter was deleted): stored as NULL.
SYSTEM_USER_ID = 0
CACHE_SECONDS = 5.0
LAST_USED_EVERY = timedelta(seconds=60)


def role_rank(role: str) -> int:
    return ROLES.index(role)


def at_least(role: str, needed: str) -> bool:
    return role_rank(role) >= role_rank(needed)


@dataclass(frozen=True)
class Principal:
    user_id: int
    user_name: str
    workspace_id: int
    workspace_name: str
    role: str
    key_id: str
    is_site_admin: bool = False

    def require(self, needed: str) -> None:
        if not at_least(self.role, needed):
            raise Forbidden(f"this needs the {needed} role; your key has {self.role}")


@dataclass(frozen=True)
class NewKey:
    key_id: str
    secret_hash: str
    token: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> NewKey:
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewKey(key_id, hash_secret(secret), f"{KEY_PREFIX}_{key_id}_{secret}")


def split_token(token: str) -> tuple[str, str] | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


class Authenticator:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[str, tuple[Principal, float, datetime | None]] = {}
        self._last_used: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        with self._lock:
            self._cache.clear()

    @staticmethod
    def _token(authorization: str | None) -> str:
        if not authorization:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
        return token.strip()

    def cached(self, authorization: str | None) -> Principal | None:
        """The principal of a recently verified key, without I/O; None means: look it up."""
        cache_key = hash_secret(self._token(authorization))
        with self._lock:
            hit = self._cache.get(cache_key)
        if hit is None:
            return None
        principal, until, expires_at = hit
        if time.monotonic() < until and (expires_at is None or expires_at > utcnow()):
            return principal
        return None

    def authenticate(self, authorization: str | None) -> Principal:
        principal = self.cached(authorization)
        if principal is not None:
            return principal
        token = self._token(authorization)
        principal, expires_at = self._lookup(token)
        with self._lock:
            self._cache[hash_secret(token)] = (
                principal,
                time.monotonic() + CACHE_SECONDS,
                expires_at,
            )
        self._touch(principal.key_id)
        return principal

    def verify(self, authorization: str | None) -> Principal:
        """The key's principal as the database has it now, past the cache: for a long-lived
        stream, which must end as soon as its key is revoked."""
        return self._lookup(self._token(authorization))[0]

    def _lookup(self, token: str) -> tuple[Principal, datetime | None]:
        parsed = split_token(token)
        if parsed is None:
            raise Unauthorized("invalid API key")
        key_id, secret = parsed
        return self._resolve(key_id, secret)

    def session_principal(self, key_id: str) -> tuple[Principal, datetime | None]:
        """The principal of the key a dashboard session was opened with (the session holds
        the key's id, never its secret; the secret was checked at sign-in). The key's state
        is read as for a bearer call: revoked, expired or demoted keys end their sessions."""
        return self._resolve(key_id, None)

    def _resolve(self, key_id: str, secret: str | None) -> tuple[Principal, datetime | None]:
        with self.db.read() as s:
            row = s.execute(
                select(ApiKey, User, Workspace, Membership.role)
                .join(User, User.id == ApiKey.user_id)
                .join(Workspace, Workspace.id == ApiKey.workspace_id)
                .outerjoin(
                    Membership,
                    (Membership.user_id == ApiKey.user_id)
                    & (Membership.workspace_id == ApiKey.workspace_id),
                )
                .where(ApiKey.key_id == key_id)
            ).one_or_none()
        if row is None:
            raise Unauthorized("invalid API key")
        key, user, ws, member_role = row
        if secret is not None and not hmac.compare_digest(key.secret_hash, hash_secret(secret)):
            raise Unauthorized("invalid API key")
        if key.revoked_at is not None:
            raise Unauthorized("this API key was revoked")
        if key.expires_at is not None and key.expires_at <= utcnow():
            raise Unauthorized("this API key has expired")
        if member_role is None and not user.is_site_admin:
            raise Unauthorized("this API key's user is no longer a member of its workspace")
        # A key never grants more than its user's current role in the workspace.
        role = key.role
        if member_role is not None and role_rank(member_role) < role_rank(role):
            role = member_role
        principal = Principal(
            user_id=user.id,
            user_name=user.name,
            workspace_id=ws.id,
            workspace_name=ws.name,
            role=role,
            key_id=key.key_id,
            is_site_admin=user.is_site_admin,
        )
        return principal, key.expires_at

    def _touch(self, key_id: str) -> None:
        now = utcnow()
        with self._lock:
            last = self._last_used.get(key_id)
            if last is not None and now - last < LAST_USED_EVERY:
                return
            self._last_used[key_id] = now
        with self.db.write() as s:
            s.execute(update(ApiKey).where(ApiKey.key_id == key_id).values(last_used_at=now))
