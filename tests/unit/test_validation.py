"""The smoke-test runner a new replica runs before it takes traffic (serving.validation):
each kind of broken model fails the check that names its fault, and a sound one passes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from gureum.recipes.spec import per_input
from gureum.serving.validation import (
    ValidationFailed,
    ValidationLimits,
    ValidationSpec,
    mark_passed,
    passed_here,
    smoke_test,
    validate,
)

INPUTS: list[Any] = [{"x": i} for i in range(4)]
LIMITS = ValidationLimits(max_latency_ms=1000, max_memory_mb=256)


class Label(BaseModel):
    label: str
    confidence: float


def labels(inputs: list[Any]) -> list[Any]:
    return [{"label": f"c{item['x']}", "confidence": 0.5} for item in inputs]


def failed(checks: list[Any]) -> dict[str, str]:
    return {c.name: c.detail for c in checks if not c.passed}


def test_a_sound_model_passes_every_check_with_its_figures() -> None:
    checks, figures = smoke_test(
        labels, INPUTS, limits=LIMITS, output_schema=Label, count_units=per_input
    )
    assert [c.name for c in checks] == [
        "predict",
        "outputs",
        "output_schema",
        "units",
        "latency",
        "memory",
    ]
    assert failed(checks) == {}
    assert checks[0].detail == "4 of 4 sample inputs answered"
    latency_max = figures["latency_max_ms"]
    assert latency_max is not None and 0 <= latency_max < LIMITS.max_latency_ms
    assert figures["latency_p50_ms"] is not None and figures["memory_max_mb"] is not None


def test_outputs_that_break_the_schema_fail_output_schema() -> None:
    def unlabelled(inputs: list[Any]) -> list[Any]:
        return [{"confidence": "high"} for _ in inputs]

    checks, _ = smoke_test(unlabelled, INPUTS, limits=LIMITS, output_schema=Label)
    bad = failed(checks)
    assert list(bad) == ["output_schema"]
    assert bad["output_schema"].startswith("input 0: at label: Field required")
    assert "(and 1 more)" in bad["output_schema"]  # 4 failures: 3 shown


def test_a_json_schema_is_checked_as_a_user_predictor_exports_it() -> None:
    schema = {
        "type": "object",
        "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1}},
        "required": ["score"],
    }

    def too_high(inputs: list[Any]) -> list[Any]:
        return [{"score": 3.0} for _ in inputs]

    checks, _ = smoke_test(too_high, INPUTS[:1], limits=LIMITS, output_schema=schema)
    assert failed(checks) == {
        "output_schema": "input 0: at score: 3.0 is greater than the maximum of 1"
    }


def test_a_model_that_raises_fails_predict_with_its_error() -> None:
    def broken(inputs: list[Any]) -> list[Any]:
        if inputs[0]["x"] == 2:
            raise RuntimeError("the tensor shapes do not match")
        return labels(inputs)

    checks, _ = smoke_test(broken, INPUTS, limits=LIMITS, output_schema=Label)
    bad = failed(checks)
    assert bad == {"predict": "input 2: RuntimeError: the tensor shapes do not match"}
    assert next(c for c in checks if c.name == "predict").passed is False


def test_a_model_slower_than_the_limit_fails_latency_without_waiting_for_it() -> None:
    def slow(inputs: list[Any]) -> list[Any]:
        time.sleep(3)
        return labels(inputs)

    limits = ValidationLimits(max_latency_ms=200, max_memory_mb=256)
    started = time.monotonic()
    checks, _ = smoke_test(slow, INPUTS, limits=limits)
    assert time.monotonic() - started < 2  # stopped at the first request past the limit
    assert failed(checks) == {"latency": "input 0 did not answer within 200 ms"}


def test_a_request_over_the_limit_but_answered_fails_latency() -> None:
    def sluggish(inputs: list[Any]) -> list[Any]:
        time.sleep(0.15)
        return labels(inputs)

    limits = ValidationLimits(max_latency_ms=150.0, max_memory_mb=256)
    checks, _ = smoke_test(sluggish, INPUTS[:1], limits=limits)
    bad = failed(checks)
    # Either the wait timed out or it answered late: the check fails both ways.
    assert list(bad) == ["latency"] and "input 0" in bad["latency"]


def test_a_model_that_holds_memory_per_request_fails_memory() -> None:
    kept: list[bytearray] = []

    def leaky(inputs: list[Any]) -> list[Any]:
        kept.append(bytearray(64 * 1024 * 1024))  # written, so resident
        kept[-1][::4096] = b"x" * len(kept[-1][::4096])
        return labels(inputs)

    limits = ValidationLimits(max_latency_ms=5000, max_memory_mb=16)
    checks, figures = smoke_test(leaky, INPUTS[:2], limits=limits)
    assert list(failed(checks)) == ["memory"]
    assert figures["memory_max_mb"] is not None and figures["memory_max_mb"] >= 48


def test_outputs_that_are_not_one_json_value_per_input_fail_outputs() -> None:
    def odd(inputs: list[Any]) -> list[Any]:
        return [object()] if inputs[0]["x"] == 0 else [1, 2]

    checks, _ = smoke_test(odd, INPUTS[:2], limits=LIMITS)
    detail = failed(checks)["outputs"]
    assert (
        "input 0: the output is not JSON" in detail and "input 1: 2 outputs for 1 input" in detail
    )


def test_a_unit_counter_that_cannot_count_the_answer_fails_units() -> None:
    def count(inputs: list[Any], outputs: list[Any]) -> float:
        return float(outputs[0]["tokens"])

    checks, _ = smoke_test(labels, INPUTS[:1], limits=LIMITS, count_units=count)
    assert failed(checks) == {"units": "input 0: KeyError: 'tokens'"}


class Model:
    def predict(self, inputs: list[Any]) -> list[Any]:
        return labels(inputs)


def test_validate_reports_a_load_failure_and_lists_the_failed_checks() -> None:
    spec = ValidationSpec(id=7, version_id=3, inputs=INPUTS)

    def load() -> Any:
        raise FileNotFoundError("model.joblib")

    predictor, report = validate(load, spec, output_schema=Label)
    assert predictor is None and report.passed is False
    assert [(c.name, c.detail) for c in report.checks] == [
        ("load", "FileNotFoundError: model.joblib")
    ]
    assert (
        str(ValidationFailed(report)) == "validation failed: load: FileNotFoundError: model.joblib"
    )


def test_validate_passes_a_sound_model_and_without_inputs_checks_the_load_only() -> None:
    predictor, report = validate(Model, ValidationSpec(id=1, version_id=3, inputs=INPUTS))
    assert isinstance(predictor, Model) and report.passed and report.samples == 4
    assert report.summary() == "passed 5 checks on 4 sample inputs"
    _, load_only = validate(Model, ValidationSpec(id=2, version_id=3))
    assert load_only.passed and [c.name for c in load_only.checks] == ["load"]


def test_a_passed_test_is_remembered_per_node_for_its_own_deploy_only(tmp_path: Path) -> None:
    spec = ValidationSpec(id=1, version_id=3, inputs=INPUTS)
    assert not passed_here(tmp_path, spec)
    mark_passed(tmp_path, spec)
    assert passed_here(tmp_path, spec.model_copy())  # another replica of the same deploy
    assert not passed_here(tmp_path, spec.model_copy(update={"id": 9}))  # another deploy
    assert not passed_here(tmp_path, spec.model_copy(update={"inputs": INPUTS[:1]}))


def test_too_many_sample_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="at most 64"):
        ValidationSpec(id=1, version_id=1, inputs=list(range(65)))
