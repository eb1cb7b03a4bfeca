"""A replica's work outside Ray: load the version, check callers, meter, talk to the control plane.

Kept free of Ray Serve so that it is tested in-process; serving.deployment wraps it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from gureum.compute.work import fetch
from gureum.recipes.base import Predictor
from gureum.recipes.registry import get_recipe
from gureum.schemas.metering import OUTPUT_CHARS, AccessSnapshot, ReplicaGauges, UsageBatch
from gureum.serving.access import AccessTable, Caller, Denied, split_bearer
from gureum.serving.spec import ModelRef, ReplicaSpec
from gureum.serving.spool import UsageSpool
from gureum.serving.units import error_body, unit_of
from gureum.storage.store import ArtifactStore

# Under "ray.serve" so that it lands in the replica's log file next to Ray Serve's own lines.
log = logging.getLogger("ray.serve.gureum")
REFRESH_S = 2.0
# A replica started from zero answers the request that Ray Serve's proxy held for it as soon as
# the proxy learns it is up; a first request later than this after start-up came on its own.
COLD_WINDOW_S = 30.0
UNKNOWN_KEY_REFRESH_S = 0.5
JSON = "application/json"


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    units: float = 0.0


def error_reply(status: int, code: str, message: str, retry_after: float | None = None) -> Reply:
    headers = {"content-type": JSON}
    if retry_after is not None:
        headers["retry-after"] = str(max(1, int(retry_after + 0.999)))
    return Reply(status, error_body(code, message), headers)


def json_reply(
    data: dict[str, Any], units: float = 0.0, headers: dict[str, str] | None = None
) -> Reply:
    body = json.dumps(data, separators=(",", ":")).encode()
    return Reply(200, body, {"content-type": JSON, **(headers or {})}, units)


def usage_id(caller: Caller) -> str:
    """A usage record's id. A request sent again with the same Idempotency-Key (a client's
    retry after its connection was cut) gets the same id, and the ledger keeps one of them."""
    if caller.request_key is None:
        return uuid.uuid4().hex
    return hashlib.sha256(f"{caller.key_id}\n{caller.request_key}".encode()).hexdigest()[:32]


class ControlPlane:
    """The replica's two calls to the control plane, authenticated with the endpoint's token."""

    def __init__(self, url: str, token: str, endpoint: str) -> None:
        self._http = httpx.Client(
            base_url=f"{url.rstrip('/')}/v1/internal/endpoints/{endpoint}",
            headers={"authorization": f"Bearer {token}"},
            timeout=10.0,
        )

    def access(self) -> AccessSnapshot:
        r = self._http.get("/access")
        r.raise_for_status()
        return AccessSnapshot.model_validate(r.json())

    def ship(self, batch: UsageBatch) -> None:
        r = self._http.post(
            "/usage", content=batch.model_dump_json(), headers={"content-type": JSON}
        )
        r.raise_for_status()

    def close(self) -> None:
        self._http.close()


def load_predictor(spec: ReplicaSpec, model: ModelRef) -> Predictor:
    """Fetch the version's files once per node (a cache by version id) and load them."""
    if model.recipe is None or model.recipe == "script":
        raise ValueError(
            f"{model.label} was not made by a built-in recipe; only built-in recipes can be served"
        )
    root = Path(spec.spool_dir).parent / "models" / f"v{model.version_id}"
    marker = root / ".complete"
    if not marker.exists():
        tmp = root.with_name(f"{root.name}.{uuid.uuid4().hex[:8]}.tmp")
        fetch(ArtifactStore(spec.artifacts), spec.workspace_id, model.files, tmp)
        (tmp / ".complete").write_text("")
        try:
            tmp.rename(root)
        except OSError:  # another replica on this node got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return get_recipe(model.recipe).load(root)


class ReplicaCore:
    def __init__(
        self,
        spec: ReplicaSpec,
        model: ModelRef,
        predictor: Predictor | None = None,
        control: ControlPlane | None = None,
        started_from_zero_at: float | None = None,
    ) -> None:
        self.spec = spec
        self.model = model
        self.unit = unit_of(model.recipe)
        self.control = control or ControlPlane(spec.control_url, spec.token, spec.endpoint)
        self.predictor = predictor or load_predictor(spec, model)
        self.access = AccessTable()
        self.spool = UsageSpool(Path(spec.spool_dir), spec.endpoint, self._ship)
        self.replica = f"{spec.endpoint}-{spec.role}-{uuid.uuid4().hex[:6]}"
        self.in_flight = 0
        self.batch_sizes: Counter[int] = Counter()
        self._last_refresh = 0.0
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        # How long the last request that waited for a replica to start waited (held by Ray
        # Serve's proxy or by our router; see serving.deployment).
        self.cold_start_ms: float | None = None
        self.ready_at = time.monotonic()
        # Wall-clock time this replica began starting, if no replica of its deployment was
        # running then: its first request is the one that woke the endpoint up.
        self.started_from_zero_at = started_from_zero_at
        self._first_served = False
        self.refresh()
        self.spool.start()
        self._refresher = threading.Thread(target=self._refresh_loop, name="access", daemon=True)
        self._refresher.start()

    def swap(self, model: ModelRef) -> None:
        """Load another version and answer with it from the next request on."""
        if model == self.model:
            return
        predictor = load_predictor(self.spec, model)
        self.model, self.predictor, self.unit = model, predictor, unit_of(model.recipe)

    # -- access ---------------------------------------------------------------------------

    def refresh(self) -> bool:
        with self._refresh_lock:
            self._last_refresh = time.monotonic()
            try:
                self.access.load(self.control.access())
                return True
            except (httpx.HTTPError, ValueError):
                log.warning("could not fetch the endpoint's keys", exc_info=True)
                return False

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_S):
            self.refresh()

    def authorize(self, authorization: str | None) -> Caller | Reply:
        parts = split_bearer(authorization)
        # A key made a moment ago: look again, at most every UNKNOWN_KEY_REFRESH_S.
        if (
            parts is not None
            and not self.access.knows(parts[0])
            and time.monotonic() - self._last_refresh > UNKNOWN_KEY_REFRESH_S
        ):
            self.refresh()
        if not self.access.loaded:
            return error_reply(503, "starting", "the endpoint is starting; retry shortly", 1)
        result = self.access.check(authorization)
        if isinstance(result, Denied):
            return error_reply(result.status, result.code, result.message, result.retry_after)
        return result

    def refresh_wait(self, authorization: str | None, since: float) -> float | None:
        """After a 401 for a key the table does not know: None if the answer stands (a malformed
        or known key, or a refresh began at or after ``since``, the request's arrival); else the
        seconds until ``authorize`` may look again. A key made just after the last refresh is
        then let in, not refused, while unknown keys still cost one lookup per interval."""
        parts = split_bearer(authorization)
        if parts is None or self.access.knows(parts[0]) or self._last_refresh >= since:
            return None
        return max(0.0, UNKNOWN_KEY_REFRESH_S - (time.monotonic() - self._last_refresh))

    # -- metering -------------------------------------------------------------------------

    def first_request_waited(self) -> float | None:
        """Started from zero, a replica's first request waited for it in Ray Serve's proxy,
        which holds requests while no replica is up: how long, from the replica's start (the
        autoscaler's decision before that is not seen here, so this is a lower bound)."""
        if self._first_served:
            return None
        self._first_served = True
        since = self.started_from_zero_at
        if since is None or time.monotonic() - self.ready_at > COLD_WINDOW_S:
            return None
        return max(0.0, time.time() - since) * 1000

    def record(
        self,
        caller: Caller,
        route: str,
        status: int,
        units: float,
        latency_ms: float,
        cold: bool = False,
        role: str | None = None,
    ) -> None:
        self.access.served(caller)
        self.spool.append(
            "usage",
            {
                "id": usage_id(caller),
                "time": datetime.now(UTC).isoformat(),
                "consumer_id": caller.consumer_id,
                "consumer_name": caller.name,
                "model_version_id": self.model.version_id,
                "model_label": self.model.label,
                "role": role or ("canary" if self.spec.role == "canary" else "primary"),
                "route": route,
                "status": status,
                "units": units if status < 400 else 0.0,
                "unit": self.unit,
                "latency_ms": round(latency_ms, 3),
                "cold_start": cold,
            },
        )

    def record_shadow(
        self, reply: Reply, latency_ms: float, primary: dict[str, Any], output: bytes
    ) -> None:
        self.spool.append(
            "shadow",
            {
                "id": uuid.uuid4().hex,
                "time": datetime.now(UTC).isoformat(),
                "model_label": self.model.label,
                "status": reply.status,
                "latency_ms": round(latency_ms, 3),
                "primary_status": primary["status"],
                "primary_latency_ms": primary["latency_ms"],
                "output": output.decode(errors="replace")[:OUTPUT_CHARS],
                "primary_output": str(primary["output"])[:OUTPUT_CHARS],
            },
        )

    def gauges(self) -> ReplicaGauges:
        sizes, self.batch_sizes = dict(self.batch_sizes), Counter()
        return ReplicaGauges(
            replica=self.replica,
            role=self.spec.role,
            in_flight=self.in_flight,
            batch_sizes=sizes,
            cold_start_ms=self.cold_start_ms,
        )

    def _ship(
        self, endpoint: str, records: list[dict[str, Any]], shadow: list[dict[str, Any]]
    ) -> None:
        batch = UsageBatch.model_validate(
            {"records": records, "shadow": shadow, "gauges": [self.gauges().model_dump()]}
        )
        self.control.ship(batch)

    def close(self) -> None:
        self._stop.set()
        try:
            self.spool.close()
        except Exception:
            log.warning("usage left in the spool at shutdown", exc_info=True)
        self.control.close()
