"""The Open Inference Protocol v2 REST routes (KServe, Triton) for tensor models (ONNX).

Under an endpoint's prefix, ``/v1/endpoints/{E}/v2/...``: server metadata and health, model
metadata and readiness, and ``infer``. The model name in a path is the endpoint's version label
(``NAME:V``; or ``NAME`` with ``/versions/V``) or the endpoint's own name. Every route is keyed
like ``/predict``; ``infer`` also goes the same way as a ``/predict`` call (idempotency, canary,
shadow, batching, metering: ``serving.deployment`` routes it to ``infer`` here), and its tensors
become ``/predict`` inputs: one example per row of the batch dimension when the model batches
(billed per example), else one input.

Only specs with ``ServingSpec.oip`` answer; their predictors have a tensor signature
(``TensorModel``: ``inputs``, ``outputs``, ``batched``).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import ValidationError

from gureum.recipes.base import BadInput
from gureum.recipes.specs import serving_of
from gureum.serving.oip_schema import InferInput, InferRequest
from gureum.serving.replica import ReplicaCore, Reply, error_reply, json_reply
from gureum.serving.spec import ModelRef
from gureum.serving.units import PayloadError, count_units, read_json

PREFIX = "v2"
PLATFORM = "onnxruntime_onnx"
# The route usage records name for every infer call, whatever model name its path used.
INFER = "v2/infer"
Kind = Literal["server", "live", "ready", "model", "model_ready", "infer"]


class TensorInfo(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def datatype(self) -> str | None: ...
    @property
    def shape(self) -> tuple[int | None, ...]: ...


class TensorModel(Protocol):
    """A predictor with a tensor signature (``recipes.onnx_model.OnnxPredictor``)."""

    @property
    def inputs(self) -> Sequence[TensorInfo]: ...
    @property
    def outputs(self) -> Sequence[TensorInfo]: ...
    @property
    def batched(self) -> bool: ...


@dataclass(frozen=True)
class Target:
    kind: Kind
    name: str | None = None
    version: str | None = None


def target(route: str) -> Target | None:
    """What an endpoint-relative path asks for, if it is one of the protocol's routes."""
    parts = route.split("/")
    if parts[0] != PREFIX:
        return None
    rest = parts[1:]
    if not rest:
        return Target("server")
    if rest in (["health", "live"], ["health", "ready"]):
        return Target("live" if rest[1] == "live" else "ready")
    if len(rest) < 2 or rest[0] != "models" or not rest[1]:
        return None
    name, tail, version = rest[1], rest[2:], None
    if len(tail) >= 2 and tail[0] == "versions" and tail[1]:
        version, tail = tail[1], tail[2:]
    kinds: dict[tuple[str, ...], Kind] = {(): "model", ("ready",): "model_ready"}
    kinds[("infer",)] = "infer"
    kind = kinds.get(tuple(tail))
    return Target(kind, name, version) if kind else None


def is_infer(route: str) -> bool:
    t = target(route)
    return t is not None and t.kind == "infer"


def is_info(route: str) -> bool:
    t = target(route)
    return t is not None and t.kind != "infer"


def _names(model: ModelRef, endpoint: str, t: Target) -> Reply | None:
    """404 unless the path names what this endpoint serves; None when it does."""
    label = model.label
    name = t.name if t.version is None else f"{t.name}:{t.version}"
    if name in (label, endpoint):
        return None
    return error_reply(
        404, "model_not_found", f"this endpoint serves {label!r} (or use its name {endpoint!r})"
    )


def _tensor_model(core: ReplicaCore) -> TensorModel | Reply:
    serving = serving_of(core.model.recipe)
    predictor = core.predictor
    if serving is None or not serving.oip or not hasattr(predictor, "inputs"):
        message = "the Open Inference Protocol is served for tensor models (ONNX) only; use predict"
        return error_reply(404, "not_found", message)
    model: TensorModel = predictor  # type: ignore[assignment]
    return model


async def info(core: ReplicaCore, route: str, method: str, headers: Mapping[str, str]) -> Reply:
    """Health, readiness and metadata: keyed and rate-limited like any call, not metered (no
    model runs). A replica that answers has its model loaded, so it is live and ready."""
    t = target(route)
    assert t is not None and t.kind != "infer"
    if method != "GET":
        return error_reply(405, "method_not_allowed", "use GET")
    caller = await core.admit(headers.get("authorization"))
    if isinstance(caller, Reply):
        return caller
    core.access.give_back(caller)
    model = _tensor_model(core)
    if isinstance(model, Reply):
        return model
    if t.kind == "server":
        return json_reply({"name": "gureum", "version": PREFIX, "extensions": []})
    if t.kind in ("live", "ready"):
        return json_reply({t.kind: True})
    wrong = _names(core.model, core.spec.endpoint, t)
    if wrong is not None:
        return wrong
    name = t.name or ""
    if t.kind == "model_ready":
        return json_reply({"name": name, "ready": True})
    return json_reply(
        {
            "name": name,
            "versions": [core.model.label.rpartition(":")[2]],
            "platform": PLATFORM,
            "inputs": [_meta(s) for s in model.inputs],
            "outputs": [_meta(s) for s in model.outputs if s.datatype is not None],
        }
    )


def _meta(spec: TensorInfo) -> dict[str, Any]:
    return {
        "name": spec.name,
        "datatype": spec.datatype,
        "shape": [-1 if d is None else d for d in spec.shape],
    }


# -- infer --------------------------------------------------------------------------------


async def infer(
    core: ReplicaCore,
    route: str,
    body: bytes,
    content_type: str | None,
    predict: Callable[[list[Any]], Awaitable[list[Any]]],
    max_items: int,
) -> Reply:
    """One ``infer`` call: its tensors checked and split into ``/predict`` inputs, predicted
    through ``predict`` (the replica's batching path), and answered as tensors.
    ``PayloadError`` and ``BadInput`` are the caller's (400/413/415 and 422)."""
    t = target(route)
    assert t is not None and t.kind == "infer"
    wrong = _names(core.model, core.spec.endpoint, t)
    if wrong is not None:
        return wrong
    model = _tensor_model(core)
    if isinstance(model, Reply):
        return model
    request = _parse(body, content_type)
    examples = _examples(model, request, max_items)
    outputs = await predict(examples)
    units = count_units(core.model.recipe, examples, outputs)
    wanted = _wanted(model, request)
    label = core.model.label
    data = {
        "model_name": t.name,
        "model_version": label.rpartition(":")[2],
        "id": request.id,
        "parameters": {"units": units, "unit": core.unit},
        "outputs": [_tensor(s, outputs, model.batched) for s in wanted],
    }
    if request.id is None:
        del data["id"]
    return json_reply(data, units, {"x-gureum-model": label})


def _parse(body: bytes, content_type: str | None) -> InferRequest:
    raw = read_json(body, content_type)
    try:
        return InferRequest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        shape = 'an infer request is {"inputs": [{"name", "shape", "datatype", "data"}, ...]}'
        raise PayloadError(400, "bad_request", f"{problems}; {shape}") from None


def _examples(model: TensorModel, request: InferRequest, max_items: int) -> list[Any]:
    specs = {s.name: s for s in model.inputs}
    given: dict[str, np.ndarray[Any, Any]] = {}
    for item in request.inputs:
        spec = specs.get(item.name)
        if spec is None:
            raise BadInput(f"unknown input {item.name!r}; the model's inputs are {_list(specs)}")
        if item.name in given:
            raise BadInput(f"input {item.name!r} is given twice")
        if item.datatype != spec.datatype:
            raise BadInput(
                f"input {item.name!r}: datatype {item.datatype!r}; the model takes {spec.datatype}"
            )
        given[item.name] = _array(item)
    missing = [n for n in specs if n not in given]
    if missing:
        raise BadInput(f"missing input(s) {_list(missing)}; the model's inputs are {_list(specs)}")
    if not model.batched:
        return [given]
    rows = {a.shape[0] if a.ndim else None for a in given.values()}
    if len(rows) != 1 or None in rows:
        raise BadInput("every input needs the same first (batch) dimension")
    n = int(next(iter(rows)) or 0)
    if n < 1:
        raise BadInput("the batch dimension is 0; send at least one example")
    if n > max_items:
        raise PayloadError(
            413, "payload_too_large", f"{n} examples in one request; at most {max_items}"
        )
    return [{name: a[i] for name, a in given.items()} for i in range(n)]


def _array(item: InferInput) -> np.ndarray[Any, Any]:
    """The tensor's data (flat in row-major order, or nested) in its shape."""
    if any(d < 0 for d in item.shape):
        raise BadInput(f"input {item.name!r}: shape {item.shape} has a negative dimension")
    flat = _flatten(item.data)
    if len(flat) != math.prod(item.shape):
        raise BadInput(
            f"input {item.name!r}: shape {item.shape} holds {math.prod(item.shape)} values; "
            f"data has {len(flat)}"
        )
    try:
        raw = np.asarray(flat)
    except (ValueError, TypeError):
        raise BadInput(f"input {item.name!r}: data holds values of mixed kinds") from None
    return raw.reshape(item.shape)


def _flatten(data: list[Any]) -> list[Any]:
    if not any(isinstance(x, list) for x in data):
        return data
    out: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


def _wanted(model: TensorModel, request: InferRequest) -> list[TensorInfo]:
    tensors = [s for s in model.outputs if s.datatype is not None]
    if not request.outputs:
        return tensors
    by_name = {s.name: s for s in tensors}
    unknown = [o.name for o in request.outputs if o.name not in by_name]
    if unknown:
        raise BadInput(f"unknown output(s) {_list(unknown)}; the model's are {_list(by_name)}")
    return [by_name[o.name] for o in request.outputs]


def _tensor(spec: TensorInfo, outputs: list[Any], batched: bool) -> dict[str, Any]:
    values = [o[spec.name] for o in outputs] if batched else outputs[0][spec.name]
    array = np.asarray(values, dtype=object if spec.datatype == "BYTES" else None)
    return {
        "name": spec.name,
        "datatype": spec.datatype,
        "shape": list(array.shape),
        "data": array.ravel().tolist(),
    }


def _list(names: Any) -> str:
    return ", ".join(repr(n) for n in list(names)[:20])


# -- the routes in the endpoint's OpenAPI schema ------------------------------------------
