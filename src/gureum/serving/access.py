"""Who may call an endpoint, and how often: checked in memory on every request.

The table is a snapshot of the keys allowed on the endpoint (hashes only), refreshed in the
background. A table older than the snapshot's ``max_staleness_s`` refuses every call (503): a
key revoked while the control plane is unreachable stops working within that time.

Rate limits are token buckets per consumer (per key for a team member's data-plane key), each
replica holding its share of the limit. A monthly quota is spent from blocks of calls that the
replica leases from the control plane (``ReplicaCore`` fetches them, off the request path): the
control plane never leases more than the quota in all, and no counter is reset at a refresh, so
replicas together never serve more than the quota.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gureum.schemas.metering import AccessKey, AccessSnapshot

CONSUMER_PREFIX = "gck"
MEMBER_PREFIX = "gk"
# Unknown key ids remembered as unknown (no new look at the control plane for them).
UNKNOWN_KEYS = 10_000
UNKNOWN_KEY_TTL_S = 10.0
# After the control plane said a quota is used up: ask again no sooner than this.
EXHAUSTED_RECHECK_S = 5.0
DEFAULT_STALENESS_S = 300.0
STALE_RETRY_S = 5.0


@dataclass(frozen=True)
class Caller:
    consumer_id: int | None
    name: str
    key_id: str
    # The caller's Idempotency-Key and the sha256 of the body sent with it (see
    # serving.idempotency): together with key_id they name the call in its usage record's id.
    request_key: str | None = None
    request_hash: str | None = None
    # The call took one call of a leased quota block (given back if it fails, see ``served``).
    leased: bool = False
    # False for a consumer who opted out of capture: none of its calls is kept.
    capture: bool = True


@dataclass
class Denied:
    status: int
    code: str
    message: str
    retry_after: float | None = None


@dataclass(frozen=True)
class NeedLease:
    """The consumer's leased block is spent: lease another, then check again."""

    consumer_id: int


@dataclass
class _Bucket:
    tokens: float
    at: float = field(default_factory=time.monotonic)


@dataclass
class _Block:
    """Calls of a consumer's monthly quota leased to this replica and not yet served."""

    left: int = 0
    last_grant: int = 0
    exhausted_until: float = 0.0


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


def quota_denied(quota: int) -> Denied:
    now = datetime.now(UTC)
    reset = next_month(now)
    return Denied(
        429,
        "quota_exhausted",
        f"the monthly quota of {quota} requests is used up; "
        f"it resets on {reset.date().isoformat()}",
        (reset - now).total_seconds(),
    )


class AccessTable:
    def __init__(self) -> None:
        self._keys: dict[str, AccessKey] = {}
        self._replicas = 1
        self._buckets: dict[str, _Bucket] = {}
        self._blocks: dict[int, _Block] = {}
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self.loaded = False
        self.loaded_at = 0.0  # time.monotonic() of the last snapshot taken
        self.max_staleness_s = DEFAULT_STALENESS_S

    def load(self, snap: AccessSnapshot, at: float | None = None) -> None:
        """Take a snapshot fetched at ``at`` (monotonic; default now). Buckets and leased
        blocks carry over: a refresh gives nobody more calls."""
        with self._lock:
            self._keys = {k.key_id: k for k in snap.keys}
            self._replicas = max(1, snap.replicas)
            self.max_staleness_s = snap.max_staleness_s
            self.loaded_at = time.monotonic() if at is None else at
            self.loaded = True
            for key_id in [k for k in self._unknown if k in self._keys]:
                del self._unknown[key_id]

    def knows(self, key_id: str) -> bool:
        return key_id in self._keys

    def stale(self) -> bool:
        return self.loaded and time.monotonic() - self.loaded_at > self.max_staleness_s

    # -- unknown keys (negative cache) ----------------------------------------------------

    def known_unknown(self, key_id: str) -> bool:
        """Looked up after it was first sent, not found, and not long ago."""
        until = self._unknown.get(key_id)
        return until is not None and time.monotonic() < until

    def mark_unknown(self, key_id: str) -> None:
        with self._lock:
            self._unknown[key_id] = time.monotonic() + UNKNOWN_KEY_TTL_S
            self._unknown.move_to_end(key_id)
            while len(self._unknown) > UNKNOWN_KEYS:
                self._unknown.popitem(last=False)

    # -- the check ------------------------------------------------------------------------

    def check(self, authorization: str | None) -> Caller | Denied | NeedLease:
        parts = split_bearer(authorization)
        if parts is None:
            return Denied(401, "unauthorized", "send `Authorization: Bearer <consumer key>`")
        if self.stale():
            return Denied(
                503,
                "keys_stale",
                "the endpoint cannot confirm keys with its control plane; retry later",
                STALE_RETRY_S,
            )
        key = self._keys.get(parts[0])
        digest = hashlib.sha256(parts[1].encode()).hexdigest()
        if key is None or not hmac.compare_digest(digest, key.secret_hash):
            message = "this key is unknown, revoked or not for this endpoint"
            if authorization is not None and authorization.startswith(f"Bearer {MEMBER_PREFIX}_"):
                message += (
                    "; a workspace API key calls endpoints only when made with "
                    "`gureum keys create NAME --data-plane` (developer or above)"
                )
            return Denied(401, "unauthorized", message)
        if key.consumer_id is None:  # a team member's data-plane key: its own rate limit
            return self._rate(key) or Caller(
                None, key.consumer_name, key.key_id, capture=key.capture
            )
        caller = Caller(
            key.consumer_id,
            key.consumer_name,
            key.key_id,
            leased=key.monthly_quota is not None,
            capture=key.capture,
        )
        if caller.leased:  # the quota first: a refused call spends no token of the rate
            quota = self._quota(key)
            if quota is not None:
                return quota
            if not self._take(key.consumer_id):
                return NeedLease(key.consumer_id)  # another request took the last call
        denied = self._rate(key)
        if denied is not None:
            self.give_back(caller)
            return denied
        return caller

    def served(self, caller: Caller, status: int = 200) -> None:
        """A call that failed (status >= 400) is not billed: its leased call goes back."""
        if status >= 400 and caller.leased:
            self.give_back(caller)

    def give_back(self, caller: Caller) -> None:
        """Return a leased call that was not computed (a replay, a refused retry, an error)."""
        if not caller.leased or caller.consumer_id is None:
            return
        with self._lock:
            block = self._blocks.get(caller.consumer_id)
            if block is not None:
                block.left += 1

    # -- leases ---------------------------------------------------------------------------

    def granted(self, consumer_id: int, calls: int) -> None:
        """A lease came back: ``calls`` more may be served (0: the quota is used up)."""
        with self._lock:
            block = self._blocks.setdefault(consumer_id, _Block())
            block.left += calls
            if calls > 0:
                block.last_grant = calls
                block.exhausted_until = 0.0
            else:
                block.exhausted_until = time.monotonic() + EXHAUSTED_RECHECK_S

    def running_low(self, consumer_id: int) -> bool:
        """A quarter or less of the last block left: time to lease the next one, ahead."""
        block = self._blocks.get(consumer_id)
        if block is None or time.monotonic() < block.exhausted_until:
            return False
        return block.left <= block.last_grant // 4

    def unused(self) -> dict[int, int]:
        """Leased calls not served, by consumer (given back at shutdown); empties the blocks."""
        with self._lock:
            left = {cid: b.left for cid, b in self._blocks.items() if b.left > 0}
            for block in self._blocks.values():
                block.left = 0
        return left

    def _take(self, consumer_id: int) -> bool:
        with self._lock:
            block = self._blocks.get(consumer_id)
            if block is None or block.left <= 0:
                return False
            block.left -= 1
            return True

    def _quota(self, key: AccessKey) -> Denied | NeedLease | None:
        quota, cid = key.monthly_quota, key.consumer_id
        if quota is None or cid is None:
            return None
        if key.used_this_month >= quota:
            return quota_denied(quota)
        block = self._blocks.get(cid)
        if block is not None and block.left > 0:
            return None
        if block is not None and time.monotonic() < block.exhausted_until:
            return quota_denied(quota)
        return NeedLease(cid)

    def _rate(self, key: AccessKey) -> Denied | None:
        if key.rate_limit is None:
            return None
        rate = key.rate_limit / self._replicas
        burst = max(1.0, rate)
        name = f"c{key.consumer_id}" if key.consumer_id is not None else f"k{key.key_id}"
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
