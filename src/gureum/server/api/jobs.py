"""Jobs: submit, list, read, cancel; events, metrics, logs (plain and SSE) and outputs."""

from __future__ import annotations

import asyncio
import json
import mimetypes
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from gureum.config import Settings
from gureum.schemas.common import ErrorBody, Page
from gureum.schemas.jobs import (
    TERMINAL_STATES,
    JobCreate,
    JobEventOut,
    JobKind,
    JobMetricOut,
    JobOut,
    JobOutputOut,
    JobState,
)
from gureum.server.api.blobs import blob_response
from gureum.server.auth import Authenticator, Principal
from gureum.server.db.session import Database
from gureum.server.deps import DbDep, Developer, JobsDep, SettingsDep, StoreDep, Viewer
from gureum.server.errors import ApiError
from gureum.server.limits import StreamSlots
from gureum.server.pagination import PageParams, page_params
from gureum.server.services import jobs as svc
from gureum.server.services.costs import prices_from

router = APIRouter(
    prefix="/jobs",
    tags=["jobs"],
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)

JobId = Annotated[str, Path(max_length=64, description="the job's id")]
Params = Annotated[PageParams, Depends(page_params)]
Offset = Annotated[int, Query(ge=0, description="byte offset in the log to read from")]
STREAM_POLL_S = 0.3
KEEPALIVE_S = 15.0
NO_CLUSTER = "no compute cluster connected: start one with `gureum up` or set GUREUM_RAY_ADDRESS"


@router.post("", status_code=status.HTTP_201_CREATED)
def submit(
    body: JobCreate,
    db: DbDep,
    store: StoreDep,
    jobs: JobsDep,
    settings: SettingsDep,
    principal: Developer,
) -> JobOut:
    nodes = jobs.nodes if jobs else lambda: None
    out = svc.submit(db, store, principal, body, nodes, prices=prices_from(settings))
    if jobs is None:
        return svc.set_wait_reason(db, out.id, NO_CLUSTER)
    jobs.wake()
    return out


@router.get("")
def list_jobs(
    db: DbDep,
    principal: Viewer,
    params: Params,
    state: JobState | None = None,
    kind: JobKind | None = None,
) -> Page[JobOut]:
    return svc.list_jobs(db, principal, params, state, kind)


@router.get("/{job_id}")
def get_job(job_id: JobId, db: DbDep, principal: Viewer) -> JobOut:
    return svc.get_job(db, principal, job_id)


@router.post("/{job_id}/cancel")
def cancel(job_id: JobId, db: DbDep, jobs: JobsDep, principal: Developer) -> JobOut:
    out = svc.cancel(db, principal, job_id)
    if jobs is not None:
        jobs.wake()
    return out


@router.get("/{job_id}/events")
def list_events(job_id: JobId, db: DbDep, principal: Viewer, params: Params) -> Page[JobEventOut]:
    return svc.list_events(db, principal, job_id, params)


@router.get("/{job_id}/metrics")
def list_metrics(job_id: JobId, db: DbDep, principal: Viewer, params: Params) -> Page[JobMetricOut]:
    return svc.list_metrics(db, principal, job_id, params)


@router.get(
    "/{job_id}/logs",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}}},
)
def read_logs(job_id: JobId, db: DbDep, principal: Viewer, offset: Offset = 0) -> Response:
    text, next_offset, state = svc.read_logs(db, principal, job_id, offset)
    return PlainTextResponse(
        text, headers={"X-Next-Offset": str(next_offset), "X-Job-State": state}
    )


@router.get(
    "/{job_id}/logs/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream_logs(
    job_id: JobId, request: Request, db: DbDep, principal: Viewer, offset: Offset = 0
) -> StreamingResponse:
    """Server-sent events: ``log`` chunks, ``state`` on every change, ``end`` at the finish;
    ``error`` (then the end of the stream) when the key is revoked meanwhile. A key holds at
    most ``max_streams_per_key`` streams at once (429 beyond)."""
    settings: Settings = request.app.state.settings
    slots: StreamSlots = request.app.state.streams
    if not slots.acquire(principal.key_id, settings.max_streams_per_key):
        raise TooManyStreams(
            f"this key already holds {settings.max_streams_per_key} live streams (the limit); "
            "close one first",
            details={"max_streams_per_key": settings.max_streams_per_key},
            headers={"Retry-After": "5"},
        )
    try:
        first = await to_thread.run_sync(svc.get_job, db, principal, job_id)  # 404 first
    except BaseException:
        slots.release(principal.key_id)
        raise
    return _SlotStream(
        lambda: slots.release(principal.key_id),
        _events(request, db, principal, first, offset, settings.stream_key_recheck_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class TooManyStreams(ApiError):
    status, code = 429, "rate_limited"


class _SlotStream(StreamingResponse):
    """Gives its stream slot back however the response ends (done, error, disconnect)."""

    def __init__(self, release: Callable[[], None], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _sse(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


async def _events(
    request: Request,
    db: Database,
    principal: Principal,
    job: JobOut,
    offset: int,
    recheck_s: float,
) -> AsyncIterator[bytes]:
    last_state = job.model_dump_json()
    yield _sse("state", last_state)
    quiet = 0.0
    auth: Authenticator = request.app.state.auth
    authorization = request.headers.get("authorization")
    checked = time.monotonic()
    while True:
        if time.monotonic() - checked >= recheck_s:
            # The key is looked up again now and then, past the cache: a stream does not
            # outlive its key (nor a role it lost).
            try:
                principal = await to_thread.run_sync(auth.verify, authorization)
            except ApiError as exc:
                yield _sse(
                    "error", json.dumps({"error": {"code": exc.code, "message": exc.message}})
                )
                return
            checked = time.monotonic()
        text, offset, state = await to_thread.run_sync(svc.read_logs, db, principal, job.id, offset)
        if text:
            yield _sse("log", json.dumps({"offset": offset, "text": text}))
            quiet = 0.0
            continue  # drain what is there before looking at the state
        current = await to_thread.run_sync(svc.get_job, db, principal, job.id)
        body = current.model_dump_json()
        if body != last_state:
            last_state = body
            yield _sse("state", body)
        if state in TERMINAL_STATES and current.state in TERMINAL_STATES:
            yield _sse("end", body)
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(STREAM_POLL_S)
        quiet += STREAM_POLL_S
        if quiet >= KEEPALIVE_S:
            quiet = 0.0
            yield b": ping\n\n"


@router.get("/{job_id}/outputs")
def list_outputs(job_id: JobId, db: DbDep, principal: Viewer, params: Params) -> Page[JobOutputOut]:
    return svc.list_outputs(db, principal, job_id, params)


@router.get(
    "/{job_id}/outputs/{path:path}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def get_output(job_id: JobId, path: str, db: DbDep, store: StoreDep, principal: Viewer) -> Response:
    out = svc.find_output(db, principal, job_id, path)
    media = mimetypes.guess_type(out.path)[0]
    return blob_response(store, principal.workspace_id, out.sha256, out.size, media)
