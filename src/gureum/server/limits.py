"""Request bodies of the control plane are bounded before anything parses them.

FastAPI reads and parses a JSON body before a route's dependencies run, authentication
included, so without a bound anyone who reaches the port could make the server hold a body
of any size. This ASGI middleware answers 413 in the API's error shape: at once when
``Content-Length`` says too much, else as soon as the bytes counted off the stream pass the
limit (a chunked body has no length). The limit depends on the route: the streamed uploads
(a blob, a blob batch, a dataset archive) take their own, large limits and count again
themselves; bodies that list files (a push manifest, a job with code, a model version,
replicas' usage and captured-call index) take ``max_manifest_bytes``; everything else
``max_request_bytes``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gureum.config import Settings
from gureum.server.services.blobs import batch_limit
from gureum.server.services.dataset_push import archive_limits

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SEGMENT = r"[^/]+"
_UPLOADS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("PUT", re.compile(rf"^/v1/blobs/{_SEGMENT}$"), "file"),
    ("POST", re.compile(r"^/v1/blobs/batch$"), "batch"),
    ("POST", re.compile(rf"^/v1/datasets/{_SEGMENT}/versions/archive$"), "archive"),
)
_MANIFESTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("POST", re.compile(rf"^/v1/datasets/{_SEGMENT}/versions$")),
    ("POST", re.compile(rf"^/v1/models/{_SEGMENT}/versions$")),
    ("POST", re.compile(r"^/v1/jobs$")),
    ("POST", re.compile(rf"^/v1/internal/endpoints/{_SEGMENT}/usage$")),
    ("POST", re.compile(rf"^/v1/internal/endpoints/{_SEGMENT}/captured$")),
)


def body_limit(settings: Settings, method: str, path: str) -> tuple[int, str]:
    """The most bytes a request body to ``method path`` may hold, and what it is called."""
    for verb, pattern, what in _UPLOADS:
        if method == verb and pattern.match(path):
            if what == "file":
                return settings.max_file_bytes, what
            if what == "batch":
                return batch_limit(settings), what
            return archive_limits(settings).max_body_bytes, what
    for verb, pattern in _MANIFESTS:
        if method == verb and pattern.match(path):
            return settings.max_manifest_bytes, "request body"
    return settings.max_request_bytes, "request body"


class _TooLarge(Exception):
    pass


def _too_large_body(limit: int, what: str) -> bytes:
    error = {
        "code": "payload_too_large",
        "message": f"{what} is larger than the limit of {limit} bytes",
        "details": {"limit": limit},
    }
    return json.dumps({"error": error}).encode()


class BodyLimit:
    """Pure ASGI (no buffering, no BaseHTTPMiddleware): the body streams through, counted."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings: Settings = scope["app"].state.settings  # read per request: tests swap it
        limit, what = body_limit(settings, scope["method"], scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _reply(send, limit, what)
            return
        received = 0
        exceeded = False
        started = False

        async def counted() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise _TooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # whatever the app answers to the cut-off body, we answer 413 below
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not exceeded or started:
                raise
        if exceeded and not started:
            await _reply(send, limit, what)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


async def _reply(send: Send, limit: int, what: str) -> None:
    body = _too_large_body(limit, what)
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class StreamSlots:
    """Live streams (SSE) each API key holds open; a key gets at most N at once.

    Only touched from the event loop, so a plain dict is enough.
    """

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def acquire(self, key_id: str, limit: int) -> bool:
        held = self._open.get(key_id, 0)
        if held >= limit:
            return False
        self._open[key_id] = held + 1
        return True

    def release(self, key_id: str) -> None:
        held = self._open.get(key_id, 0) - 1
        if held > 0:
            self._open[key_id] = held
        else:
            self._open.pop(key_id, None)

    def held(self, key_id: str) -> int:
        return self._open.get(key_id, 0)
