"""Capture on the replica: signed request ids, the sampling decision, redaction, and the spool
that writes sampled calls to the artifact store in batches.

The request path only decides and appends one line (the raw body and answer) to a local spool;
parsing, redaction and the store's writes happen in the spool's thread, so capture neither
slows nor fails a call. While the store is down, lines wait in the spool (bounded: past the
bound new ones are dropped and counted, and the control plane is told). A batch is written to
the store before its index rows are shipped, and both are idempotent (content-addressed batch,
request ids unique), so a replica killed mid-batch re-ships the same records on restart.

Request ids are signed with the endpoint's key (from the access snapshot) over endpoint,
caller, time and a nonce: any replica verifies a consumer's feedback without a lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gureum.schemas.capture import CaptureSettings
from gureum.serving.access import Caller
from gureum.serving.sidecar import Sidecar, SidecarConfig
from gureum.serving.spool import UsageSpool, of_kind
from gureum.storage.store import ArtifactStore

log = logging.getLogger("ray.serve.gureum")
REDACTED = "[redacted]"
# Strings longer than this inside captured inputs or outputs (images as base64) are stored as
# blobs of their own and referenced as {"$blob": sha256, "size": n}. A caller's own keys that
# start with "$" are stored with one more "$" ("$blob" -> "$$blob"), so that no input can pass
# for a reference to another blob of the workspace.
BLOB_MIN = 4096
SPOOL_MAX_BYTES = 256 * 1024 * 1024
BATCH_MAX_BYTES = 1 << 30
# Index rows go to the control plane at most this many, or about this many bytes, at a time.
INDEX_CHUNK = 1000
INDEX_CHUNK_BYTES = 8 * 1024 * 1024
INDEX_ROW_BYTES = 400
# The spool's thread yields the GIL after this many calls it prepared.
YIELD_EVERY = 32
HEADER_FIELDS = (
    "request_id",
    "time",
    "consumer_id",
    "consumer_name",
    "model_version_id",
    "route",
    "status",
)
MAC_HEX = 24
NONCE_HEX = 12
ANONYMOUS = "a"

# ship_index(rows): CaptureBatch's records, as plain dicts; raises when not taken.
ShipIndex = Callable[[list[dict[str, Any]]], None]


def who_of(caller: Caller | None) -> str:
    """The caller as a request id names it: a consumer, a member's key, or nobody yet."""
    if caller is None:
        return ANONYMOUS
    if caller.consumer_id is not None:
        return f"c{caller.consumer_id}"
    return f"k{caller.key_id}"


def _mac(key: bytes, endpoint: str, who: str, at: str, nonce: str) -> str:
    msg = f"{endpoint}|{who}|{at}|{nonce}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:MAC_HEX]


def new_request_id(key: bytes | None, endpoint: str, who: str) -> str:
    """``<ms hex>.<who>.<nonce>.<mac>``; without a key yet (no snapshot), an unsigned id that
    no feedback will match."""
    if key is None:
        return f"req_{uuid.uuid4().hex[:20]}"
    at = f"{int(time.time() * 1000):x}"
    nonce = secrets.token_hex(NONCE_HEX // 2)
    return f"{at}.{who}.{nonce}.{_mac(key, endpoint, who, at, nonce)}"


@dataclass(frozen=True)
class Signed:
    who: str
    time: float


def verify_request_id(key: bytes | None, endpoint: str, request_id: str) -> Signed | None:
    """The caller and time a request id names, if this endpoint's key signed it."""
    if key is None:
        return None
    parts = request_id.split(".")
    if len(parts) != 4:
        return None
    at, who, nonce, mac = parts
    if not (0 < len(at) <= 16 and len(nonce) == NONCE_HEX and len(mac) == MAC_HEX and who):
        return None
    try:
        millis = int(at, 16)
    except ValueError:
        return None
    if not hmac.compare_digest(mac, _mac(key, endpoint, who, at, nonce)):
        return None
    return Signed(who, millis / 1000)


def redact(value: Any, fields: list[str]) -> Any:
    """``value`` with the named fields blanked, wherever they are: a name ("email") or a
    dotted path ("card.number": a "number" inside a "card"); lists are stepped through."""
    paths = [f.split(".") for f in fields]
    return _redact(value, paths) if paths else value


def _redact(value: Any, paths: list[list[str]]) -> Any:
    if isinstance(value, list):
        return [_redact(v, paths) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _redact(v, paths) for k, v in value.items()}
    for path in paths:
        if path[0] in out:
            out[path[0]] = REDACTED if len(path) == 1 else _at(out[path[0]], path[1:])
    return out


def _at(value: Any, path: list[str]) -> Any:
    """Blank ``path`` right under ``value`` (through lists)."""
    if isinstance(value, list):
        return [_at(v, path) for v in value]
    if not isinstance(value, dict) or path[0] not in value:
        return value
    rest = REDACTED if len(path) == 1 else _at(value[path[0]], path[1:])
    return {**value, path[0]: rest}


@dataclass(frozen=True)
class _Finished:
    line: bytes
    header: dict[str, Any]
    has_inputs: bool
    has_outputs: bool
    blobs: list[str]


def _plain_json(text: str) -> bool:
    """JSON text that can go into a stored line as it is: an object or array on one line,
    short enough to hold no blob-sized string, with no "$" key to escape."""
    return (
        len(text) <= BLOB_MIN and text[:1] in ("{", "[") and "\n" not in text and '"$' not in text
    )


def _parse(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


class Capturer:
    """One replica's capture: settings from the access snapshot, the decision, the spool.

    With ``sidecar``, the spool is shipped by a process of its own
    (``serving.capture_sidecar``): the replica only decides and appends, and its CPU serves
    requests. Without, a thread of this process ships (tests, tools)."""

    def __init__(
        self,
        spool_dir: Path,
        endpoint: str,
        workspace_id: int,
        artifacts: str,
        ship_index: ShipIndex,
        max_bytes: int = SPOOL_MAX_BYTES,
        sidecar: SidecarConfig | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.settings: CaptureSettings | None = None
        self._key: bytes | None = None
        self._dropped_told = 0
        self._lock = threading.Lock()
        folder = spool_dir / "capture"
        self.shipper = CaptureShipper(endpoint, workspace_id, artifacts, ship_index)
        self._sidecar = (
            Sidecar(folder, endpoint, workspace_id, artifacts, sidecar) if sidecar else None
        )
        ship = None if sidecar else self.shipper.ship
        self.spool = UsageSpool(folder, endpoint, ship, max_bytes=max_bytes)

    def start(self) -> None:
        self.spool.start()
        if self._sidecar is not None:
            self._sidecar.start()

    def check(self) -> None:
        """Start the sidecar again if it died (the replica's refresh loop calls this)."""
        if self._sidecar is not None:
            self._sidecar.check()

    def configure(self, settings: CaptureSettings | None) -> None:
        self.settings = settings
        self._key = bytes.fromhex(settings.request_id_key) if settings is not None else None

    # -- request ids ----------------------------------------------------------------------

    def request_id(self, caller: Caller | None) -> str:
        return new_request_id(self._key, self.endpoint, who_of(caller))

    def owns(self, request_id: str, caller: Caller) -> bool:
        """Whether ``request_id`` is this endpoint's and was given to this caller."""
        signed = verify_request_id(self._key, self.endpoint, request_id)
        return signed is not None and hmac.compare_digest(signed.who, who_of(caller))

    # -- the request path: decide and append ----------------------------------------------

    def keep(
        self,
        request_id: str,
        caller: Caller,
        route: str,
        body: bytes,
        status: int,
        output: bytes | None,
        model_version_id: int,
        model_label: str,
    ) -> bool:
        """Spool the call if it is sampled; never raises (capture must not fail a call)."""
        settings = self.settings
        if settings is None or not caller.capture or status >= 400:
            return False
        config = settings.config
        if config.rate <= 0 or (config.rate < 1 and random.random() >= config.rate):
            return False
        line: dict[str, Any] = {
            "request_id": request_id,
            "time": datetime.now(UTC).isoformat(),
            "consumer_id": caller.consumer_id,
            "consumer_name": caller.name,
            "model_version_id": model_version_id,
            "model_label": model_label,
            "route": route,
            "status": status,
        }
        if config.inputs:
            line["input_raw"] = body.decode("utf-8", "replace")
        if config.outputs and output is not None:
            line["output_raw"] = output.decode("utf-8", "replace")
        if config.redact:
            line["redact"] = list(config.redact)
        try:
            return self.spool.append("capture", line)
        except Exception:
            log.warning("could not spool a captured call", exc_info=True)
            return False

    def dropped_untold(self) -> int:
        """Calls dropped (spool full) that the control plane has not been told of."""
        return self.spool.dropped - self._dropped_told

    def told(self, dropped: int) -> None:
        with self._lock:
            self._dropped_told += dropped

    @property
    def pending(self) -> int:
        return max(0, self.spool.appended - self.spool.shipped)

    def flush(self) -> None:
        self.spool.flush()

    def close(self) -> None:
        try:
            self.spool.close()
        finally:
            if self._sidecar is not None:
                self._sidecar.stop()


class CaptureShipper:
    """Finishes spooled calls (parsed, redacted, large strings as blobs), stores them as batch
    objects and ships their index rows: the spool's thread's work, or the sidecar's."""

    def __init__(
        self, endpoint: str, workspace_id: int, artifacts: str, ship_index: ShipIndex
    ) -> None:
        self.endpoint = endpoint
        self._workspace_id = workspace_id
        self._artifacts = artifacts
        self._store: ArtifactStore | None = None
        self._ship_index = ship_index

    def ship(self, endpoint: str, items: list[dict[str, Any]]) -> None:
        """One batch object per consumer (erasing a consumer removes whole objects), written
        before the index rows that point into it are shipped."""
        by_consumer: dict[int | None, list[_Finished]] = {}
        for n, item in enumerate(of_kind(items, "capture")):
            by_consumer.setdefault(item.get("consumer_id"), []).append(self._finish(item))
            if n % YIELD_EVERY == YIELD_EVERY - 1:
                time.sleep(0)  # let the request path have the GIL between slices
        index: list[dict[str, Any]] = []
        for finished in by_consumer.values():
            info = self.store.write_blob(
                self._workspace_id, [b"".join(f.line for f in finished)], max_bytes=BATCH_MAX_BYTES
            )
            index += [
                {
                    **f.header,
                    "object": info.sha256,
                    "line": i,
                    "size": len(f.line),
                    "has_inputs": f.has_inputs,
                    "has_outputs": f.has_outputs,
                    "blobs": f.blobs,
                }
                for i, f in enumerate(finished)
            ]
        # Plain rows (CapturedIn's fields), checked by the control plane: validating them here
        # too cost more than preparing them. Shipped in bodies it takes (see server.limits).
        chunk: list[dict[str, Any]] = []
        size = 0
        for row in index:
            chunk.append(row)
            size += INDEX_ROW_BYTES + 66 * len(row["blobs"])
            if len(chunk) >= INDEX_CHUNK or size >= INDEX_CHUNK_BYTES:
                self._ship_index(chunk)
                chunk, size = [], 0
        if chunk:
            self._ship_index(chunk)

    @property
    def store(self) -> ArtifactStore:
        if self._store is None:
            self._store = ArtifactStore(self._artifacts)
        return self._store

    def _finish(self, item: dict[str, Any]) -> _Finished:
        """A spooled line as stored (parsed, redacted, large strings as blobs) and the blobs
        it refers to. A body or answer with nothing to redact, no string long enough to be a
        blob and no "$" key is stored as the JSON text it was (it parsed before the call was
        answered), without parsing it again."""
        fields = item.get("redact") or []
        header = {k: item[k] for k in HEADER_FIELDS}
        parts = [json.dumps({**header, "model_label": item["model_label"]}, separators=(",", ":"))]
        parts[0] = parts[0][:-1]
        blobs: list[str] = []
        for raw, name in (("input_raw", "input"), ("output_raw", "output")):
            if raw not in item:
                continue
            text: str = item[raw]
            if fields or not _plain_json(text):
                value = self._blobs(redact(_parse(text), fields), blobs)
                text = json.dumps(value, separators=(",", ":"))
            parts.append(f',"{name}":{text}')
        parts.append("}\n")
        return _Finished(
            "".join(parts).encode(),
            header,
            "input_raw" in item,
            "output_raw" in item,
            blobs,
        )

    def _blobs(self, value: Any, written: list[str]) -> Any:
        if isinstance(value, str) and len(value) > BLOB_MIN:
            data = value.encode()
            info = self.store.write_blob(self._workspace_id, [data], max_bytes=BATCH_MAX_BYTES)
            if info.sha256 not in written:
                written.append(info.sha256)
            return {"$blob": info.sha256, "size": info.size}
        if isinstance(value, dict):
            return {
                (f"${k}" if k.startswith("$") else k): self._blobs(v, written)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self._blobs(v, written) for v in value]
        return value
