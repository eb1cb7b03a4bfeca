"""Validation before a version takes traffic: load it, then a smoke test on sample inputs.

Runs where the version is loaded (a new replica, before Ray Serve routes to it; or a Ray task
for ``gureum models validate``), never in the control plane: loading may unpickle files or start
a user's predictor. Each sample is one request of one input, so latency and memory are per
request. Checks: ``load``, ``predict`` (every sample answered), ``outputs`` (one JSON output per
input), ``output_schema`` (when the recipe or predictor declares one), ``units`` (the recipe's
counter accepts the answer), ``latency`` and ``memory`` against the limits.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from gureum.schemas.validations import (
    DEFAULT_SAMPLES,
    MAX_SAMPLE_BYTES,
    MAX_SAMPLES,
    Check,
    CheckName,
    ValidationLimits,
)

__all__ = ["DEFAULT_SAMPLES", "MAX_SAMPLES", "MAX_SAMPLE_BYTES", "Check", "ValidationLimits"]
DETAIL_CHARS = 500
MiB = 1024 * 1024


class ValidationSpec(BaseModel):
    """What the control plane asks a new replica to check before it serves ``version_id``.
    ``id`` is the report's id: the control plane accepts one report per id."""

    id: int
    version_id: int
    inputs: list[Any] = Field(default_factory=list, max_length=MAX_SAMPLES)
    source: str = ""
    limits: ValidationLimits = Field(default_factory=ValidationLimits)

    def fingerprint(self) -> str:
        """This deploy's test (its id) of this version with these inputs: the replicas of one
        deploy on one node run it once (scale-out, a replaced replica); every deploy runs its
        own."""
        body = json.dumps(
            [self.id, self.version_id, self.inputs, self.limits.model_dump()],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(body.encode()).hexdigest()[:16]


class ValidationReport(BaseModel):
    id: int
    version_id: int
    passed: bool
    checks: list[Check]
    samples: int = 0
    load_ms: float | None = None
    latency_p50_ms: float | None = None
    latency_max_ms: float | None = None
    memory_max_mb: float | None = None
    where: str = ""

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def summary(self) -> str:
        """One line naming the failed checks and why (what the deploy answers with)."""
        bad = self.failed()
        if not bad:
            return f"passed {len(self.checks)} checks on {self.samples} sample inputs"
        return "; ".join(f"{c.name}: {c.detail}" for c in bad)


class ValidationFailed(RuntimeError):
    """The version failed its validation; the replica must not take traffic."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(f"validation failed: {report.summary()}")
        self.report = report


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:DETAIL_CHARS]


def _schema_checker(schema: Any) -> Callable[[Any], None] | None:
    """A function that raises on an output that breaks ``schema``: a JSON Schema (dict, as a
    user predictor's is exported) or a pydantic type (a built-in recipe's)."""
    if schema is None:
        return None
    if isinstance(schema, dict):
        # Typed as Any: the package ships no stubs (and the project does not list them).
        jsonschema: Any = importlib.import_module("jsonschema")
        validator = jsonschema.Draft202012Validator(schema)

        def check_json(value: Any) -> None:
            error = jsonschema.exceptions.best_match(validator.iter_errors(value))
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                raise ValueError(f"at {where}: {error.message}")

        return check_json
    adapter: TypeAdapter[Any] = TypeAdapter(schema)

    def check_type(value: Any) -> None:
        try:
            adapter.validate_python(value, strict=False)
        except ValidationError as e:
            first = e.errors()[0]
            where = "/".join(str(p) for p in first["loc"]) or "(root)"
            raise ValueError(f"at {where}: {first['msg']}") from None

    return check_type


def smoke_test(
    predict: Callable[[list[Any]], list[Any]],
    inputs: list[Any],
    *,
    limits: ValidationLimits,
    output_schema: Any = None,
    count_units: Callable[[list[Any], list[Any]], float] | None = None,
) -> tuple[list[Check], dict[str, float | None]]:
    """Ask ``predict`` each input alone; the checks and the measured figures.

    A request past ``limits.max_latency_ms`` stops the test (its thread is left to finish: the
    version is refused, and the replica or task it runs in goes away)."""
    checks: list[Check] = []
    latencies: list[float] = []
    memory: list[float] = []
    errors: list[str] = []
    bad_shape: list[str] = []
    bad_schema: list[str] = []
    bad_units: list[str] = []
    slow: list[str] = []
    schema = _schema_checker(output_schema)
    process = psutil.Process()
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="smoke-test")
    timeout_s = limits.max_latency_ms / 1000
    try:
        for i, item in enumerate(inputs):
            before = process.memory_info().rss
            started = time.perf_counter()
            future = pool.submit(predict, [item])
            try:
                outputs = future.result(timeout=timeout_s)
            except concurrent.futures.TimeoutError:
                slow.append(f"input {i} did not answer within {limits.max_latency_ms:g} ms")
                break
            except Exception as e:  # the model's own error: reported, never raised
                errors.append(f"input {i}: {_short(e)}")
                continue
            finally:
                elapsed = (time.perf_counter() - started) * 1000
                memory.append(max(0, process.memory_info().rss - before) / MiB)
            latencies.append(elapsed)
            if elapsed > limits.max_latency_ms:
                slow.append(f"input {i} took {elapsed:.0f} ms")
            if not isinstance(outputs, list) or len(outputs) != 1:
                got = f"{len(outputs)} outputs" if isinstance(outputs, list) else "not a list"
                bad_shape.append(f"input {i}: {got} for 1 input")
                continue
            try:
                json.dumps(outputs[0], allow_nan=False)
            except (TypeError, ValueError) as e:
                bad_shape.append(f"input {i}: the output is not JSON ({_short(e)})")
                continue
            if schema is not None:
                try:
                    schema(outputs[0])
                except ValueError as e:
                    bad_schema.append(f"input {i}: {str(e)[:DETAIL_CHARS]}")
            if count_units is not None:
                try:
                    count_units([item], outputs)
                except Exception as e:
                    bad_units.append(f"input {i}: {_short(e)}")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    n = len(inputs)
    checks.append(_check("predict", errors, f"{n - len(errors)} of {n} sample inputs answered"))
    checks.append(_check("outputs", bad_shape, "one JSON output per input"))
    if schema is not None:
        checks.append(_check("output_schema", bad_schema, "every output matches the schema"))
    if count_units is not None:
        checks.append(_check("units", bad_units, "units counted for every answer"))
    p50 = statistics.median(latencies) if latencies else None
    worst = max(latencies) if latencies else None
    mem = max(memory) if memory else None
    ok_latency = f"at most {worst:.1f} ms per request" if worst is not None else "no request"
    checks.append(_check("latency", slow, f"{ok_latency} (limit {limits.max_latency_ms:g} ms)"))
    over = mem is not None and mem > limits.max_memory_mb
    heavy = [f"a request grew memory by {mem:.0f} MiB"] if over else []
    grown = f"at most {mem:.1f} MiB more per request" if mem is not None else "no request"
    checks.append(_check("memory", heavy, f"{grown} (limit {limits.max_memory_mb:g} MiB)"))
    figures = {"latency_p50_ms": p50, "latency_max_ms": worst, "memory_max_mb": mem}
    return checks, figures


def _check(name: CheckName, problems: list[str], ok: str) -> Check:
    if not problems:
        return Check(name=name, passed=True, detail=ok)
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return Check(name=name, passed=False, detail="; ".join(problems[:3]) + more)


def validate(
    load: Callable[[], Any],
    spec: ValidationSpec,
    *,
    output_schema: Any = None,
    count_units: Callable[[list[Any], list[Any]], float] | None = None,
    where: str = "",
) -> tuple[Any | None, ValidationReport]:
    """Load the version with ``load`` and smoke-test it: (the predictor or None, the report)."""
    started = time.perf_counter()
    try:
        predictor = load()
    except Exception as e:
        check = Check(name="load", passed=False, detail=_short(e))
        return None, ValidationReport(
            id=spec.id, version_id=spec.version_id, passed=False, checks=[check], where=where
        )
    load_ms = (time.perf_counter() - started) * 1000
    checks = [Check(name="load", passed=True, detail=f"loaded in {load_ms:.0f} ms")]
    figures: dict[str, float | None] = {}
    if spec.inputs:
        more, figures = smoke_test(
            predictor.predict,
            spec.inputs,
            limits=spec.limits,
            output_schema=output_schema,
            count_units=count_units,
        )
        checks += more
    report = ValidationReport(
        id=spec.id,
        version_id=spec.version_id,
        passed=all(c.passed for c in checks),
        checks=checks,
        samples=len(spec.inputs),
        load_ms=round(load_ms, 3),
        where=where,
        **{k: (round(v, 3) if v is not None else None) for k, v in figures.items()},
    )
    return predictor, report


_marks = threading.Lock()


def passed_here(root: Path, spec: ValidationSpec) -> bool:
    """A replica of the same deploy on this node already passed this very test."""
    return (root / f".validated-{spec.fingerprint()}").exists()


def mark_passed(root: Path, spec: ValidationSpec) -> None:
    with _marks:
        if root.is_dir():
            (root / f".validated-{spec.fingerprint()}").write_text("")
