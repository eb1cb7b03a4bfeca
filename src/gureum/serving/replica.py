"""A replica's work outside Ray: load the version, check callers, meter, talk to the control plane.

Kept free of Ray Serve so that it is tested in-process; serving.deployment wraps it.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from pydantic import ValidationError

from gureum.compute.work import fetch
from gureum.recipes.base import Predictor
from gureum.recipes.specs import serving_of, spec_of
from gureum.schemas.capture import FeedbackBody
from gureum.schemas.metering import (
    OUTPUT_CHARS,
    AccessSnapshot,
    LeaseGranted,
    LeaseRequest,
    ReplicaGauges,
    UsageBatch,
)
from gureum.serving.access import AccessTable, Caller, Denied, NeedLease, split_bearer
from gureum.serving.capture import Capturer
from gureum.serving.idempotency import (
    MAX_REQUEST_KEY,
    ReplayCache,
    Stored,
    body_hash,
    call_id,
)
from gureum.serving.sidecar import SidecarConfig
from gureum.serving.spec import ModelRef, ReplicaSpec
from gureum.serving.spool import UsageSpool, of_kind
from gureum.serving.units import error_body, unit_of
from gureum.serving.validation import (
    ValidationFailed,
    ValidationReport,
    ValidationSpec,
    mark_passed,
    passed_here,
    validate,
)
from gureum.storage.store import ArtifactStore

# Under "ray.serve" so that it lands in the replica's log file next to Ray Serve's own lines.
log = logging.getLogger("ray.serve.gureum")
REFRESH_S = 2.0
# A replica started from zero answers the request that Ray Serve's proxy held for it as soon as
# the proxy learns it is up; a first request later than this after start-up came on its own.
COLD_WINDOW_S = 30.0
UNKNOWN_KEY_REFRESH_S = 0.5
REFRESH_POLL_S = 0.01
# Leases a request waits for before a 503 (others waiting with it may take a block first).
LEASE_TRIES = 4
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
    """A usage record's id: for a call with an Idempotency-Key, the call's name (key id,
    Idempotency-Key, body hash) then a part of its own. Each computation is one record, billed:
    a retry that is computed again (on another replica) is billed again, never folded into the
    first; only a replay from the replica's cache is not computed, and not recorded."""
    if caller.request_key is None or caller.request_hash is None:
        return uuid.uuid4().hex
    name = call_id(caller.key_id, caller.request_key, caller.request_hash)
    return name[:20] + uuid.uuid4().hex[:12]


class ControlPlane:
    """The replica's calls to the control plane, authenticated with the endpoint's token."""

    def __init__(self, url: str, token: str, endpoint: str) -> None:
        self.base_url = f"{url.rstrip('/')}/v1/internal/endpoints/{endpoint}"
        self.token = token
        self._http = httpx.Client(
            base_url=self.base_url, headers={"authorization": f"Bearer {token}"}, timeout=10.0
        )

    def access(self) -> AccessSnapshot:
        r = self._http.get("/access")
        r.raise_for_status()
        return AccessSnapshot.model_validate(r.json())

    def lease(self, consumer_id: int, release: int = 0) -> LeaseGranted:
        body = LeaseRequest(consumer_id=consumer_id, release=release)
        r = self._http.post(
            "/lease", content=body.model_dump_json(), headers={"content-type": JSON}
        )
        r.raise_for_status()
        return LeaseGranted.model_validate(r.json())

    def ship(self, batch: UsageBatch) -> None:
        r = self._http.post(
            "/usage", content=batch.model_dump_json(), headers={"content-type": JSON}
        )
        r.raise_for_status()

    def ship_captured(self, rows: list[dict[str, Any]]) -> None:
        """Index rows of captured calls (CaptureBatch's records; the server validates them)."""
        body = json.dumps({"records": rows}, separators=(",", ":"))
        r = self._http.post("/captured", content=body, headers={"content-type": JSON})
        r.raise_for_status()

    def report_validation(self, report: ValidationReport) -> None:
        r = self._http.post(
            "/validation", content=report.model_dump_json(), headers={"content-type": JSON}
        )
        r.raise_for_status()

    def close(self) -> None:
        self._http.close()


def model_root(spec: ReplicaSpec, model: ModelRef) -> Path:
    """Where a node keeps a version's files (fetched once, shared by its replicas)."""
    return Path(spec.spool_dir).parent / "models" / f"v{model.version_id}"


def load_predictor(spec: ReplicaSpec, model: ModelRef) -> Predictor:
    """Fetch the version's files once per node (a cache by version id) and load them."""
    recipe = spec_of(model.recipe)
    if recipe is None or recipe.serving is None:
        raise ValueError(
            f"{model.label} has no recipe that serves it (recipe {model.recipe!r}); import it "
            "in a served format or register it with a predictor"
        )
    root = model_root(spec, model)
    marker = root / ".complete"
    if not marker.exists():
        tmp = root.with_name(f"{root.name}.{uuid.uuid4().hex[:8]}.tmp")
        fetch(ArtifactStore(spec.artifacts), spec.workspace_id, model.files, tmp)
        (tmp / ".complete").write_text("")
        try:
            tmp.rename(root)
        except OSError:  # another replica on this node got there first
            shutil.rmtree(tmp, ignore_errors=True)
    predictor: Predictor = recipe.load_implementation().load(root)
    return predictor


def load_validated(
    spec: ReplicaSpec,
    model: ModelRef,
    validation: ValidationSpec | None,
    control: ControlPlane,
    where: str = "",
) -> Predictor:
    """Load the version; with a validation for it, smoke-test it before it serves and report
    the result to the control plane. Raises ``ValidationFailed`` (the replica must not take
    traffic) when it fails, whether or not the report got through. A deploy's test that a
    replica on this node already passed is not run again (scale-out, a replica replaced)."""
    if validation is None or validation.version_id != model.version_id:
        return load_predictor(spec, model)
    if passed_here(model_root(spec, model), validation):
        return load_predictor(spec, model)
    serving = serving_of(model.recipe)
    predictor, report = validate(
        lambda: load_predictor(spec, model),
        validation,
        output_schema=serving.output_schema if serving else None,
        count_units=serving.count if serving else None,
        where=where,
    )
    try:
        control.report_validation(report)
    except (httpx.HTTPError, ValueError):
        log.warning("could not report validation %s", validation.id, exc_info=True)
    if predictor is None or not report.passed:
        raise ValidationFailed(report)
    mark_passed(model_root(spec, model), validation)
    log.info("%s passed validation: %s", model.label, report.summary())
    return predictor  # type: ignore[no-any-return]


class ReplicaCore:
    def __init__(
        self,
        spec: ReplicaSpec,
        model: ModelRef,
        predictor: Predictor | None = None,
        control: ControlPlane | None = None,
        started_from_zero_at: float | None = None,
        validation: ValidationSpec | None = None,
    ) -> None:
        self.spec = spec
        self.model = model
        self.control = control or ControlPlane(spec.control_url, spec.token, spec.endpoint)
        self.replica = f"{spec.endpoint}-{spec.role}-{uuid.uuid4().hex[:6]}"
        try:
            self.predictor = predictor or load_validated(
                spec, model, validation, self.control, self.replica
            )
        except Exception:
            self.control.close()
            raise
        self.unit = unit_of(model.recipe, self.predictor)  # a user's predictor names its own
        self.access = AccessTable()
        self.replay = ReplayCache()
        self._refresh_task: asyncio.Future[bool] | None = None
        self._leasing: dict[int, asyncio.Future[bool]] = {}
        self._closed = False
        self.spool = UsageSpool(Path(spec.spool_dir), spec.endpoint, self._ship)
        self.capture = Capturer(
            Path(spec.spool_dir),
            spec.endpoint,
            spec.workspace_id,
            spec.artifacts,
            self.control.ship_captured,
            # Its own process ships (the replica's CPU serves requests); a control plane
            # handed in (tests) is called in-process.
            sidecar=None if control else SidecarConfig(self.control.base_url, self.control.token),
        )
        self.in_flight = 0
        self.batch_sizes: Counter[int] = Counter()
        self._last_refresh = 0.0  # when the latest fetch of the key table began
        self._refreshed_from = 0.0  # when the latest fetch that has ended began
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
        self.capture.start()
        self._refresher = threading.Thread(target=self._refresh_loop, name="access", daemon=True)
        self._refresher.start()

    def swap(self, model: ModelRef, validation: ValidationSpec | None = None) -> None:
        """Load another version (validated first when asked) and answer with it from the
        next request on; on a failure the loaded one keeps answering."""
        if model == self.model:
            return
        predictor = load_validated(self.spec, model, validation, self.control, self.replica)
        self.model, self.predictor, self.unit = model, predictor, unit_of(model.recipe, predictor)

    # -- access ---------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Fetch the key table (blocking: a thread's work, never the event loop's)."""
        with self._refresh_lock:
            started = self._last_refresh = time.monotonic()
            try:
                snapshot = self.control.access()
                self.access.load(snapshot, at=started)
                self.capture.configure(snapshot.capture)
                return True
            except (httpx.HTTPError, ValueError):
                log.warning("could not fetch the endpoint's keys", exc_info=True)
                return False
            finally:
                self._refreshed_from = started

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_S):
            self.refresh()
            self.capture.check()

    def authorize(self, authorization: str | None) -> Caller | Reply | NeedLease:
        """The in-memory check alone (no I/O): see ``admit``."""
        if not self.access.loaded:
            return error_reply(503, "starting", "the endpoint is starting; retry shortly", 1)
        result = self.access.check(authorization)
        if isinstance(result, Denied):
            return error_reply(result.status, result.code, result.message, result.retry_after)
        return result

    async def admit(self, authorization: str | None) -> Caller | Reply:
        """Check a caller. A key the table does not know may be newer than the table: the
        table is fetched again (in a thread, one fetch at a time, at most one started every
        UNKNOWN_KEY_REFRESH_S) before the 401, and a key still unknown then is remembered as
        such for a while, so a flood of made-up keys costs no more fetches. If that fetch
        failed, the key can be neither confirmed nor refused: 503 with Retry-After (the SDK
        retries), never a 401 for a key that may be valid. A consumer whose leased block of
        its quota is spent waits for the next block (in a thread)."""
        arrived = time.monotonic()
        parts = split_bearer(authorization)
        if (
            parts is not None
            and self.access.loaded
            and not self.access.knows(parts[0])
            and not self.access.known_unknown(parts[0])
        ):
            await self._refreshed_since(arrived)
            if not self.access.knows(parts[0]):
                if self.access.loaded_at < arrived:  # the fetch after the call came failed
                    message = "the endpoint cannot confirm this key with its control plane; retry"
                    return error_reply(503, "keys_unconfirmed", message, 1)
                self.access.mark_unknown(parts[0])
        result = self.authorize(authorization)
        for _ in range(LEASE_TRIES):
            if not isinstance(result, NeedLease) or not await self._lease(result.consumer_id):
                break
            result = self.authorize(authorization)  # others waiting may have taken the block
        if isinstance(result, NeedLease):  # the control plane did not answer
            message = "the endpoint cannot reach its control plane for your quota; retry"
            return error_reply(503, "quota_unavailable", message, 1)
        cid = result.consumer_id if isinstance(result, Caller) and result.leased else None
        if cid is not None and self.access.running_low(cid):
            self._start_lease(cid)  # the next block, ahead of need
        return result

    async def _refreshed_since(self, since: float) -> None:
        """Until a fetch of the table that began at or after ``since`` has ended (ours or the
        background loop's: one that began earlier may predate the key)."""
        while self._refreshed_from < since:
            task = self._refresh_task
            if task is not None and not task.done():
                await asyncio.shield(task)
            elif self._last_refresh >= since:  # the background loop's fetch, under way
                await asyncio.sleep(REFRESH_POLL_S)
            elif (wait := UNKNOWN_KEY_REFRESH_S - (time.monotonic() - self._last_refresh)) > 0:
                await asyncio.sleep(wait)
            else:
                self._refresh_task = asyncio.ensure_future(asyncio.to_thread(self.refresh))

    def _start_lease(self, consumer_id: int) -> asyncio.Future[bool]:
        task = self._leasing.get(consumer_id)
        if task is None or task.done():
            task = self._leasing[consumer_id] = asyncio.ensure_future(
                asyncio.to_thread(self._fetch_lease, consumer_id)
            )
        return task

    async def _lease(self, consumer_id: int) -> bool:
        """Wait for the consumer's next block (one lease in flight per consumer); False if the
        control plane did not answer."""
        return await asyncio.shield(self._start_lease(consumer_id))

    def _fetch_lease(self, consumer_id: int) -> bool:
        try:
            granted = self.control.lease(consumer_id)
        except (httpx.HTTPError, ValueError):
            log.warning("could not lease quota for consumer %s", consumer_id, exc_info=True)
            return False
        self.access.granted(consumer_id, granted.granted)
        return True

    def _release_leases(self) -> None:
        """Give back leased calls not served (shutdown), so that they are not lost."""
        for consumer_id, left in self.access.unused().items():
            try:
                self.control.lease(consumer_id, release=left)
            except (httpx.HTTPError, ValueError):
                log.warning("could not give back %s leased calls", left, exc_info=True)

    # -- idempotency ----------------------------------------------------------------------

    def idempotent(
        self, caller: Caller, request_key: str | None, body: bytes | None
    ) -> Caller | Reply:
        """A call with an Idempotency-Key: replayed, refused, or to be computed (the caller is
        returned with the key and the body's hash, and the call is marked in progress)."""
        if request_key is None:
            return caller
        if not 0 < len(request_key) <= MAX_REQUEST_KEY:
            self.access.give_back(caller)
            message = f"Idempotency-Key must be 1 to {MAX_REQUEST_KEY} characters"
            return error_reply(400, "bad_request", message)
        if body is None:  # refused before it was read (too large): nothing to remember
            return dataclasses.replace(caller, request_key=request_key)
        digest = body_hash(body)
        outcome = self.replay.begin(caller.key_id, request_key, digest)
        if outcome == "new":
            return dataclasses.replace(caller, request_key=request_key, request_hash=digest)
        self.access.give_back(caller)  # not computed: not billed, no quota spent
        if isinstance(outcome, Stored):
            return Reply(outcome.status, outcome.body, dict(outcome.headers))
        if outcome == "conflict":
            message = (
                "this Idempotency-Key was used with another request body; "
                "use a new key for a new request"
            )
            return error_reply(422, "idempotency_key_reused", message)
        message = "a request with this Idempotency-Key is still being answered; retry shortly"
        return error_reply(409, "request_in_progress", message, 1)

    def remember(self, caller: Caller, reply: Reply) -> None:
        """Keep a computed answer for replay (only under its Idempotency-Key)."""
        if caller.request_key is not None and caller.request_hash is not None:
            stored = Stored(reply.status, reply.body, reply.headers)
            self.replay.finish(caller.key_id, caller.request_key, caller.request_hash, stored)

    # -- feedback -------------------------------------------------------------------------

    def feedback(self, caller: Caller, body: bytes) -> Reply:
        """A consumer's rating or correction of one of its own answers, by request id. An id
        this endpoint did not sign, or signed for another caller, is a 404 (the same answer
        whether it exists or not); a valid id whose call was not captured is accepted, so
        that nobody learns which calls were sampled. Never billed: the call goes back."""
        self.access.give_back(caller)
        try:
            given = FeedbackBody.model_validate_json(body)
        except ValidationError as e:
            problems = [
                {"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"]}
                for err in e.errors(include_url=False, include_input=False)
            ]
            data = error_body("bad_feedback", "the feedback is malformed", problems)
            return Reply(422, data, {"content-type": JSON})
        if not self.capture.owns(given.request_id, caller):
            message = "no request with this id was answered for your key on this endpoint"
            return error_reply(404, "request_not_found", message)
        record = {
            "id": uuid.uuid4().hex,
            "time": datetime.now(UTC).isoformat(),
            "consumer_id": caller.consumer_id,
            "consumer_name": caller.name,
            **given.model_dump(),
        }
        self.spool.append("feedback", record)
        return Reply(
            202,
            json.dumps({"accepted": True, "request_id": given.request_id}).encode(),
            {"content-type": JSON},
        )

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
        self.access.served(caller, status)
        if caller.request_key is not None and caller.request_hash is not None:
            # Computed: a repeat now is a replay if ``remember`` keeps the answer, else billed.
            answer = None if status < 400 else Stored(status, b"", {})
            self.replay.finish(caller.key_id, caller.request_key, caller.request_hash, answer)
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

    def gauges(self, capture_dropped: int = 0) -> ReplicaGauges:
        sizes, self.batch_sizes = dict(self.batch_sizes), Counter()
        engine = getattr(self.predictor, "engine", None)
        return ReplicaGauges(
            replica=self.replica,
            role=self.spec.role,
            in_flight=self.in_flight,
            batch_sizes=sizes,
            cold_start_ms=self.cold_start_ms,
            engine=engine if isinstance(engine, str) else None,
            capture_dropped=capture_dropped,
            capture_pending=self.capture.pending,
        )

    def _ship(self, endpoint: str, items: list[dict[str, Any]]) -> None:
        dropped = self.capture.dropped_untold()
        batch = UsageBatch.model_validate(
            {
                "records": of_kind(items, "usage"),
                "shadow": of_kind(items, "shadow"),
                "feedback": of_kind(items, "feedback"),
                "gauges": [self.gauges(dropped).model_dump()],
            }
        )
        self.control.ship(batch)
        self.capture.told(dropped)

    def close(self) -> None:
        if self._closed:  # Ray Serve's shutdown and the garbage collector may both call it
            return
        self._closed = True
        self._stop.set()
        try:
            self.spool.close()
        except Exception:
            log.warning("usage left in the spool at shutdown", exc_info=True)
        try:
            self.capture.close()
        except Exception:
            log.warning("captured calls left in the spool at shutdown", exc_info=True)
        self._release_leases()
        self.control.close()
