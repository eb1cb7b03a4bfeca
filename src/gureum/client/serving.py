"""Calling a deployed endpoint: the data plane, as a consumer (or the team) sees it.

The data plane is another host:port than the control plane and takes a consumer key
(``gck_...``) or a workspace API key (``gk_...``). Keep one :class:`EndpointClient` per
endpoint for repeated calls: it holds the connection open, which matters at ~1 ms per request.
Text generators also speak OpenAI's wire format under :attr:`EndpointClient.url`, so an OpenAI
client library pointed at that base URL works unchanged.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from gureum.client.errors import (
    ConnectionFailed,
    GureumError,
    RateLimitedError,
    ServerError,
    error_for,
)

# A cold start may hold a request for the endpoint's cold_start_timeout_s (120 s by default).
PREDICT_TIMEOUT = httpx.Timeout(300.0, connect=5.0)
# How long predict keeps retrying 503s (no replica ready, overloaded) in all before giving up.
MAX_RETRY_WAIT_S = 30.0
# Never spin on a Retry-After of 0.
# Pause before sending again a request whose connection was cut.
CUT_RETRY_PAUSE_S = 0.2
MIN_RETRY_PAUSE_S = 0.05
# The data plane's answer to a repeat of a call it is still computing (same Idempotency-Key).
IN_PROGRESS = "request_in_progress"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_DATA_URL = re.compile(r"^data:[^,]*;base64,")


class RateLimited(RateLimitedError):
    """429: over the consumer's rate limit or monthly quota; ``retry_after`` seconds, if told."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ConnectionCut(ConnectionFailed):
    """The connection closed before an answer came (a replica gone mid-request): retried."""


class Unavailable(ServerError):
    """503 that outlasted the retry budget: no replica could take the request in time."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


@dataclass(frozen=True)
class PredictResult:
    """One answer. ``units`` is what the request was metered as (images, tokens, rows);
    ``latency_ms`` is what the caller waited in all, retries included."""

    outputs: list[Any]
    model: str
    units: float
    unit: str
    cold_start: bool
    cold_start_ms: float | None
    latency_ms: float
    # Answered from the replica's replay cache (a retry of a call it had computed): not billed.
    replayed: bool = False
    # The answer's X-Request-Id: rate or correct it with ``EndpointClient.feedback``.
    request_id: str | None = None


class _PredictBody(BaseModel):
    outputs: list[Any]
    model: str
    units: float = 0.0
    unit: str = ""


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def signed_request_id(header: str | None) -> str | None:
    """The answer's own request id: the first X-Request-Id value. Ray Serve adds one of its
    own after it (read as one comma-joined header); only the first is signed for feedback."""
    if not header:
        return None
    return header.split(",", 1)[0].strip() or None


def _body(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text


def _header_ms(value: str | None) -> float | None:
    try:
        ms = float(value) if value is not None else None
    except ValueError:
        return None
    return ms if ms is not None and math.isfinite(ms) else None


def api_error(resp: httpx.Response) -> GureumError:
    """The SDK error for an error response, with Retry-After kept where it matters."""
    err = error_for(resp.status_code, _body(resp))
    if resp.status_code not in (429, 503):
        return err
    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    cls = RateLimited if resp.status_code == 429 else Unavailable
    return cls(
        err.message,
        retry_after=retry_after,
        status=err.status,
        code=err.code,
        details=err.details,
    )


def _retry_wait(resp: httpx.Response, err: GureumError) -> float | None:
    """Seconds to wait before sending a call again with its Idempotency-Key, or None: a 503
    with Retry-After (no replica ready), or a 409 ``request_in_progress`` (the replica still
    computes the first try of this call; the next try gets its answer replayed)."""
    if isinstance(err, Unavailable):
        return err.retry_after
    if resp.status_code == 409 and err.code == IN_PROGRESS:
        return parse_retry_after(resp.headers.get("Retry-After")) or CUT_RETRY_PAUSE_S
    return None


def has_images(output: Any) -> bool:
    """Whether an output carries images (image generators: base64 PNGs under "images")."""
    return isinstance(output, dict) and isinstance(output.get("images"), list)


def _png(blob: Any, where: str) -> bytes:
    try:
        data = base64.b64decode(_DATA_URL.sub("", str(blob)), validate=True)
    except (binascii.Error, ValueError):
        data = b""
    if not data.startswith(PNG_MAGIC):
        raise GureumError(f"{where} is not a base64 PNG image", code="bad_response")
    return data


def save_images(outputs: Sequence[Any], folder: str | Path, prefix: str) -> list[Any]:
    """Write every image of ``outputs`` to ``folder`` as PREFIX-NNN.png, numbered on from the
    files already there (nothing is overwritten); return the outputs with paths for blobs."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    taken = [re.fullmatch(rf"{re.escape(prefix)}-(\d+)\.png", p.name) for p in root.iterdir()]
    n = max((int(m.group(1)) for m in taken if m), default=0)
    shown: list[Any] = []
    for i, out in enumerate(outputs):
        if not has_images(out):
            shown.append(out)
            continue
        images = [_png(blob, f"output {i} image {j}") for j, blob in enumerate(out["images"])]
        paths = []
        for data in images:
            n += 1
            path = root / f"{prefix}-{n:03d}.png"
            with open(path, "xb") as fh:
                fh.write(data)
            paths.append(str(path))
        shown.append(out | {"images": paths})
    return shown


class EndpointClient:
    """Calls one endpoint's data plane at ``url`` (``EndpointOut.url``) with ``key``.

    A 503 that carries Retry-After is retried, waiting as told, for at most
    ``max_retry_wait_s`` in all; so is a connection cut before the answer came (a replica that
    died mid-request), and a 409 ``request_in_progress`` (the first try still running). Every
    try of one call carries the same Idempotency-Key and the same body: a try that reaches the
    replica that answered the first is answered from its replay cache (``Idempotent-Replayed:
    true``) and not billed again; a try computed again elsewhere is billed again. Other 4xx
    answers are never retried (they would fail the same way).
    """

    def __init__(
        self,
        url: str,
        key: str | None,
        *,
        timeout: httpx.Timeout | float = PREDICT_TIMEOUT,
        max_retry_wait_s: float = MAX_RETRY_WAIT_S,
        http: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url.rstrip("/")
        self.max_retry_wait_s = max_retry_wait_s
        self._sleep = sleep
        self.http = http or httpx.Client(timeout=timeout, transport=transport)
        if key:
            self.http.headers["Authorization"] = f"Bearer {key}"

    def predict(self, inputs: Sequence[Any]) -> PredictResult:
        """Send ``inputs`` (a list: one item per prediction) and return the outputs."""
        if isinstance(inputs, str | bytes | dict) or not isinstance(inputs, Sequence):
            raise GureumError(
                "inputs must be a list with one item per prediction", code="invalid_request"
            )
        started = time.perf_counter()
        resp = self._post("/predict", {"inputs": list(inputs)})
        latency_ms = (time.perf_counter() - started) * 1000.0
        try:
            body = _PredictBody.model_validate_json(resp.content)
        except ValidationError as exc:
            raise GureumError(
                f"the endpoint at {self.url} sent an answer that is not a prediction: "
                f"{exc.errors()[0]['msg']}",
                status=resp.status_code,
                code="bad_response",
            ) from exc
        cold = resp.headers.get("X-Gureum-Cold-Start") == "1"
        return PredictResult(
            outputs=body.outputs,
            model=body.model,
            units=body.units,
            unit=body.unit,
            cold_start=cold,
            cold_start_ms=_header_ms(resp.headers.get("X-Gureum-Cold-Start-Ms")) if cold else None,
            latency_ms=latency_ms,
            replayed=resp.headers.get("Idempotent-Replayed") == "true",
            request_id=signed_request_id(resp.headers.get("X-Request-Id")),
        )

    def feedback(
        self,
        request_id: str,
        *,
        rating: int | None = None,
        label: str | int | None = None,
        target: float | str | None = None,
        note: str | None = None,
    ) -> None:
        """Rate (1-5) or correct one of this key's answers, by its request id. Raises
        ``NotFound`` for an id this endpoint did not give this key."""
        body = {"request_id": request_id, "rating": rating, "label": label, "target": target}
        if note is not None:
            body["note"] = note
        self._post("/feedback", {k: v for k, v in body.items() if v is not None})

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        waited = 0.0
        key = uuid.uuid4().hex
        while True:
            try:
                resp = self._send(path, body, key)
            except ConnectionCut:
                if waited + CUT_RETRY_PAUSE_S > self.max_retry_wait_s:
                    raise
                self._sleep(CUT_RETRY_PAUSE_S)
                waited += CUT_RETRY_PAUSE_S
                continue
            if resp.status_code < 400:
                return resp
            err = api_error(resp)
            wait = _retry_wait(resp, err)
            if wait is None:
                raise err
            pause = max(wait, MIN_RETRY_PAUSE_S)
            if waited + pause > self.max_retry_wait_s:
                raise err
            self._sleep(pause)
            waited += pause

    def _send(self, path: str, body: dict[str, Any], key: str) -> httpx.Response:
        try:
            return self.http.post(self.url + path, json=body, headers={"Idempotency-Key": key})
        except httpx.TimeoutException as exc:
            raise ConnectionFailed(
                f"the endpoint at {self.url} did not answer in time ({type(exc).__name__})",
                code="timeout",
            ) from exc
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise ConnectionCut(f"the endpoint at {self.url} cut the connection: {exc}") from exc
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot reach the endpoint at {self.url}: {exc}") from exc

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> EndpointClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "ConnectionCut",
    "EndpointClient",
    "PredictResult",
    "RateLimited",
    "Unavailable",
    "has_images",
    "parse_retry_after",
    "save_images",
    "signed_request_id",
]
