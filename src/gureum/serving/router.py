"""The catch-all Ray Serve application that holds requests for endpoints without a replica."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from gureum.serving.http_replies import failure, read_body, request_id, to_response
from gureum.serving.replica import Reply, error_reply

log = logging.getLogger("ray.serve.gureum")


class EndpointRouter:
    """Ray Serve's catch-all application ("/"). HAProxy sends it what no replica can take:
    paths of no endpoint (our JSON 404), and requests to an endpoint that has no replica at the
    moment (scaled to zero, rolling over, a replica replaced). Those it holds on a deployment
    handle, which waits for a replica (and asks the autoscaler for one), up to the endpoint's
    cold-start bound; then a 503 with Retry-After rather than a hang.

    It reaches only the applications its table (from the endpoint controller) names for an
    endpoint name: never an application named after the path, so no path reaches a canary, a
    shadow, the router itself or an application gureum did not make."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[str, float, int]] = {}
        self._handles: dict[str, DeploymentHandle[Any]] = {}

    def reconfigure(self, config: dict[str, Any]) -> None:
        table = config.get("endpoints", {})
        self.routes = {
            str(name): (str(r["app"]), float(r["bound_s"]), int(r["max_request_bytes"]))
            for name, r in table.items()
        }

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        parts = path.strip("/").split("/")
        name = parts[2] if len(parts) > 2 and parts[:2] == ["v1", "endpoints"] else None
        route = self.routes.get(name) if name is not None else None
        handle = self._handle(route[0]) if route is not None else None
        if name is None or route is None or handle is None:
            shown = name[:100] if name else path[:100]
            message = f"no endpoint named {shown!r}" if name else f"nothing is served at {shown}"
            return to_response(error_reply(404, "not_found", message))
        app, bound, limit = route
        waited_from = time.time()
        # Limited before it is held or forwarded: the router serves every endpoint at once.
        body = await read_body(request, limit)
        if isinstance(body, Reply):
            return to_response(body)
        call = handle.http.remote(path, request.method, dict(request.headers), body, waited_from)
        try:
            status, data, headers = await asyncio.wait_for(call, bound)
        except TimeoutError:
            message = f"endpoint {name!r} is starting and did not answer within {bound:g} s"
            return to_response(error_reply(503, "starting", message, 5))
        except Exception:
            rid = request_id()
            log.exception("router: endpoint %s (%s) failed, request id %s", name, app, rid)
            reply = failure("unavailable", f"endpoint {name!r} is unavailable", rid, 503)
            reply.headers["retry-after"] = "1"
            return to_response(reply)
        return Response(data, status_code=status, headers=headers)

    def _handle(self, app: str) -> DeploymentHandle[Any] | None:
        """The endpoint's application, if Ray Serve has it yet."""
        handle = self._handles.get(app)
        if handle is None:
            try:
                handle = serve.get_app_handle(app)
            except Exception:
                return None
            self._handles[app] = handle
        return handle
