"""Jobs in the SDK: submit train / evaluate / batch-predict runs, follow them, read results.

Submitting returns at once with the job's id; everything after that (state, logs, metrics,
outputs) is read back by id, so a client can come and go while the job runs on the cluster.
"""

from __future__ import annotations

import builtins
import codecs
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from gureum.client.base import Transport, pages, segment
from gureum.client.datasets import PUSH_TIMEOUT
from gureum.client.errors import BadRequestError, ConnectionFailed, GureumError
from gureum.client.upload import CHUNK, BlobUploader, LocalPathError, Progress, scan
from gureum.schemas.datasets import FileEntry, check_relative_path
from gureum.schemas.jobs import (
    SCRIPT_RECIPE,
    TERMINAL_STATES,
    CodeSpec,
    JobCreate,
    JobEventOut,
    JobKind,
    JobMetricOut,
    JobOut,
    JobOutputOut,
    Resources,
)

# Entry points a script job runs when none is named, in this order of preference.
DEFAULT_ENTRYPOINTS = ("main.py", "train.py")
# A log stream may stay silent for as long as the job does: never time out reading it.
STREAM_TIMEOUT = {"timeout": httpx.Timeout(60.0, connect=10.0, read=None).as_dict()}
# Pause before reconnecting a log stream the server or the network closed early.
RESUME_PAUSE_S = 0.5

ResourcesArg = Resources | dict[str, Any] | None


class WaitTimeout(GureumError):
    """`wait` gave up before the job reached a terminal state; the job keeps running."""


class IntegrityError(GureumError):
    """A downloaded output does not hash to what the server listed."""


# -- the log stream ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SSEMessage:
    """One server-sent event as it came off the wire, before we know what it means."""

    event: str
    data: str
    id: str | None = None


@dataclass(frozen=True)
class LogChunk:
    """New log text; ``offset`` is where to resume reading after it."""

    offset: int
    text: str


@dataclass(frozen=True)
class StateChange:
    """The job's state or progress changed (also sent once when the stream opens)."""

    job: JobOut


@dataclass(frozen=True)
class JobEnded:
    """The job reached a terminal state; nothing follows it."""

    job: JobOut


StreamEvent = LogChunk | StateChange | JobEnded


def parse_sse(lines: Iterable[str]) -> Iterator[SSEMessage]:
    """Server-sent events from text lines (the WHATWG rules, minus reconnection hints).

    Comments (``: ping``) are dropped; the ``data:`` lines of one event are joined by newlines;
    an event is dispatched at a blank line, and one cut off by the end of input is discarded.
    """
    event, data, last_id = "", builtins.list[str](), None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield SSEMessage(event or "message", "\n".join(data), last_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\x00" not in value:
            last_id = value


def decode_event(msg: SSEMessage) -> StreamEvent | None:
    """The typed event of one SSE message; None for kinds this client does not know yet."""
    try:
        if msg.event == "log":
            payload = json.loads(msg.data)
            return LogChunk(offset=int(payload["offset"]), text=str(payload["text"]))
        if msg.event == "state":
            return StateChange(JobOut.model_validate_json(msg.data))
        if msg.event == "end":
            return JobEnded(JobOut.model_validate_json(msg.data))
    except (ValueError, KeyError, TypeError) as exc:  # ValidationError is a ValueError
        raise GureumError(
            f"the server sent a malformed {msg.event!r} event: {exc}", code="bad_stream"
        ) from exc
    return None


def _decode_log(content: bytes, next_offset: int) -> tuple[str, int]:
    """Log bytes as text; a UTF-8 character cut at the end is left for the next read."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text = decoder.decode(content, final=False)
    pending = len(decoder.getstate()[0])
    return text, next_offset - pending


def _invalid(exc: ValidationError, what: str) -> BadRequestError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    msg = f"{where}: {first['msg']}" if where else str(first["msg"])
    return BadRequestError(f"invalid {what}: {msg}", status=422, code="invalid_request")


def _inside(root: Path, rel: str) -> Path:
    """``root / rel``, refusing any output path that would land outside ``root``."""
    try:
        check_relative_path(rel)
    except ValueError as exc:
        raise IntegrityError(f"refusing output path {rel!r}: {exc}", code="unsafe_path") from exc
    out = (root / rel).resolve()
    if out == root or not out.is_relative_to(root):
        raise IntegrityError(f"refusing to write {rel!r} outside {root}", code="unsafe_path")
    return out


class JobsAPI:
    def __init__(self, t: Transport) -> None:
        self._t = t

    # -- submitting --------------------------------------------------------------------------

    def submit(self, body: JobCreate | dict[str, Any]) -> JobOut:
        """Queue a job exactly as described; checked here first so mistakes fail before upload."""
        try:
            request = body if isinstance(body, JobCreate) else JobCreate.model_validate(body)
        except ValidationError as exc:
            raise _invalid(exc, "job") from exc
        data = self._t.json(
            "POST", "/v1/jobs", json=request.model_dump(mode="json", exclude_none=True)
        )
        return JobOut.model_validate(data)

    def train(
        self,
        recipe: str,
        dataset: str | None,
        *,
        model: str | None = None,
        params: dict[str, Any] | None = None,
        resources: ResourcesArg = None,
        workers: int = 1,
        priority: int = 0,
        max_retries: int = 2,
        timeout_s: float | None = None,
        code_dir: str | os.PathLike[str] | None = None,
        entrypoint: str | None = None,
        args: builtins.list[str] | None = None,
        progress: Progress | None = None,
        preemptible: bool = True,
    ) -> JobOut:
        """Train ``recipe`` on ``dataset`` ("NAME[:V]"), registering the result as ``model``.

        For ``recipe="script"`` the folder ``code_dir`` is uploaded first (only the blobs the
        server lacks) and ``entrypoint`` (default main.py, else train.py) is run with ``args``.
        ``preemptible=False`` (a workspace admin's key) keeps endpoints from preempting it.
        """
        code: CodeSpec | None = None
        if recipe == SCRIPT_RECIPE:
            if code_dir is None:
                raise BadRequestError(
                    "a script job needs its code folder (code_dir; CLI: --code DIR)",
                    status=422,
                    code="invalid_request",
                )
            code = self.upload_code(code_dir, entrypoint, args or [], progress)
        elif code_dir is not None or entrypoint is not None or args:
            raise BadRequestError(
                f"code, entrypoint and args are for recipe {SCRIPT_RECIPE!r}, not {recipe!r}",
                status=422,
                code="invalid_request",
            )
        body: dict[str, Any] = {
            "kind": "train",
            "recipe": recipe,
            "dataset": dataset,
            "model": model,
            "params": params or {},
            "code": code,
            "workers": workers,
            "priority": priority,
            "max_retries": max_retries,
            "timeout_s": timeout_s,
        }
        if not preemptible:
            body["preemptible"] = False
        if resources is not None:
            body["resources"] = resources
        return self.submit(body)

    def evaluate(
        self,
        model_ref: str,
        dataset: str | None = None,
        *,
        params: dict[str, Any] | None = None,
        resources: ResourcesArg = None,
        priority: int = 0,
        max_retries: int = 2,
        timeout_s: float | None = None,
    ) -> JobOut:
        """Score model version ``model_ref`` ("NAME[:V]") on ``dataset``'s validation split."""
        return self._run(
            "evaluate", model_ref, dataset, params, resources, priority, max_retries, timeout_s
        )

    def predict(
        self,
        model_ref: str,
        dataset: str | None = None,
        *,
        params: dict[str, Any] | None = None,
        resources: ResourcesArg = None,
        priority: int = 0,
        max_retries: int = 2,
        timeout_s: float | None = None,
    ) -> JobOut:
        """Run model version ``model_ref`` over every row or file of ``dataset`` (batch)."""
        return self._run(
            "predict", model_ref, dataset, params, resources, priority, max_retries, timeout_s
        )

    def _run(
        self,
        kind: JobKind,
        model_ref: str,
        dataset: str | None,
        params: dict[str, Any] | None,
        resources: ResourcesArg,
        priority: int,
        max_retries: int,
        timeout_s: float | None,
    ) -> JobOut:
        body: dict[str, Any] = {
            "kind": kind,
            "model": model_ref,
            "dataset": dataset,
            "params": params or {},
            "priority": priority,
            "max_retries": max_retries,
            "timeout_s": timeout_s,
        }
        if resources is not None:
            body["resources"] = resources
        return self.submit(body)

    def upload_code(
        self,
        code_dir: str | os.PathLike[str],
        entrypoint: str | None = None,
        args: builtins.list[str] | None = None,
        progress: Progress | None = None,
    ) -> CodeSpec:
        """Upload a script job's folder as blobs and describe it; nothing is sent twice."""
        source = Path(code_dir)
        if not source.is_dir():
            raise LocalPathError(f"{source} is not a folder of code", code="bad_request")
        files = scan(source)
        if not files:
            raise LocalPathError(f"{source} holds no files to run", code="bad_request")
        for f in files:
            try:
                check_relative_path(f.path)
            except ValueError as exc:
                raise LocalPathError(
                    f"cannot upload {f.path!r}: {exc}", code="invalid_request"
                ) from exc
        names = {f.path for f in files}
        if entrypoint is None:
            entrypoint = next((e for e in DEFAULT_ENTRYPOINTS if e in names), None)
            if entrypoint is None:
                raise LocalPathError(
                    f"{source} has no {' or '.join(DEFAULT_ENTRYPOINTS)}; name the file to run "
                    "(entrypoint; CLI: --entrypoint FILE)",
                    code="invalid_request",
                )
        elif entrypoint not in names:
            raise LocalPathError(
                f"entrypoint {entrypoint!r} is not a file in {source}", code="invalid_request"
            )
        hashed = BlobUploader(self._t, progress).upload(files)
        try:
            return CodeSpec(
                files=[FileEntry(path=f.path, sha256=f.sha256, size=f.size) for f in hashed],
                entrypoint=entrypoint,
                args=args or [],
            )
        except ValidationError as exc:
            raise _invalid(exc, "code") from exc

    # -- reading -----------------------------------------------------------------------------

    def list(self, state: str | None = None, kind: str | None = None) -> builtins.list[JobOut]:
        """The workspace's jobs, newest first, optionally only one state and/or kind."""
        params = {k: v for k, v in (("state", state), ("kind", kind)) if v}
        return [JobOut.model_validate(j) for j in pages(self._t, "/v1/jobs", params)]

    def get(self, job_id: str) -> JobOut:
        return JobOut.model_validate(self._t.json("GET", f"/v1/jobs/{segment(job_id)}"))

    def cancel(self, job_id: str) -> JobOut:
        """Ask the job to stop; a queued job is cancelled at once, a running one soon after."""
        data = self._t.json("POST", f"/v1/jobs/{segment(job_id)}/cancel")
        return JobOut.model_validate(data)

    def events(self, job_id: str) -> builtins.list[JobEventOut]:
        """The job's timeline, oldest first: state changes, waits, retries, checkpoints."""
        items = pages(self._t, f"/v1/jobs/{segment(job_id)}/events")
        return [JobEventOut.model_validate(e) for e in items]

    def metrics(self, job_id: str) -> builtins.list[JobMetricOut]:
        """Every metric point the job reported, oldest first."""
        items = pages(self._t, f"/v1/jobs/{segment(job_id)}/metrics")
        return [JobMetricOut.model_validate(m) for m in items]

    def logs(self, job_id: str, offset: int = 0) -> tuple[str, int]:
        """Log text from byte ``offset`` (at most about 1 MiB) and the offset to read next."""
        resp = self._t.request("GET", f"/v1/jobs/{segment(job_id)}/logs", params={"offset": offset})
        try:
            next_offset = int(resp.headers.get("X-Next-Offset", ""))
        except ValueError:
            next_offset = offset + len(resp.content)
        return _decode_log(resp.content, next_offset)

    def stream(self, job_id: str, offset: int = 0, *, resume: bool = True) -> Iterator[StreamEvent]:
        """Follow the job live: log text, state changes, and finally :class:`JobEnded`.

        With ``resume`` a stream the server or network drops early is picked up again from
        the last offset, and a job that ended meanwhile still yields its last lines and end.
        """
        while True:
            try:
                for event in self._stream_once(job_id, offset):
                    if isinstance(event, LogChunk):
                        offset = event.offset
                    yield event
                    if isinstance(event, JobEnded):
                        return
            except httpx.TransportError as exc:
                if not resume:
                    raise ConnectionFailed(f"the log stream of {job_id} broke: {exc}") from exc
            if not resume:
                return
            job = self.get(job_id)
            if job.state in TERMINAL_STATES:
                while True:
                    text, nxt = self.logs(job_id, offset)
                    if not text or nxt <= offset:
                        break
                    offset = nxt
                    yield LogChunk(offset, text)
                yield JobEnded(job)
                return
            time.sleep(RESUME_PAUSE_S)

    def _stream_once(self, job_id: str, offset: int) -> Iterator[StreamEvent]:
        path = f"/v1/jobs/{segment(job_id)}/logs/stream"
        with self._t.stream(
            "GET",
            path,
            params={"offset": offset},
            headers={"Accept": "text/event-stream"},
            extensions=STREAM_TIMEOUT,
        ) as resp:
            for msg in parse_sse(resp.iter_lines()):
                event = decode_event(msg)
                if event is not None:
                    yield event

    def wait(
        self,
        job_id: str,
        poll_s: float = 0.5,
        timeout_s: float | None = None,
        on_update: Callable[[JobOut], None] | None = None,
    ) -> JobOut:
        """Poll until the job succeeds, fails or is cancelled; ``on_update`` sees every poll.

        Raises :class:`WaitTimeout` after ``timeout_s`` (the job itself keeps running).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if on_update is not None:
                on_update(job)
            if job.state in TERMINAL_STATES:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"job {job_id} is still {job.state} after {timeout_s:g} s",
                    code="timeout",
                )
            time.sleep(poll_s)

    # -- outputs -----------------------------------------------------------------------------

    def outputs(self, job_id: str) -> builtins.list[JobOutputOut]:
        """Files the job produced: sample grids, predictions, reports."""
        items = pages(self._t, f"/v1/jobs/{segment(job_id)}/outputs")
        return [JobOutputOut.model_validate(o) for o in items]

    def download_output(
        self,
        job_id: str,
        path: str,
        dest_dir: str | os.PathLike[str],
        *,
        sha256: str | None = None,
    ) -> Path:
        """Write output ``path`` under ``dest_dir`` (keeping its folders); return where.

        The file appears under its name only when complete, and is checked against
        ``sha256`` when given (as :meth:`outputs` lists it).
        """
        root = Path(dest_dir)
        root.mkdir(parents=True, exist_ok=True)
        out = _inside(root.resolve(), path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.{uuid.uuid4().hex}.part"
        url = f"/v1/jobs/{segment(job_id)}/outputs/" + "/".join(
            segment(part) for part in path.split("/")
        )
        h = hashlib.sha256()
        try:
            with (
                self._t.stream("GET", url, extensions=PUSH_TIMEOUT) as resp,
                open(tmp, "wb") as fh,
            ):
                for chunk in resp.iter_bytes(CHUNK):
                    h.update(chunk)
                    fh.write(chunk)
            if sha256 is not None and h.hexdigest() != sha256:
                raise IntegrityError(
                    f"{path}: downloaded content hashes to {h.hexdigest()}, not {sha256}",
                    code="integrity_error",
                )
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        return out
