"""Idempotency-Key on the data plane (the IETF httpapi Idempotency-Key draft, Stripe's practice).

A call is named by the caller's key id, its Idempotency-Key and the sha256 of its body. On the
replica that answered it, a repeat of the same call is answered from a byte-capped cache
(``Idempotent-Replayed: true``) without running the model or billing it again; the same key with
another body is refused (422), and a repeat while the first is still being computed is told to
wait (409, Retry-After). Anything not in the cache (another replica, evicted, expired, a stream)
is computed and billed again: a retry may cost twice, never nothing. Another caller's use of the
same Idempotency-Key is a different call (the key id is part of its name).

Kept in memory and per replica, so the hot path pays a dict lookup; the body is hashed only
when the header is present.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

MAX_REQUEST_KEY = 200
CACHE_BYTES = 32 * 1024 * 1024
ENTRY_BYTES = 1024 * 1024
TTL_S = 3600.0
# A call still marked in progress after this is taken as abandoned (its answer never came).
IN_PROGRESS_S = 600.0
# What an entry costs besides its reply's body (ids, hashes, headers, bookkeeping).
OVERHEAD = 256
REPLAYED = "idempotent-replayed"
# Headers that describe the first computation, not the answer.
NOT_REPLAYED = ("x-gureum-cold-start", "x-gureum-cold-start-ms")


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def call_id(key_id: str, request_key: str, digest: str) -> str:
    """The name of a call: the part of its usage records' ids that retries share."""
    return hashlib.sha256(f"{key_id}\n{request_key}\n{digest}".encode()).hexdigest()


@dataclass
class Stored:
    status: int
    body: bytes
    headers: dict[str, str]


@dataclass
class _Entry:
    digest: str
    started: float
    done: bool = False
    reply: Stored | None = None
    size: int = OVERHEAD


Outcome = Literal["new", "conflict", "in_progress"]


class ReplayCache:
    """Calls by (key id, Idempotency-Key): their body hash and, once answered, the answer.

    Least recently used entries go first once their bytes pass ``max_bytes``; answers over
    ``entry_bytes`` are not kept (a repeat is computed again, and billed)."""

    def __init__(
        self,
        max_bytes: int = CACHE_BYTES,
        entry_bytes: int = ENTRY_BYTES,
        ttl_s: float = TTL_S,
    ) -> None:
        self.max_bytes = max_bytes
        self.entry_bytes = entry_bytes
        self.ttl_s = ttl_s
        self.bytes = 0
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def begin(self, key_id: str, request_key: str, digest: str) -> Outcome | Stored:
        """What to do with a call: compute it ("new", now marked in progress), replay a stored
        answer, refuse a reused key ("conflict") or tell the caller to wait ("in_progress")."""
        now = time.monotonic()
        name = (key_id, request_key)
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and self._expired(entry, now):
                self._drop(name)
                entry = None
            if entry is not None:
                self._entries.move_to_end(name)
                if entry.digest != digest:
                    return "conflict"
                if entry.reply is not None:
                    return entry.reply
                if not entry.done:
                    return "in_progress"
            self._put(name, _Entry(digest, now))
            return "new"

    def finish(
        self, key_id: str, request_key: str, digest: str, answer: Stored | None = None
    ) -> None:
        """The call was computed. A failed one is forgotten (a retry computes it again, with
        any body); a served one keeps its body hash, and ``answer`` when it fits."""
        name = (key_id, request_key)
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry.digest != digest:
                return
            status = answer.status if answer is not None else 200
            if status >= 400:
                self._drop(name)
                return
            entry.done = True
            if answer is not None and len(answer.body) <= self.entry_bytes:
                headers = {k: v for k, v in answer.headers.items() if k not in NOT_REPLAYED}
                headers[REPLAYED] = "true"
                size = (
                    OVERHEAD + len(answer.body) + sum(len(k) + len(v) for k, v in headers.items())
                )
                self.bytes += size - entry.size
                entry.reply, entry.size = Stored(answer.status, answer.body, headers), size
                self._evict()

    def _expired(self, entry: _Entry, now: float) -> bool:
        if not entry.done:
            return now - entry.started > IN_PROGRESS_S
        return now - entry.started > self.ttl_s

    def _put(self, name: tuple[str, str], entry: _Entry) -> None:
        self._drop(name)
        self._entries[name] = entry
        self.bytes += entry.size
        self._evict()

    def _drop(self, name: tuple[str, str]) -> None:
        old = self._entries.pop(name, None)
        if old is not None:
            self.bytes -= old.size

    def _evict(self) -> None:
        while self.bytes > self.max_bytes and len(self._entries) > 1:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.size
