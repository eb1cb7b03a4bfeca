"""The data plane's one ASGI middleware, around each replica's HTTP server.

Ray Serve appends its own ``X-Request-ID`` to every answer (its RequestIdMiddleware, applied
inside ours). An endpoint's server sets the signed one consumers rate answers by, first: only
that one is kept, so a client reads one id. Answers our code did not make keep Ray's.

Ray Serve takes extra middlewares only from the callback named by
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` in the replica's environment (``REPLICA_ENV``,
set through each deployment's runtime environment).
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
REPLICA_ENV = {
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "gureum.serving.ingress_middleware.middlewares"
}


def middlewares() -> list[Middleware]:
    """Ray Serve's HTTP callback: the middlewares its replica servers add."""
    return [Middleware(OneRequestId)]


class OneRequestId:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = first_request_id_only(list(message.get("headers") or []))
            await send(message)

        await self.app(scope, receive, sending)


def first_request_id_only(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    seen = False
    kept = []
    for name, value in headers:
        if name.lower() == HEADER:
            if seen:
                continue
            seen = True
        kept.append((name, value))
    return kept
