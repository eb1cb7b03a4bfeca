"""The controllers' loop base: a failing tick never stops the loop, a wake ticks at once, a
slow tick is warned about, and one failing item never stops the others."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from gureum.server.controllers import loop as loop_module
from gureum.server.controllers.loop import ControlLoop, each


def test_a_failing_tick_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    ticked = threading.Event()

    def tick() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the database went away")
        ticked.set()

    loop = ControlLoop("test-loop", tick, tick_s=0.01)
    with caplog.at_level(logging.ERROR, logger=loop_module.__name__):
        loop.start()
        try:
            assert ticked.wait(5)
        finally:
            loop.stop()
    assert not loop.running and len(calls) >= 2
    assert "test-loop: tick failed" in caplog.text and "the database went away" in caplog.text


def test_a_wake_ticks_without_waiting_for_the_interval() -> None:
    ticks = threading.Semaphore(0)
    loop = ControlLoop("slow-loop", ticks.release, tick_s=3600)
    loop.start()
    try:
        assert ticks.acquire(timeout=5)  # the first tick runs at start
        started = time.monotonic()
        loop.wake()
        assert ticks.acquire(timeout=5)
        assert time.monotonic() - started < 2
    finally:
        loop.stop()
    assert loop.ticks == 2


def test_a_tick_that_overruns_is_warned_about(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop_module, "OVERRUN_FLOOR_S", 0.01)
    loop = ControlLoop("busy-loop", lambda: time.sleep(0.05), tick_s=0.001)
    with caplog.at_level(logging.WARNING, logger=loop_module.__name__):
        loop.run_once()
    assert loop.overruns == 1 and "busy-loop: a tick took" in caplog.text


def test_one_failing_item_never_stops_the_others(caplog: pytest.LogCaptureFixture) -> None:
    done: list[int] = []
    noted: list[tuple[int, str]] = []

    def step(item: int) -> None:
        if item == 2:
            raise ValueError("bad job")
        done.append(item)

    with caplog.at_level(logging.ERROR, logger=loop_module.__name__):
        failed = each([1, 2, 3], step, "job", lambda item, e: noted.append((item, str(e))))
    assert failed == 1 and done == [1, 3] and noted == [(2, "bad job")]
    assert "job 2 failed" in caplog.text
