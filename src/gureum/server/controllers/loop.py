"""The one loop every controller runs on: a thread that ticks every ``tick_s`` (or sooner when
woken), logs a tick that fails without stopping, warns when a tick overruns, and isolates the
items of a tick so that one bad job or endpoint never stalls the others.

A controller owns a ``ControlLoop`` and gives it its ``tick``; restarting the process at any
time is safe because every tick reads the desired state from the database again (the
reconciliation pattern of Ray Serve's controller and Prefect's loop services).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from gureum.server.leader import NotLeader

T = TypeVar("T")
log = logging.getLogger(__name__)
# A tick that takes this many times its interval (and at least this floor) is worth a warning:
# everything the controller drives waits meanwhile.
OVERRUN_FACTOR = 10.0
OVERRUN_FLOOR_S = 5.0


class Gate(Protocol):
    """Who may tick (``server.leader.Leadership``): the term this server leads in, or None."""

    @property
    def epoch(self) -> int | None: ...


class ControlLoop:
    """Ticks only while its ``gate`` (when set) says this server leads; ``on_term`` runs in
    the loop's thread before the first tick of each term (a takeover's re-reading)."""

    def __init__(self, name: str, tick: Callable[[], None], tick_s: float) -> None:
        self.name = name
        self.tick_s = tick_s
        self._tick = tick
        self.gate: Gate | None = None
        self.on_term: Callable[[], None] | None = None
        self.term: int | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0
        self.overruns = 0

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def wake(self) -> None:
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def current(self) -> bool:
        """Whether the term this loop ticks in still holds (checked before a side effect
        outside the database, which fencing cannot reach)."""
        return self.gate is None or (self.term is not None and self.gate.epoch == self.term)

    def _run(self) -> None:
        while not self._stop.is_set():
            term = 0 if self.gate is None else self.gate.epoch
            if term is None:
                self.term = None
            elif term == self.term or self._begin(term):
                self.run_once()
            self._wake.wait(self.tick_s)
            self._wake.clear()

    def _begin(self, term: int) -> bool:
        try:
            if self.on_term is not None:
                self.on_term()
        except NotLeader:
            return False
        except Exception:
            log.exception("%s: taking over failed; tried again at the next tick", self.name)
            return False
        self.term = term
        return True

    def run_once(self) -> None:
        """One tick: its failure is logged, its overrun warned about; never raises."""
        started = time.monotonic()
        try:
            self._tick()
        except NotLeader as e:
            log.info("%s: tick abandoned: %s", self.name, e)
        except Exception:
            log.exception("%s: tick failed", self.name)
        took = time.monotonic() - started
        self.ticks += 1
        if took > max(OVERRUN_FLOOR_S, self.tick_s * OVERRUN_FACTOR):
            self.overruns += 1
            log.warning(
                "%s: a tick took %.1f s (it runs every %.2f s)", self.name, took, self.tick_s
            )


def each(
    items: Iterable[T],
    step: Callable[[T], None],
    what: str,
    failed: Callable[[T, Exception], None] | None = None,
) -> int:
    """Run ``step`` on every item; an item that raises is logged (and handed to ``failed``)
    and the others still run. Returns how many failed. Losing the lead ends the tick."""
    errors = 0
    for item in items:
        try:
            step(item)
        except NotLeader:
            raise
        except Exception as e:
            errors += 1
            log.exception("%s %s failed", what, item)
            if failed is not None:
                try:
                    failed(item, e)
                except Exception:
                    log.exception("recording the failure of %s %s failed", what, item)
    return errors


class Looped:
    """A controller on one ``ControlLoop`` (set as ``self.loop``): start, stop and wake are
    the loop's, so the API server drives every controller the same way."""

    loop: ControlLoop

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()

    def wake(self) -> None:
        self.loop.wake()
