"""Retrain pipelines in the SDK: the data flywheel's loop, defined once and run by the server.

The control plane runs every run as a reconciliation loop (curate -> train -> evaluate -> gate
-> approval -> canary -> decide), so starting, cancelling or approving returns at once and
:meth:`PipelinesAPI.wait` follows a run by polling it.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from gureum.client.base import Transport, pages, segment
from gureum.client.errors import BadRequestError
from gureum.client.jobs import WaitTimeout
from gureum.schemas.pipelines import (
    ACTIVE_RUN_STATES,
    ApprovalIn,
    PipelineCreate,
    PipelineOut,
    PipelineUpdate,
    RunEventOut,
    RunOut,
    RunState,
)

# A run by number, or "latest" (the pipeline's newest run).
RunRef = int | str
# The most items one page may hold (the server's limit).
PAGE_MAX = 1000


def _invalid(exc: ValidationError, what: str) -> BadRequestError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    msg = f"{where}: {first['msg']}" if where else str(first["msg"])
    return BadRequestError(f"invalid {what}: {msg}", status=422, code="invalid_request")


class PipelinesAPI:
    def __init__(self, t: Transport) -> None:
        self._t = t

    @staticmethod
    def _path(name: str, number: RunRef | None = None) -> str:
        path = f"/v1/pipelines/{segment(name)}"
        return path if number is None else f"{path}/runs/{segment(number)}"

    # -- the pipeline ------------------------------------------------------------------------

    def create(
        self, name: str, *, model: str, endpoint: str, dataset: str, **options: Any
    ) -> PipelineOut:
        """Retrain ``model`` from what ``endpoint`` captured into new versions of ``dataset``.

        ``options`` are :class:`~gureum.schemas.pipelines.PipelineCreate`'s other fields
        (``schedule``, ``after_labels``, ``on_drift``, ``canary_percent``, ``approve``, ...);
        they are checked here first, and the ones not given keep the server's defaults.
        """
        try:
            body = PipelineCreate(
                name=name, model=model, endpoint=endpoint, dataset=dataset, **options
            )
        except ValidationError as exc:
            raise _invalid(exc, "pipeline") from exc
        data = self._t.json(
            "POST", "/v1/pipelines", json=body.model_dump(mode="json", exclude_unset=True)
        )
        return PipelineOut.model_validate(data)

    def list(self) -> builtins.list[PipelineOut]:
        return [PipelineOut.model_validate(p) for p in pages(self._t, "/v1/pipelines")]

    def get(self, name: str) -> PipelineOut:
        return PipelineOut.model_validate(self._t.json("GET", self._path(name)))

    def update(self, name: str, /, **changes: Any) -> PipelineOut:
        """Change some of the pipeline's settings; the others stay as they are.

        ``changes`` are :class:`~gureum.schemas.pipelines.PipelineUpdate`'s fields (those of
        :meth:`create` but the name, and ``enabled``: ``False`` pauses the triggers); ``None``
        clears an optional one (``schedule=None`` stops the schedule). Checked here first; the
        server checks the result as at creation, and while a run is in progress lets only the
        triggers change (409 ``run_in_progress``)."""
        try:
            body = PipelineUpdate(**changes)
        except ValidationError as exc:
            raise _invalid(exc, "pipeline update") from exc
        data = self._t.json(
            "PATCH", self._path(name), json=body.model_dump(mode="json", exclude_unset=True)
        )
        return PipelineOut.model_validate(data)

    def pause(self, name: str) -> PipelineOut:
        """Stop the triggers (schedule, labels, drift); a run by hand still starts."""
        return self.update(name, enabled=False)

    def resume(self, name: str) -> PipelineOut:
        return self.update(name, enabled=True)

    def delete(self, name: str) -> None:
        """Remove the pipeline; no run starts from it again."""
        self._t.json("DELETE", self._path(name))

    # -- runs --------------------------------------------------------------------------------

    def run(self, name: str) -> RunOut:
        """Start a run by hand now; 409 while another run of the pipeline is in progress."""
        return RunOut.model_validate(self._t.json("POST", f"{self._path(name)}/runs"))

    def runs(self, name: str, limit: int | None = None) -> builtins.list[RunOut]:
        """The pipeline's runs, newest first: all of them, or the ``limit`` newest."""
        path = f"{self._path(name)}/runs"
        if limit is None:
            return [RunOut.model_validate(r) for r in pages(self._t, path)]
        params: dict[str, Any] = {"limit": max(1, min(limit, PAGE_MAX))}
        items: builtins.list[Any] = []
        while len(items) < limit:
            page = self._t.json("GET", path, params=params)
            items.extend(page["items"])
            if not page.get("next_cursor"):
                break
            params["cursor"] = page["next_cursor"]
        return [RunOut.model_validate(r) for r in items[:limit]]

    def get_run(self, name: str, number: RunRef = "latest") -> RunOut:
        return RunOut.model_validate(self._t.json("GET", self._path(name, number)))

    def events(
        self, name: str, number: RunRef = "latest", after: int = 0
    ) -> builtins.list[RunEventOut]:
        """The run's log, oldest first: what each step did and decided (only events past
        sequence number ``after``, to follow it)."""
        data = self._t.json("GET", f"{self._path(name, number)}/events", params={"after": after})
        return [RunEventOut.model_validate(e) for e in data]

    def cancel(self, name: str, number: RunRef = "latest") -> RunOut:
        """Ask the run to stop; the controller acts on it at its next tick (production stays)."""
        return RunOut.model_validate(self._t.json("POST", f"{self._path(name, number)}/cancel"))

    def approve(
        self, name: str, number: RunRef = "latest", approve: bool = True, note: str = ""
    ) -> RunOut:
        """Let a run that is ``awaiting_approval`` go on to its canary, or (``approve=False``)
        end it without touching production; ``note`` is kept with the decision."""
        try:
            body = ApprovalIn(approve=approve, note=note)
        except ValidationError as exc:
            raise _invalid(exc, "approval") from exc
        data = self._t.json(
            "POST", f"{self._path(name, number)}/approve", json=body.model_dump(mode="json")
        )
        return RunOut.model_validate(data)

    def wait(
        self,
        name: str,
        number: RunRef = "latest",
        timeout: float | None = None,
        poll_s: float = 2.0,
        on_update: Callable[[RunOut], None] | None = None,
    ) -> RunOut:
        """Poll the run until it ends (promoted, not promoted, failed, cancelled) or stops at
        ``awaiting_approval``: then a person must approve or reject it (:meth:`approve`), so
        waiting longer would wait forever. ``on_update`` sees every poll.

        "latest" is pinned to the run it names at the first poll, so a run that a trigger
        starts meanwhile is not followed instead. Raises
        :class:`~gureum.client.jobs.WaitTimeout` after ``timeout`` seconds (the run goes on).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.get_run(name, number)
            number = run.number
            if on_update is not None:
                on_update(run)
            if run.state not in ACTIVE_RUN_STATES or run.state == RunState.awaiting_approval:
                return run
            if deadline is not None and time.monotonic() >= deadline:
                where = f" ({run.step})" if run.step else ""
                raise WaitTimeout(
                    f"run {run.number} of pipeline {name} is still {run.state}{where} after "
                    f"{timeout:g} s" + (f": {run.reason}" if run.reason else ""),
                    code="timeout",
                )
            time.sleep(poll_s)


__all__ = ["PipelinesAPI", "RunRef"]
