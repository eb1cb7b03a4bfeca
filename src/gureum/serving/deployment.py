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
import random
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import psutil
import torch
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gureum.recipes.base import BadInput
from gureum.serving import openai_compat
from gureum.serving.access import Caller
from gureum.serving.replica import ReplicaCore, Reply, error_reply, json_reply
from gureum.serving.spec import ReplicaSpec, TrafficConfig
from gureum.serving.units import PayloadError, count_units, parse_predict_body

ROUTES = ("predict", "chat/completions", "completions")
TEXT_RECIPE = "text-generator"
# How long the router holds a request for an endpoint it has no bound for yet.
DEFAULT_BOUND_S = 120.0
# A worker process older than this when the replica starts was an idle one Ray reused: its
# start is not the replica's.
REUSED_PROCESS_S = 60.0
# A request the router held this long waited for a replica to start; a shorter hold only
# bridged the moment before HAProxy learned a new route.
HELD_COLD_MS = 1000.0
# The longest Idempotency-Key a caller may send.
MAX_REQUEST_KEY = 200
# A model call expected to take less than this runs on the replica's event loop, not a thread.
INLINE_PREDICT_MS = 5.0


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

    @property
    def core(self) -> ReplicaCore:
        assert self._core is not None, "Ray Serve calls reconfigure before any request"
        return self._core

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Ray Serve calls it before the first request and on every change of user_config."""
        traffic = TrafficConfig.model_validate(config)
        if self._core is None:
            self._core = ReplicaCore(
                self.spec, traffic.model, started_from_zero_at=self._from_zero_at
            )
        elif traffic.model != self._core.model:
            self._core.swap(traffic.model)
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
        body = await _read_body(request, self.core.spec.max_request_bytes)
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
        started = time.perf_counter()
        if route not in ROUTES:
            message = f"no route {route!r}; use one of: {', '.join(ROUTES)}"
            return _response(error_reply(404, "not_found", message))
        if method != "POST":
            return _response(error_reply(405, "method_not_allowed", "use POST"))
        caller = await self._authorize(headers.get("authorization"))
        if isinstance(caller, Reply):
            return _response(caller)
        request_key = headers.get("idempotency-key")
        if request_key is not None:
            if not 0 < len(request_key) <= MAX_REQUEST_KEY:
                message = f"Idempotency-Key must be 1 to {MAX_REQUEST_KEY} characters"
                return _response(error_reply(400, "bad_request", message))
            caller = dataclasses.replace(caller, request_key=request_key)
        cold_ms = self.core.first_request_waited()
        if waited_from is not None:  # held by the router: a cold start if it really waited
            held = (time.time() - waited_from) * 1000
            if held >= HELD_COLD_MS:
                cold_ms = max(held, cold_ms or 0.0)
        if isinstance(body, Reply):
            self._meter(caller, route, body, started)
            return _response(body)
        content_type = headers.get("content-type")
        if route != "predict" and self._wants_stream(body):
            return self._stream(caller, route, body, content_type, started)
        canary = self.traffic.canary_app
        if (
            canary
            and self.traffic.canary_percent > 0
            and random.random() * 100 < self.traffic.canary_percent
        ):
            reply = await self._forward(canary, caller, route, body, content_type)
        else:
            reply = await self._serve(route, body, content_type)
            if cold_ms is not None:
                reply.headers["x-gureum-cold-start"] = "1"
                reply.headers["x-gureum-cold-start-ms"] = f"{cold_ms:.0f}"
                self.core.cold_start_ms = cold_ms
            self._meter(caller, route, reply, started, cold_ms)
        if self.traffic.shadow_app:
            self._mirror(self.traffic.shadow_app, route, body, content_type, reply, started)
        return _response(reply)

    async def _authorize(self, authorization: str | None) -> Caller | Reply:
        arrived = time.monotonic()
        caller = self.core.authorize(authorization)
        if isinstance(caller, Reply) and caller.status == 401:
            wait = self.core.refresh_wait(authorization, arrived)
            if wait is not None:  # the key may be newer than the last look at the table
                await asyncio.sleep(wait)
                caller = self.core.authorize(authorization)
        return caller

    # -- handle calls (canary, shadow) ------------------------------------------------------

    async def internal(
        self, caller: dict[str, Any], route: str, body: bytes, content_type: str | None
    ) -> tuple[int, bytes, dict[str, str]]:
        """A request the primary sent to this canary: answered and metered here."""
        started = time.perf_counter()
        reply = await self._serve(route, body, content_type)
        self._meter(Caller(**caller), route, reply, started)
        return reply.status, reply.body, reply.headers

    async def shadow(
        self, route: str, body: bytes, content_type: str | None, primary: dict[str, Any]
    ) -> None:
        started = time.perf_counter()
        reply = await self._serve(route, body, content_type)
        latency = (time.perf_counter() - started) * 1000
        self.core.record_shadow(reply, latency, primary, reply.body)

    # -- the work ---------------------------------------------------------------------------

    async def _serve(self, route: str, body: bytes, content_type: str | None) -> Reply:
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
            return await self._openai(route, body, content_type)
        except PayloadError as e:
            return error_reply(e.status, e.code, e.message)
        except BadInput as e:
            return error_reply(422, "bad_input", str(e))
        except Exception as e:
            return error_reply(500, "model_error", f"the model failed: {type(e).__name__}: {e}")
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
        started = time.perf_counter()
        try:
            if self._predict_ms < INLINE_PREDICT_MS:
                outputs: list[Any] = predict(inputs)
            else:
                outputs = await asyncio.to_thread(predict, inputs)
        finally:
            took = (time.perf_counter() - started) * 1000
            timed = self._predict_ms != float("inf")
            self._predict_ms = self._predict_ms + (took - self._predict_ms) * 0.2 if timed else took
        return outputs

    async def _openai(self, route: str, body: bytes, content_type: str | None) -> Reply:
        if self.core.model.recipe != TEXT_RECIPE:
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
        self, caller: Caller, route: str, body: bytes, content_type: str | None, started: float
    ) -> Response:
        if self.core.model.recipe != TEXT_RECIPE:
            reply = error_reply(404, "not_found", f"{route} is served by text generators only")
            self._meter(caller, route, reply, started)
            return _response(reply)
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
            return _response(reply)

        async def events() -> AsyncIterator[bytes]:
            status = 200
            try:
                async for piece in _iterate(chunks):
                    yield piece
            except Exception:
                status = 500
                raise
            finally:
                self._meter(caller, route, Reply(status, b"", units=req.units()), started)

        headers = {"x-gureum-model": self.core.model.label, "cache-control": "no-cache"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def _forward(
        self, app: str, caller: Caller, route: str, body: bytes, content_type: str | None
    ) -> Reply:
        who = dataclasses.asdict(caller)
        try:
            status, data, headers = await self._handle(app).internal.remote(
                who, route, body, content_type
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
        self.core.record(caller, route, reply.status, reply.units, latency, cold, role)


async def _iterate(chunks: Any) -> AsyncIterator[bytes]:
    """Pull a blocking generator of SSE chunks in a thread, one chunk at a time."""
    sentinel = object()
    while True:
        piece = await asyncio.to_thread(next, chunks, sentinel)
        if piece is sentinel:
            return
        yield cast(bytes, piece)


async def _read_body(request: Request, limit: int) -> bytes | Reply:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return error_reply(413, "payload_too_large", f"the request body is over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return error_reply(413, "payload_too_large", f"the request body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _response(reply: Reply) -> Response:
    return Response(reply.body, status_code=reply.status, headers=reply.headers)


class EndpointRouter:
    """Ray Serve's catch-all application ("/"). HAProxy sends it what no replica can take:
    paths of no endpoint (our JSON 404), and requests to an endpoint that has no replica at the
    moment (scaled to zero, rolling over, a replica replaced). Those it holds on a deployment
    handle, which waits for a replica (and asks the autoscaler for one), up to the endpoint's
    cold-start bound; then a 503 with Retry-After rather than a hang."""

    def __init__(self) -> None:
        self.bounds: dict[str, float] = {}
        self._handles: dict[str, DeploymentHandle[Any]] = {}

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.bounds = {str(k): float(v) for k, v in config.get("endpoints", {}).items()}

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        parts = path.strip("/").split("/")
        name = parts[2] if len(parts) > 2 and parts[:2] == ["v1", "endpoints"] else None
        # "--" names are the canary/shadow applications, reached only through their primary.
        handle = self._handle(name) if name is not None and "--" not in name else None
        if name is None or handle is None:
            message = f"no endpoint named {name!r}" if name else f"nothing is served at {path}"
            return _response(error_reply(404, "not_found", message))
        bound = self.bounds.get(name, DEFAULT_BOUND_S)
        waited_from = time.time()
        body = await request.body()
        call = handle.http.remote(path, request.method, dict(request.headers), body, waited_from)
        try:
            status, data, headers = await asyncio.wait_for(call, bound)
        except TimeoutError:
            message = f"endpoint {name!r} is starting and did not answer within {bound:g} s"
            return _response(error_reply(503, "starting", message, 5))
        except Exception as e:
            return _response(error_reply(503, "unavailable", f"endpoint {name!r}: {e}", 1))
        return Response(data, status_code=status, headers=headers)

    def _handle(self, name: str) -> DeploymentHandle[Any] | None:
        """The endpoint's application, if there is one (the bounds may lag a new endpoint)."""
        handle = self._handles.get(name)
        if handle is None:
            try:
                handle = serve.get_app_handle(name)
            except Exception:
                return None
            self._handles[name] = handle
        return handle


async def _drain(response: StreamingResponse) -> bytes:
    chunks = [c if isinstance(c, bytes) else str(c).encode() async for c in response.body_iterator]
    return b"".join(chunks)
