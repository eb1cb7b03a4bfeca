"""A controller's loop ticks only while its gate (the leader election) says this server
leads, re-reads at the start of every term, and abandons a tick whose write was fenced."""

from __future__ import annotations

import threading
import time

from gureum.server.controllers.loop import ControlLoop, each
from gureum.server.leader import NotLeader


class Gate:
    def __init__(self) -> None:
        self.epoch: int | None = None


def _wait(pred: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_ticks_only_while_leading_and_takes_over_at_each_term() -> None:
    gate = Gate()
    ticks: list[int | None] = []
    terms: list[int | None] = []
    loop = ControlLoop("gated", lambda: ticks.append(gate.epoch), tick_s=0.01)
    loop.gate = gate
    loop.on_term = lambda: terms.append(gate.epoch)
    loop.start()
    try:
        time.sleep(0.2)
        assert ticks == [] and terms == [] and not loop.current()
        gate.epoch = 1
        _wait(lambda: len(ticks) >= 3)
        assert terms == [1] and loop.term == 1 and loop.current()
        gate.epoch = None  # deposed: no tick from now on
        _wait(lambda: loop.term is None)
        stopped_at = len(ticks)
        time.sleep(0.1)
        assert len(ticks) == stopped_at and not loop.current()
        gate.epoch = 3  # elected again, later: a new term, taken over again
        _wait(lambda: len(ticks) >= stopped_at + 2)
        assert terms == [1, 3] and set(ticks) == {1, 3}
    finally:
        loop.stop()


def test_a_fenced_write_ends_the_tick_not_the_loop() -> None:
    seen: list[int] = []

    def step(item: int) -> None:
        seen.append(item)
        if item == 2:
            raise NotLeader("taken over")

    done = threading.Event()

    def tick() -> None:
        try:
            each([1, 2, 3], step, "item")
        finally:
            done.set()

    loop = ControlLoop("fenced", tick, tick_s=3600)
    loop.run_once()  # never raises
    assert done.is_set() and seen == [1, 2]  # item 3 is the next leader's
