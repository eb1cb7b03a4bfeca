"""Pieces of an HTTP answer shared by the model server and the router: request ids for errors
whose cause stays in the log, bounded body reads, replies as Starlette responses."""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import Response

from gureum.serving.replica import Reply, error_reply
from gureum.serving.units import error_body


def request_id() -> str:
    return f"req_{uuid.uuid4().hex[:20]}"


def failure(code: str, what: str, rid: str, status: int = 500) -> Reply:
    """An error whose cause stays in the replica's log under ``rid``: a model's or Ray's error
    text can carry file paths, data or other callers' inputs, so consumers get only the id."""
    message = f"{what}; quote request id {rid} when reporting it"
    headers = {"content-type": "application/json", "x-request-id": rid}
    return Reply(status, error_body(code, message, {"request_id": rid}), headers)


async def read_body(request: Request, limit: int) -> bytes | Reply:
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


def to_response(reply: Reply) -> Response:
    return Response(reply.body, status_code=reply.status, headers=reply.headers)
