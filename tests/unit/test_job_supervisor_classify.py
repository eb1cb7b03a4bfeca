"""How the supervisor names an attempt's end: a stop asked for is a cancel whatever the work
raised on its way out (a script killed under it exits with a signal, which its runner calls a
failure); without a stop, a recipe's own error is a failure and a lost worker is lost."""

from __future__ import annotations

from ray import exceptions as rex

from gureum.compute.supervisor import classify
from gureum.recipes.base import RecipeError


def _raised_from(inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as e:
            raise RuntimeError("the work's task failed") from e
    except RuntimeError as outer:
        return outer


def test_a_stop_asked_for_is_a_cancel_whatever_the_work_raised() -> None:
    failed = _raised_from(RecipeError("script killed by signal 15"))
    assert classify(failed, stop_requested=True) == ("cancelled", "stopped on request")
    assert classify(failed, stop_requested=False) == ("failed", "script killed by signal 15")


def test_without_a_stop_a_cancelled_task_is_a_cancel_and_a_lost_worker_is_lost() -> None:
    assert classify(rex.TaskCancelledError(), stop_requested=False)[0] == "cancelled"
    outcome, message = classify(_raised_from(rex.WorkerCrashedError()), stop_requested=False)
    assert outcome == "lost" and message.startswith("WorkerCrashedError")
