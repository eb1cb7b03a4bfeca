"""Endpoints in the SDK: deploy model versions as APIs, update them safely, watch them, call them.

The control plane only records what should serve; Ray Serve catches up in the background, so
every change returns at once and :meth:`EndpointsAPI.wait` follows it to ``ready``. Calls go
to the data plane (:mod:`gureum.client.serving`), not through this server.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import httpx
from pydantic import ValidationError

from gureum.client.base import Transport, pages, segment
from gureum.client.errors import BadRequestError, GureumError, NotFoundError
from gureum.client.jobs import WaitTimeout
from gureum.client.serving import PREDICT_TIMEOUT, EndpointClient, PredictResult
from gureum.schemas.capture import (
    CaptureConfig,
    CapturedRecordOut,
    CaptureOut,
    CaptureUpdate,
    FeedbackSummary,
)
from gureum.schemas.drift import DriftHistoryOut, DriftOut
from gureum.schemas.endpoints import (
    EndpointConfig,
    EndpointCreate,
    EndpointEventOut,
    EndpointOut,
    EndpointStats,
    EndpointUpdate,
    ShadowRecordOut,
)

ConfigArg = EndpointConfig | Mapping[str, Any] | None
# A whole CaptureConfig, or a sampling rate / some settings to change (the others stay).
CaptureArg = CaptureConfig | Mapping[str, Any] | float | None
Role = Literal["primary", "canary", "shadow"]
POLL_S = 0.5


class EndpointFailed(GureumError):
    """The endpoint (or the version just deployed to it) did not come up; ``message`` says why."""

    def __init__(self, message: str, endpoint: EndpointOut) -> None:
        super().__init__(message, code="endpoint_failed", details={"state": endpoint.state})
        self.endpoint = endpoint


def _invalid(exc: ValidationError, what: str) -> BadRequestError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    msg = f"{where}: {first['msg']}" if where else str(first["msg"])
    return BadRequestError(f"invalid {what}: {msg}", status=422, code="invalid_request")


def _deep_merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def merge_config(base: EndpointConfig | None, changes: Mapping[str, Any]) -> EndpointConfig:
    """``base`` (defaults when None) with the nested partial ``changes`` applied, e.g.
    ``{"autoscaling": {"min_replicas": 0}}``. The server replaces a config whole, so a change
    to one setting must carry all the others."""
    current = (base or EndpointConfig()).model_dump(mode="json")
    try:
        return EndpointConfig.model_validate(_deep_merge(current, changes))
    except ValidationError as exc:
        raise _invalid(exc, "endpoint config") from exc


def _config(config: ConfigArg) -> EndpointConfig | None:
    if config is None or isinstance(config, EndpointConfig):
        return config
    try:
        return EndpointConfig.model_validate(dict(config))
    except ValidationError as exc:
        raise _invalid(exc, "endpoint config") from exc


def deployed_role(create: EndpointCreate) -> Role:
    if create.shadow:
        return "shadow"
    return "canary" if create.canary_percent is not None else "primary"


def version_in(ep: EndpointOut, role: Role) -> int | None:
    """The version serving ``role`` on ``ep``, if any."""
    if role == "primary":
        return ep.version
    ref = ep.canary if role == "canary" else ep.shadow
    return ref.version if ref is not None else None


class EndpointsAPI:
    def __init__(self, t: Transport, *, data_transport: httpx.BaseTransport | None = None) -> None:
        self._t = t
        # Only for tests: how the data plane is reached (a real client opens its own sockets).
        self._data_transport = data_transport

    # -- changing ----------------------------------------------------------------------------

    def deploy(
        self,
        name: str,
        model: str,
        *,
        config: ConfigArg = None,
        changes: Mapping[str, Any] | None = None,
        canary_percent: float | None = None,
        shadow: bool = False,
        wait: bool = False,
        timeout_s: float | None = None,
        on_update: Callable[[EndpointOut], None] | None = None,
        sample_inputs: Sequence[Any] | None = None,
        capture: CaptureArg = None,
    ) -> EndpointOut:
        """Serve ``model`` ("NAME", "NAME:V", "NAME:production") as endpoint ``name``.

        On an existing endpoint the version rolls over with no failed request, or takes
        ``canary_percent`` of the traffic, or is mirrored as a ``shadow``; ``config`` None keeps
        the endpoint's configuration, and ``changes`` (as :func:`merge_config` takes) change
        some settings of ``config``, else of the endpoint's (or the defaults for a new one).
        With ``wait`` it returns once the endpoint is ready with
        this version in place, and raises :class:`EndpointFailed` (with the server's reason)
        when the version did not come up, even where the old one goes on serving.

        The version's first new replica smoke-tests it before it takes traffic, on
        ``sample_inputs`` or else on inputs from its dataset's validation split; when that
        fails the deploy is dropped and the message lists the failed checks.

        ``capture`` keeps a share of the calls for retraining: a rate (0 to 1) or some
        settings change the endpoint's capture settings (the others stay), a
        :class:`~gureum.schemas.capture.CaptureConfig` replaces them.
        """
        full = _config(config)
        if changes:
            full = merge_config(full or self._config_of(name), changes)
        try:
            body = EndpointCreate(
                name=name,
                model=model,
                config=full,
                canary_percent=canary_percent,
                shadow=shadow,
                sample_inputs=list(sample_inputs) if sample_inputs is not None else None,
                capture=self._capture_for(name, capture),
            )
        except ValidationError as exc:
            raise _invalid(exc, "deployment") from exc
        data = self._t.json(
            "POST", "/v1/endpoints", json=body.model_dump(mode="json", exclude_none=True)
        )
        ep = EndpointOut.model_validate(data)
        if not wait:
            return ep
        role = deployed_role(body)
        target = version_in(ep, role)
        if role == "primary" and ep.canary is not None and ep.canary.percent == 0:
            target = ep.canary.version  # a rollover: the new version starts beside the old
        final = self.wait(name, timeout_s, on_update=on_update)
        if final is None:
            raise NotFoundError(f"endpoint {name} was deleted while deploying", code="not_found")
        if target is not None and version_in(final, role) != target:
            why = final.message or f"see `gureum endpoints events {name}`"
            raise EndpointFailed(
                f"{ep.model}:{target} did not become the {role} of endpoint {name}: {why}",
                final,
            )
        return final

    def _capture_for(self, name: str, capture: CaptureArg) -> CaptureConfig | None:
        if capture is None or isinstance(capture, CaptureConfig):
            return capture
        changes = dict(capture) if isinstance(capture, Mapping) else {"rate": capture}
        try:
            current = self.capture(name).config.model_dump()
        except NotFoundError:
            current = {}
        try:
            return CaptureConfig.model_validate(current | changes)
        except ValidationError as exc:
            raise _invalid(exc, "capture settings") from exc

    def _config_of(self, name: str) -> EndpointConfig | None:
        try:
            return self.get(name).config
        except NotFoundError:
            return None

    def update(
        self, name: str, *, config: ConfigArg = None, canary_percent: float | None = None
    ) -> EndpointOut:
        """Replace the configuration (whole; see :meth:`configure`) and/or the canary's share."""
        try:
            body = EndpointUpdate(config=_config(config), canary_percent=canary_percent)
        except ValidationError as exc:
            raise _invalid(exc, "update") from exc
        if body.config is None and body.canary_percent is None:
            raise BadRequestError(
                "nothing to change: give a config or a canary percent",
                status=422,
                code="invalid_request",
            )
        data = self._t.json(
            "PATCH",
            f"/v1/endpoints/{segment(name)}",
            json=body.model_dump(mode="json", exclude_none=True),
        )
        return EndpointOut.model_validate(data)

    def configure(
        self,
        name: str,
        changes: Mapping[str, Any] | None = None,
        *,
        canary_percent: float | None = None,
    ) -> EndpointOut:
        """Change some settings (nested, as :func:`merge_config` takes) and keep the rest."""
        config = merge_config(self.get(name).config, changes) if changes else None
        return self.update(name, config=config, canary_percent=canary_percent)

    def delete(self, name: str) -> EndpointOut:
        """Stop serving; the endpoint is ``deleting`` until its replicas are gone, then 404."""
        return EndpointOut.model_validate(self._t.json("DELETE", f"/v1/endpoints/{segment(name)}"))

    def rollback(self, name: str) -> EndpointOut:
        """Drop the canary if there is one, else go back to the version served before."""
        data = self._t.json("POST", f"/v1/endpoints/{segment(name)}/rollback")
        return EndpointOut.model_validate(data)

    def promote(self, name: str) -> EndpointOut:
        """Make the canary the primary version (the old primary becomes ``previous``)."""
        data = self._t.json("POST", f"/v1/endpoints/{segment(name)}/promote")
        return EndpointOut.model_validate(data)

    def set_capture(self, name: str, **changes: Any) -> CaptureOut:
        """Change some capture settings (``rate``, ``inputs``, ``outputs``, ``redact``,
        ``retention_days``); the others stay. Replicas follow within seconds."""
        try:
            body = CaptureUpdate(**changes)
        except ValidationError as exc:
            raise _invalid(exc, "capture settings") from exc
        data = self._t.json(
            "PATCH",
            f"/v1/endpoints/{segment(name)}/capture",
            json=body.model_dump(mode="json", exclude_unset=True),
        )
        return CaptureOut.model_validate(data)

    # -- reading -----------------------------------------------------------------------------

    def capture(self, name: str) -> CaptureOut:
        """The capture settings and how many calls were captured, dropped and are pending."""
        data = self._t.json("GET", f"/v1/endpoints/{segment(name)}/capture")
        return CaptureOut.model_validate(data)

    def feedback(self, name: str) -> FeedbackSummary:
        """Consumers' ratings and corrections, summarised (latest feedback per call)."""
        data = self._t.json("GET", f"/v1/endpoints/{segment(name)}/feedback")
        return FeedbackSummary.model_validate(data)

    def captured(
        self, name: str, *, limit: int = 50, consumer: str | None = None
    ) -> builtins.list[CapturedRecordOut]:
        """The latest captured calls, newest first, with inputs, outputs and feedback."""
        params: dict[str, Any] = {"limit": limit}
        if consumer is not None:
            params["consumer"] = consumer
        data = self._t.json("GET", f"/v1/endpoints/{segment(name)}/captured", params=params)
        return [CapturedRecordOut.model_validate(r) for r in data]

    def drift(self, name: str, *, window_s: int = 86_400) -> DriftOut:
        """Live inputs of the last ``window_s`` seconds (captured calls: capture must be on)
        against the served model's training data: PSI per feature, quality checks, verdict."""
        data = self._t.json(
            "GET", f"/v1/endpoints/{segment(name)}/drift", params={"window_s": window_s}
        )
        return DriftOut.model_validate(data)

    def drift_history(
        self, name: str, *, window_s: int = 86_400, buckets: int = 24
    ) -> DriftHistoryOut:
        """The drift score of ``buckets`` consecutive windows over the last ``window_s``
        seconds, oldest first, with the PSI of the features that drifted most."""
        data = self._t.json(
            "GET",
            f"/v1/endpoints/{segment(name)}/drift/history",
            params={"window_s": window_s, "buckets": buckets},
        )
        return DriftHistoryOut.model_validate(data)

    def list(self) -> builtins.list[EndpointOut]:
        return [EndpointOut.model_validate(e) for e in pages(self._t, "/v1/endpoints")]

    def get(self, name: str) -> EndpointOut:
        return EndpointOut.model_validate(self._t.json("GET", f"/v1/endpoints/{segment(name)}"))

    def events(self, name: str, after_seq: int = 0) -> builtins.list[EndpointEventOut]:
        """The endpoint's timeline, oldest first: deploys, rollovers, canary verdicts, failures."""
        data = self._t.json(
            "GET", f"/v1/endpoints/{segment(name)}/events", params={"after_seq": after_seq}
        )
        return [EndpointEventOut.model_validate(e) for e in data]

    def stats(self, name: str, window_s: float = 3600) -> EndpointStats:
        """Requests, errors and latency per version over the last ``window_s``, and live gauges."""
        data = self._t.json(
            "GET", f"/v1/endpoints/{segment(name)}/stats", params={"window_s": window_s}
        )
        return EndpointStats.model_validate(data)

    def shadow(self, name: str, limit: int = 50) -> builtins.list[ShadowRecordOut]:
        """The latest mirrored requests: the shadow's answer next to the primary's."""
        data = self._t.json("GET", f"/v1/endpoints/{segment(name)}/shadow", params={"limit": limit})
        return [ShadowRecordOut.model_validate(r) for r in data]

    def wait(
        self,
        name: str,
        timeout_s: float | None = None,
        *,
        poll_s: float | None = None,
        on_update: Callable[[EndpointOut], None] | None = None,
    ) -> EndpointOut | None:
        """Poll until the endpoint is ``ready``; None once it no longer exists (deleted).

        Raises :class:`EndpointFailed` with the server's message when it is ``failed``, and
        :class:`~gureum.client.jobs.WaitTimeout` after ``timeout_s`` (nothing is undone).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pause = POLL_S if poll_s is None else poll_s
        while True:
            try:
                ep = self.get(name)
            except NotFoundError:
                return None
            if on_update is not None:
                on_update(ep)
            if ep.state == "ready":
                return ep
            if ep.state == "failed":
                raise EndpointFailed(
                    f"endpoint {name} failed: {ep.message or 'no reason given'}", ep
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"endpoint {name} is still {ep.state} after {timeout_s:g} s"
                    + (f": {ep.message}" if ep.message else ""),
                    code="timeout",
                )
            time.sleep(pause)

    # -- calling -----------------------------------------------------------------------------

    def connect(
        self,
        name: str,
        key: str | None = None,
        *,
        timeout: httpx.Timeout | float = PREDICT_TIMEOUT,
    ) -> EndpointClient:
        """A data-plane client for endpoint ``name``: keep it for repeated calls.

        ``key`` is a consumer key; without one, this client's own API key is used.
        """
        ep = self.get(name)
        if not ep.url:
            raise GureumError(
                f"endpoint {name} has no URL yet (it is {ep.state}): "
                f"wait for it with `gureum endpoints show {name}`",
                status=409,
                code="not_ready",
            )
        return EndpointClient(
            ep.url, key or self._t.api_key, timeout=timeout, transport=self._data_transport
        )

    def predict(self, name: str, inputs: Sequence[Any], key: str | None = None) -> PredictResult:
        """One call to endpoint ``name``; for many, hold on to :meth:`connect`'s client."""
        with self.connect(name, key) as endpoint:
            return endpoint.predict(inputs)


__all__ = [
    "EndpointFailed",
    "EndpointsAPI",
    "merge_config",
]
