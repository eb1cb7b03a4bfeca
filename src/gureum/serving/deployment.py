"""The Ray Serve deployment of one model version: the HTTP ingress of an endpoint (primary),
or a canary/shadow reached from the primary through a deployment handle.

The primary does everything in-process (check the key, limit, predict, meter), so a request
costs one hop through Ray Serve's proxy and nothing more; only canary and shadow traffic pays
a handle call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import psutil
import torch
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gureum.recipes.base import BadInput, OverBudget
from gureum.recipes.specs import serving_of
from gureum.serving import oip, openai_compat
from gureum.serving.access import Caller
from gureum.serving.http_replies import failure, read_body, request_id, to_response
from gureum.serving.openapi_dataplane import OPENAPI, served
from gureum.serving.replica import ReplicaCore, Reply, error_reply, json_reply
from gureum.serving.spec import ReplicaSpec, TrafficConfig
from gureum.serving.units import (
    ModelFault,
    PayloadError,
    count_units,
    parse_predict_body,
)

# Under "ray.serve" so that it lands in the replica's log file next to Ray Serve's own lines.
log = logging.getLogger("ray.serve.gureum")
ROUTES = ("predict", "chat/completions", "completions")
FEEDBACK = "feedback"
# Which version a canary's answer came from, from the canary to the primary only.
VERSION_HEADER = "x-gureum-version-id"
MODELS = openai_compat.MODELS
# How long the router holds a request for an endpoint it has no bound for yet.
DEFAULT_BOUND_S = 120.0
# A worker process older than this when the replica starts was an idle one Ray reused: its
# start is not the replica's.
REUSED_PROCESS_S = 60.0
# A request the router held this long waited for a replica to start; a shorter hold only
# bridged the moment before HAProxy learned a new route.
HELD_COLD_MS = 1000.0
# A model call expected to take less than this runs on the replica's event loop, not a thread.
INLINE_PREDICT_MS = 5.0
# How often an open stream looks its key up again: a key revoked mid-stream stops it.
KEY_RECHECK_S = 5.0


def _speaks_openai(recipe: str | None) -> bool:
    serving = serving_of(recipe)
    return bool(serving and serving.openai)


def state_name(state: object) -> str:
    """Ray Serve's status enums by name ("RUNNING"), whatever their str() gives."""
    return str(getattr(state, "value", state))


def _started_from_zero() -> float | None:
    """When this replica began starting, if none of its deployment was running then (so Ray
    Serve started it for a request it holds): its worker process's start, or now."""
    try:
        context = serve.get_replica_context()
        app = serve.status().applications.get(context.app_name)
        deployment = app.deployments.get(context.deployment) if app else None
        states = deployment.replica_states if deployment else {}
        running = sum(n for s, n in states.items() if state_name(s) == "RUNNING")
        # Scaling (from zero too) leaves the application RUNNING; a deploy makes it DEPLOYING.
        scaling = app is not None and state_name(app.status) == "RUNNING"
    except Exception:  # outside a replica, or the controller did not answer: not known
        return None
    if running or not scaling:  # scaled out, or the deploy's own first replica
        return None
    now = time.time()
    created = float(psutil.Process().create_time())
    return created if now - created < REUSED_PROCESS_S else now


def _route(path: str, endpoint: str) -> str:
    prefix = f"/v1/endpoints/{endpoint}/"
    return path[len(prefix) :].strip("/") if path.startswith(prefix) else ""


class ModelServer:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = ReplicaSpec.model_validate(spec)
        torch.set_num_threads(max(1, self.spec.threads))
        self._from_zero_at = _started_from_zero() if self.spec.scales_to_zero else None
        self._core: ReplicaCore | None = None
        self._handles: dict[str, DeploymentHandle[Any]] = {}
        # A moving average of the model's time per call; unknown (a thread) until measured.
        self._predict_ms = float("inf")
        # Open server-sent-event streams per key id: capped by max_streams_per_key.
        self._streams: Counter[str] = Counter()
        self._loaded_at = int(time.time())

    @property
    def core(self) -> ReplicaCore:
        assert self._core is not None, "Ray Serve calls reconfigure before any request"
        return self._core

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Ray Serve calls it before the first request and on every change of user_config."""
        traffic = TrafficConfig.model_validate(config)
        if self._core is None:
            self._core = ReplicaCore(
                self.spec,
                traffic.model,
                started_from_zero_at=self._from_zero_at,
                validation=traffic.validation,
            )
        elif traffic.model != self._core.model:
            self._core.swap(traffic.model, traffic.validation)
            self._predict_ms = float("inf")  # another model: its time is not known yet
        self.traffic = traffic
        batched: Any = self._batched  # serve.batch's wrapper, typed as the plain method
        batched.set_max_batch_size(self.traffic.max_batch_size)
        batched.set_batch_wait_timeout_s(self.traffic.max_wait_ms / 1000)

    def check_health(self) -> None:
        """Ray Serve restarts a replica whose check raises."""

    def __del__(self) -> None:
        core = getattr(self, "_core", None)
        if core is not None:
            core.close()

    # -- HTTP ingress (primary) -------------------------------------------------------------

    async def __call__(self, request: Request) -> Response:
        route = _route(request.url.path, self.core.spec.endpoint)
        body = await read_body(request, self.core.spec.max_request_bytes)
        return await self._ingress(route, request.method, request.headers, body, None)

    async def http(
        self, path: str, method: str, headers: dict[str, str], body: bytes, waited_from: float
    ) -> tuple[int, bytes, dict[str, str]]:
        """A request the router held while this endpoint had no replica (scale from zero, a
        rollover or a replaced replica): answered as if it had come in directly."""
        route = _route(path, self.core.spec.endpoint)
        limit = self.core.spec.max_request_bytes
        checked: bytes | Reply = body
        if len(body) > limit:
            checked = error_reply(
                413, "payload_too_large", f"the request body is over {limit} bytes"
            )
        response = await self._ingress(route, method, headers, checked, waited_from)
        data = (
            response.body if not isinstance(response, StreamingResponse) else await _drain(response)
        )
        return response.status_code, bytes(data), dict(response.headers)

    async def _ingress(
        self,
        route: str,
        method: str,
        headers: Mapping[str, str],
        body: bytes | Reply,
        waited_from: float | None,
    ) -> Response:
        """Every answer carries a request id, signed for its caller once the key is known
        (consumers rate answers by it, see ReplicaCore.feedback)."""
        call = _Call(self.core.capture.request_id(None))
        response = await self._answer(call, route, method, headers, body, waited_from)
        response.headers.setdefault("x-request-id", call.rid)
        return response

    async def _answer(
        self,
        call: _Call,
        route: str,
        method: str,
        headers: Mapping[str, str],
        body: bytes | Reply,
        waited_from: float | None,
    ) -> Response:
        started = time.perf_counter()
        if route == MODELS or route.startswith(f"{MODELS}/"):
            return await self._models(route, method, headers)
        if route == OPENAPI:
            return await self._schema(method, headers)
        if oip.is_info(route):  # Open Inference Protocol health and metadata: not metered
            return to_response(await oip.info(self.core, route, method, headers))
        if route not in ROUTES and route != FEEDBACK and not oip.is_infer(route):
            message = (
                f"no route {route[:100]!r}; use one of: {', '.join(ROUTES)}, {FEEDBACK}, {MODELS}"
            )
            return to_response(error_reply(404, "not_found", message))
        if method != "POST":
            return to_response(error_reply(405, "method_not_allowed", "use POST"))
        caller = await self._authorize(headers.get("authorization"))
        if isinstance(caller, Reply):
            return to_response(caller)
        call.rid = self.core.capture.request_id(caller)
        if route == FEEDBACK:
            return to_response(
                body if isinstance(body, Reply) else self.core.feedback(caller, body)
            )
        request = body if isinstance(body, bytes) else None
        caller = self.core.idempotent(caller, headers.get("idempotency-key"), request)
        if isinstance(caller, Reply):  # a replay, or a reused or busy Idempotency-Key
            return to_response(caller)
        cold_ms = self.core.first_request_waited()
        if waited_from is not None:  # held by the router: a cold start if it really waited
            held = (time.time() - waited_from) * 1000
            if held >= HELD_COLD_MS:
                cold_ms = max(held, cold_ms or 0.0)
        if isinstance(body, Reply):
            self._meter(caller, route, body, started)
            return to_response(body)
        content_type = headers.get("content-type")
        if route in ROUTES[1:] and self._wants_stream(body):
            return self._stream(caller, route, body, content_type, started, call.rid)
        canary = self.traffic.canary_app
        model = self.core.model
        if (
            canary
            and self.traffic.canary_percent > 0
            and random.random() * 100 < self.traffic.canary_percent
        ):
            reply = await self._forward(canary, caller, route, body, content_type, call.rid)
            version_id = int(reply.headers.pop(VERSION_HEADER, -1))
        else:
            reply = await self._serve(route, body, content_type, call.rid)
            version_id = model.version_id
            if cold_ms is not None:
                reply.headers["x-gureum-cold-start"] = "1"
                reply.headers["x-gureum-cold-start-ms"] = f"{cold_ms:.0f}"
                self.core.cold_start_ms = cold_ms
            self._meter(caller, route, reply, started, cold_ms)
        label = reply.headers.get("x-gureum-model", model.label)
        self.core.capture.keep(
            call.rid, caller, route, body, reply.status, reply.body, version_id, label
        )
        self.core.remember(caller, reply)
        if self.traffic.shadow_app:
            self._mirror(self.traffic.shadow_app, route, body, content_type, reply, started)
        return to_response(reply)

    async def _models(self, route: str, method: str, headers: Mapping[str, str]) -> Response:
        """OpenAI's ``GET /models`` and ``GET /models/{id}``: the one model this endpoint
        serves (its label), so that ``client.models.list()`` works. Keyed and rate-limited
        like any call, not metered (no model runs)."""
        if method != "GET":
            return to_response(error_reply(405, "method_not_allowed", "use GET"))
        caller = await self._authorize(headers.get("authorization"))
        if isinstance(caller, Reply):
            return to_response(caller)
        self.core.access.give_back(caller)  # not metered: no call of a quota spent
        model = self.core.model
        if not _speaks_openai(model.recipe):
            return to_response(error_reply(404, "not_found", "models is served by text generators"))
        owner = self.core.spec.endpoint
        if route == MODELS:
            data = openai_compat.model_list(model.label, self._loaded_at, owner)
            return to_response(json_reply(data))
        wanted = route[len(MODELS) + 1 :]
        if wanted != model.label:
            message = f"this endpoint serves {model.label!r} only"
            return to_response(error_reply(404, "model_not_found", message))
        return to_response(
            json_reply(openai_compat.model_object(model.label, self._loaded_at, owner))
        )

    async def _schema(self, method: str, headers: Mapping[str, str]) -> Response:
        """This endpoint's OpenAPI schema, for valid keys only (it names the model): keyed
        and rate-limited like any call, not metered."""
        if method != "GET":
            return to_response(error_reply(405, "method_not_allowed", "use GET"))
        caller = await self._authorize(headers.get("authorization"))
        if isinstance(caller, Reply):
            return to_response(caller)
        self.core.access.give_back(caller)
        limit = self.traffic.max_batch_size * 64  # as _serve takes them
        body = served(self.core.spec.endpoint, self.core.model, self.core.predictor, limit)
        return Response(body, headers={"content-type": "application/json"})

    async def _authorize(self, authorization: str | None) -> Caller | Reply:
        return await self.core.admit(authorization)

    # -- handle calls (canary, shadow) ------------------------------------------------------

    async def internal(
        self,
        caller: dict[str, Any],
        route: str,
        body: bytes,
        content_type: str | None,
        rid: str | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        """A request the primary sent to this canary: answered and metered here (the primary
        captures it, told which version answered)."""
        started = time.perf_counter()
        reply = await self._serve(route, body, content_type, rid)
        self._meter(Caller(**caller), route, reply, started)
        return (
            reply.status,
            reply.body,
            {**reply.headers, VERSION_HEADER: str(self.core.model.version_id)},
        )

    async def shadow(
        self, route: str, body: bytes, content_type: str | None, primary: dict[str, Any]
    ) -> None:
        started = time.perf_counter()
        reply = await self._serve(route, body, content_type)
        latency = (time.perf_counter() - started) * 1000
        self.core.record_shadow(reply, latency, primary, reply.body)

    # -- the work ---------------------------------------------------------------------------

    async def _serve(
        self, route: str, body: bytes, content_type: str | None, rid: str | None = None
    ) -> Reply:
        self.core.in_flight += 1
        try:
            if route == "predict":
                inputs = parse_predict_body(body, content_type, self.traffic.max_batch_size * 64)
                outputs = await self._predict(inputs)
                units = count_units(self.core.model.recipe, inputs, outputs)
                data = {
                    "outputs": outputs,
                    "model": self.core.model.label,
                    "units": units,
                    "unit": self.core.unit,
                }
                return json_reply(data, units, {"x-gureum-model": self.core.model.label})
            if oip.is_infer(route):
                limit = self.traffic.max_batch_size * 64
                return await oip.infer(self.core, route, body, content_type, self._predict, limit)
            return await self._openai(route, body, content_type)
        except PayloadError as e:
            return error_reply(e.status, e.code, e.message)
        except OverBudget as e:  # an error reply: metered with no units, so not billed
            return error_reply(504, e.code, str(e))
        except BadInput as e:
            return error_reply(422, "bad_input", str(e))
        except ModelFault as e:  # a sandboxed predictor's fault: its cause stays in our log
            rid = rid or request_id()
            log.warning("%s, request id %s: %s", e, rid, e.detail[-4000:])
            return failure(e.code, e.what, rid, e.status)
        except Exception:
            rid = rid or request_id()
            log.exception("model error, request id %s (%s)", rid, self.core.model.label)
            return failure("model_error", "the model failed", rid)
        finally:
            self.core.in_flight -= 1

    async def _predict(self, inputs: list[Any]) -> list[Any]:
        if self.traffic.max_batch_size <= 1:
            # No batching: skip Ray's batch queue, a measurable share of a small model's cost.
            self.core.batch_sizes[1] += 1
            return await self._run_model(inputs)
        result = await self._batched(inputs)
        if isinstance(result, Exception):
            raise result
        return result

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _batched(self, items: list[list[Any]]) -> list[list[Any] | Exception]:
        self.core.batch_sizes[len(items)] += 1
        flat = [x for item in items for x in item]
        try:
            outputs = await self._run_model(flat)
        except BadInput:
            # One request's bad input must not fail the others of the batch.
            return [await self._alone(item) for item in items]
        results: list[list[Any] | Exception] = []
        pos = 0
        for item in items:
            results.append(outputs[pos : pos + len(item)])
            pos += len(item)
        return results

    async def _alone(self, item: list[Any]) -> list[Any] | Exception:
        try:
            return await self._run_model(item)
        except BadInput as e:
            return e

    async def _run_model(self, inputs: list[Any]) -> list[Any]:
        """In a thread, so that the replica keeps taking requests while the model works; but
        a model that answers within INLINE_PREDICT_MS runs on the event loop, where the thread
        hop would cost more than the time it frees."""
        predict = self.core.predictor.predict
        took: list[float] = []

        def timed(batch: list[Any]) -> list[Any]:
            # The model's own time, not the thread hop's: a loaded machine delays the hop.
            started = time.perf_counter()
            try:
                return predict(batch)
            finally:
                took.append((time.perf_counter() - started) * 1000)

        try:
            if self._predict_ms < INLINE_PREDICT_MS:
                outputs: list[Any] = timed(inputs)
            else:
                outputs = await asyncio.to_thread(timed, inputs)
        finally:
            if took:
                ms, known = took[0], self._predict_ms != float("inf")
                self._predict_ms = self._predict_ms + (ms - self._predict_ms) * 0.2 if known else ms
        return outputs

    async def _openai(self, route: str, body: bytes, content_type: str | None) -> Reply:
        if not _speaks_openai(self.core.model.recipe):
            return error_reply(404, "not_found", f"{route} is served by text generators only")
        req = openai_compat.parse_request(route, body, content_type)
        outputs = await self._predict([req.predict_input()])
        data, units = req.response(outputs[0], self.core.model.label)
        return json_reply(data, units, {"x-gureum-model": self.core.model.label})

    def _wants_stream(self, body: bytes) -> bool:
        try:
            data = json.loads(body)
        except ValueError:
            return False
        return isinstance(data, dict) and data.get("stream") is True

    def _stream(
        self,
        caller: Caller,
        route: str,
        body: bytes,
        content_type: str | None,
        started: float,
        rid: str,
    ) -> Response:
        if not _speaks_openai(self.core.model.recipe):
            reply = error_reply(404, "not_found", f"{route} is served by text generators only")
            self._meter(caller, route, reply, started)
            return to_response(reply)
        limit = self.traffic.max_streams_per_key
        if self._streams[caller.key_id] >= limit:
            message = f"this key has {limit} streams open on this replica; close one or retry"
            reply = error_reply(429, "too_many_streams", message, 1)
            self._meter(caller, route, reply, started)
            return to_response(reply)
        try:
            req = openai_compat.parse_request(route, body, content_type)
            chunks = req.stream(self.core.predictor, self.core.model.label)
        except (PayloadError, BadInput) as e:
            reply = (
                error_reply(e.status, e.code, e.message)
                if isinstance(e, PayloadError)
                else error_reply(422, "bad_input", str(e))
            )
            self._meter(caller, route, reply, started)
            return to_response(reply)
        slot = _Slot(self._streams, caller.key_id)

        async def events() -> AsyncIterator[bytes]:
            status = 200
            checked = time.monotonic()
            try:
                async for piece in _iterate(chunks):
                    if time.monotonic() - checked >= KEY_RECHECK_S:
                        checked = time.monotonic()
                        if not self._key_valid(caller):
                            status = 401
                            message = "the key was revoked or cannot be checked now; stopped"
                            yield openai_compat.sse_error("unauthorized", message)
                            return
                    yield piece
            except Exception:
                status = 500
                log.exception("model error while streaming, request id %s", rid)
                message = f"the model failed; quote request id {rid} when reporting it"
                yield openai_compat.sse_error("model_error", message)
            finally:
                slot.release()
                self._meter(caller, route, Reply(status, b"", units=req.units()), started)
                model = self.core.model
                self.core.capture.keep(
                    rid, caller, route, body, status, None, model.version_id, model.label
                )

        headers = {"x-gureum-model": self.core.model.label, "cache-control": "no-cache"}
        # The background task frees the slot of a stream whose client left before it began.
        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers=headers,
            background=BackgroundTask(slot.release),
        )

    def _key_valid(self, caller: Caller) -> bool:
        """Whether the caller's key is still in the replica's key table (a revoked key leaves
        it at the next refresh) and the table is fresh enough to say so (fail closed)."""
        access = self.core.access
        return access.knows(caller.key_id) and not access.stale()

    async def _forward(
        self,
        app: str,
        caller: Caller,
        route: str,
        body: bytes,
        content_type: str | None,
        rid: str,
    ) -> Reply:
        who = dataclasses.asdict(caller)
        try:
            status, data, headers = await self._handle(app).internal.remote(
                who, route, body, content_type, rid
            )
        except Exception:
            reply = error_reply(503, "unavailable", "the canary version failed; retry", 1)
            self._meter(caller, route, reply, time.perf_counter(), role="canary")
            return reply
        return Reply(status, data, dict(headers))

    def _mirror(
        self,
        app: str,
        route: str,
        body: bytes,
        content_type: str | None,
        reply: Reply,
        started: float,
    ) -> None:
        primary = {
            "status": reply.status,
            "latency_ms": (time.perf_counter() - started) * 1000,
            "output": reply.body.decode(errors="replace"),
        }
        self._handle(app).shadow.remote(route, body, content_type, primary)

    def _handle(self, app: str) -> DeploymentHandle[Any]:
        handle = self._handles.get(app)
        if handle is None:
            handle = self._handles[app] = serve.get_app_handle(app)
        return handle

    def _meter(
        self,
        caller: Caller,
        route: str,
        reply: Reply,
        started: float,
        cold_ms: float | None = None,
        role: str | None = None,
    ) -> None:
        """A request that waited for the replica to start is metered with what its caller
        waited, not only the time since the replica took it."""
        latency = (time.perf_counter() - started) * 1000
        if cold_ms is not None:
            latency = max(latency, cold_ms)
        cold = cold_ms is not None
        route = oip.INFER if oip.is_infer(route) else route  # usage keeps no model name
        self.core.record(caller, route, reply.status, reply.units, latency, cold, role)


async def _iterate(chunks: Any) -> AsyncIterator[bytes]:
    """Pull a blocking generator of SSE chunks in a thread, one chunk at a time."""
    sentinel = object()
    while True:
        piece = await asyncio.to_thread(next, chunks, sentinel)
        if piece is sentinel:
            return
        yield cast(bytes, piece)


@dataclasses.dataclass
class _Call:
    """One data-plane call's request id (signed for its caller once the key is checked)."""

    rid: str


class _Slot:
    """One open stream of a key; released once, by whichever of the stream's end or the
    response's background task comes first."""

    def __init__(self, counts: Counter[str], key_id: str) -> None:
        self._counts, self._key = counts, key_id
        self._held = True
        counts[key_id] += 1

    def release(self) -> None:
        if self._held:
            self._held = False
            self._counts[self._key] -= 1
            if self._counts[self._key] <= 0:
                del self._counts[self._key]


async def _drain(response: StreamingResponse) -> bytes:
    chunks = [c if isinstance(c, bytes) else str(c).encode() async for c in response.body_iterator]
    return b"".join(chunks)
