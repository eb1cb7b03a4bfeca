"""Who may call an endpoint, and how often: checked in memory on every request.

The table is a snapshot of the keys allowed on the endpoint (hashes only), refreshed in the
background. Rate limits are token buckets per consumer, each replica holding its share of the
limit; the monthly quota counts what the control plane has stored plus what this replica served
since the snapshot.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gureum.schemas.metering import AccessKey, AccessSnapshot

CONSUMER_PREFIX = "gck"
MEMBER_PREFIX = "gk"


@dataclass(frozen=True)
class Caller:
    consumer_id: int | None
    name: str
    key_id: str
    # The caller's Idempotency-Key: a retried request is metered once (see ReplicaCore.record).
    request_key: str | None = None


@dataclass
class Denied:
    status: int
    code: str
    message: str
    retry_after: float | None = None


@dataclass
class _Bucket:
    tokens: float
    at: float = field(default_factory=time.monotonic)


def split_bearer(authorization: str | None) -> tuple[str, str] | None:
    """``Bearer gck_<id>_<secret>`` (consumer) or ``Bearer gk_<id>_<secret>`` (member)."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    parts = authorization[7:].strip().split("_", 2)
    if len(parts) != 3 or parts[0] not in (CONSUMER_PREFIX, MEMBER_PREFIX) or not all(parts):
        return None
    return parts[1], parts[2]


def next_month(now: datetime) -> datetime:
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


class AccessTable:
    def __init__(self) -> None:
        self._keys: dict[str, AccessKey] = {}
        self._replicas = 1
        self._buckets: dict[str, _Bucket] = {}
        self._served_since: dict[int, int] = {}
        self._lock = threading.Lock()
        self.loaded = False

    def load(self, snap: AccessSnapshot) -> None:
        with self._lock:
            self._keys = {k.key_id: k for k in snap.keys}
            self._replicas = max(1, snap.replicas)
            self._served_since = {}
            self.loaded = True

    def knows(self, key_id: str) -> bool:
        return key_id in self._keys

    def check(self, authorization: str | None) -> Caller | Denied:
        parts = split_bearer(authorization)
        if parts is None:
            return Denied(401, "unauthorized", "send `Authorization: Bearer <consumer key>`")
        key = self._keys.get(parts[0])
        digest = hashlib.sha256(parts[1].encode()).hexdigest()
        if key is None or not hmac.compare_digest(digest, key.secret_hash):
            return Denied(
                401, "unauthorized", "this key is unknown, revoked or not for this endpoint"
            )
        if key.consumer_id is None:  # a team member's key: no plan limits
            return Caller(None, key.consumer_name, key.key_id)
        denied = self._quota(key) or self._rate(key)
        return denied or Caller(key.consumer_id, key.consumer_name, key.key_id)

    def served(self, caller: Caller) -> None:
        if caller.consumer_id is not None:
            with self._lock:
                cid = caller.consumer_id
                self._served_since[cid] = self._served_since.get(cid, 0) + 1

    def _quota(self, key: AccessKey) -> Denied | None:
        if key.monthly_quota is None or key.consumer_id is None:
            return None
        used = key.used_this_month + self._served_since.get(key.consumer_id, 0)
        if used < key.monthly_quota:
            return None
        now = datetime.now(UTC)
        reset = next_month(now)
        return Denied(
            429,
            "quota_exhausted",
            f"the monthly quota of {key.monthly_quota} requests is used up; "
            f"it resets on {reset.date().isoformat()}",
            (reset - now).total_seconds(),
        )

    def _rate(self, key: AccessKey) -> Denied | None:
        if key.rate_limit is None:
            return None
        rate = key.rate_limit / self._replicas
        burst = max(1.0, rate)
        name = str(key.consumer_id)
        with self._lock:
            now = time.monotonic()
            b = self._buckets.get(name)
            if b is None:
                b = self._buckets[name] = _Bucket(burst, now)
            b.tokens = min(burst, b.tokens + (now - b.at) * rate)
            b.at = now
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return None
            wait = (1.0 - b.tokens) / rate
        return Denied(
            429,
            "rate_limited",
            f"rate limit of {key.rate_limit:g} requests/s exceeded",
            float(max(1, math.ceil(wait))),
        )
