"""onnx: an imported ONNX file served through onnxruntime, without any code of its own.

The model's inputs and outputs come from its signature (names, element types, shapes). One
``/predict`` input is a JSON object ``{input_name: nested list}`` (or the bare nested list when
the model has one input); one output is ``{output_name: nested list}``. When every input's first
dimension is dynamic, that dimension is the batch: an input is one example without it, and the
inputs of a request (and of the requests Ray Serve batches together) run as one session call.
Otherwise an input is a whole tensor and each runs on its own.

The session is built from the file's bytes, not its path, so a model that names external data
files cannot make the replica read other files (import refuses such models anyway), and only
onnxruntime's CPU kernels run: no custom operator library is registered.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gureum.recipes import prediction_scores as scores
from gureum.recipes.base import BadInput, EvalOutput, ModelMismatch, RunContext
from gureum.recipes.dataset import LocalDataset

NAME = "onnx"
PREFERRED_FILE = "model.onnx"
EVAL_BATCH = 256  # validation rows per session call
# onnxruntime's element types -> (numpy type, Open Inference Protocol v2 datatype).
_TYPES: dict[str, tuple[str, str]] = {
    "tensor(float)": ("float32", "FP32"),
    "tensor(double)": ("float64", "FP64"),
    "tensor(float16)": ("float16", "FP16"),
    "tensor(int64)": ("int64", "INT64"),
    "tensor(int32)": ("int32", "INT32"),
    "tensor(int16)": ("int16", "INT16"),
    "tensor(int8)": ("int8", "INT8"),
    "tensor(uint64)": ("uint64", "UINT64"),
    "tensor(uint32)": ("uint32", "UINT32"),
    "tensor(uint16)": ("uint16", "UINT16"),
    "tensor(uint8)": ("uint8", "UINT8"),
    "tensor(bool)": ("bool", "BOOL"),
    "tensor(string)": ("object", "BYTES"),
}
# The JSON value kinds (numpy's ``dtype.kind``) each element type takes.
_ACCEPTS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b", "O": "U"}
_KIND_WORDS = {"f": "numbers", "i": "integers", "u": "integers", "b": "true/false", "O": "text"}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the model: ``shape`` has ``None`` where a dimension is dynamic;
    ``datatype`` is the Open Inference Protocol's name; ``dtype`` is None for an output that is
    not a tensor (a sequence or map), which only ``/predict`` answers."""

    name: str
    onnx_type: str
    shape: tuple[int | None, ...]
    dtype: np.dtype[Any] | None
    datatype: str | None


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or ()))
    known = _TYPES.get(arg.type)
    dtype = np.dtype(known[0]) if known else None
    return TensorSpec(arg.name, arg.type, shape, dtype, known[1] if known else None)


def _threads(threads: int | None) -> int:
    """The replica's CPU share: Ray sets OMP_NUM_THREADS from an actor's ``num_cpus`` (the
    endpoint's ``resources.cpus``, at least 1), as torch's thread count is set from it."""
    if threads is not None:
        return max(1, threads)
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1


def model_file(model_dir: Path) -> Path:
    """The folder's one ``.onnx`` file (or its ``model.onnx`` when it holds several)."""
    found = sorted(p for p in model_dir.rglob("*.onnx") if p.is_file())
    if len(found) == 1:
        return found[0]
    preferred = [p for p in found if p.name == PREFERRED_FILE]
    if len(preferred) == 1:
        return preferred[0]
    if not found:
        raise ModelMismatch(f"{model_dir.name} holds no .onnx file; not an ONNX model")
    names = ", ".join(p.relative_to(model_dir).as_posix() for p in found[:5])
    raise ModelMismatch(f"several .onnx files ({names}) and none is {PREFERRED_FILE}")


class OnnxPredictor:
    """An onnxruntime session and the signature it was read from."""

    def __init__(self, session: Any, invalid_argument: type[Exception]) -> None:
        self.session = session
        self._invalid = invalid_argument
        self.inputs = [_spec(a) for a in session.get_inputs()]
        self.outputs = [_spec(a) for a in session.get_outputs()]
        self._names = [s.name for s in self.inputs]
        untyped = [s.name for s in self.inputs if s.dtype is None]
        if untyped:
            raise ModelMismatch(f"inputs {', '.join(untyped)} are not tensors; cannot be sent")
        # Batch along the first dimension only when every input has a dynamic one.
        self.batched = bool(self.inputs) and all(
            s.shape and s.shape[0] is None for s in self.inputs
        )

    def predict(self, inputs: list[Any]) -> list[Any]:
        feeds = [self._feed(i, item) for i, item in enumerate(inputs)]
        if not self.batched:
            return [
                self._outputs(self._run(self._finite(f, i)), None)[0] for i, f in enumerate(feeds)
            ]
        if all(_same_shapes(feeds[0], f) for f in feeds[1:]):
            stacked = {n: np.stack([f[n] for f in feeds]) for n in self._names}
            return self._outputs(self._run(self._finite(stacked, 0)), len(feeds))
        # Examples of different shapes (a dynamic length): one session call each.
        return [
            self._outputs(self._run(self._finite({n: a[np.newaxis] for n, a in f.items()}, i)), 1)[
                0
            ]
            for i, f in enumerate(feeds)
        ]

    def _finite(
        self, feed: dict[str, np.ndarray[Any, Any]], first: int
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Refuse a number that became infinite in a narrower float type (1e39 in float32);
        checked on what the session gets, one reduction per input however many examples."""
        for name, array in feed.items():
            if array.dtype.kind != "f" or not array.size or np.isfinite(array).all():
                continue
            bad = 0
            if self.batched:  # which example: the first row holding a non-finite value
                rows = np.isfinite(array).reshape(array.shape[0], -1).all(axis=1)
                bad = int(np.flatnonzero(~rows)[0])
            raise BadInput(
                f"input {first + bad} {name!r}: a value is not finite in {array.dtype.name}"
            )
        return feed

    def _feed(self, index: int, item: Any) -> dict[str, np.ndarray[Any, Any]]:
        if not isinstance(item, Mapping):
            if len(self.inputs) != 1:
                raise BadInput(
                    f"input {index}: this model takes {len(self.inputs)} tensors; send an "
                    f"object with {', '.join(repr(n) for n in self._names)}"
                )
            item = {self._names[0]: item}
        missing = [n for n in self._names if n not in item]
        unknown = sorted(str(k) for k in item if k not in self._names)
        if missing or unknown:
            problems = [f"missing {', '.join(map(repr, missing))}" if missing else ""]
            problems += [f"unknown {', '.join(map(repr, unknown[:10]))}" if unknown else ""]
            raise BadInput(
                f"input {index}: {'; '.join(p for p in problems if p)}; the model's inputs are "
                f"{', '.join(map(repr, self._names))}"
            )
        return {s.name: self._array(index, s, item[s.name]) for s in self.inputs}

    def _array(self, index: int, spec: TensorSpec, value: Any) -> np.ndarray[Any, Any]:
        where = f"input {index} {spec.name!r}"
        assert spec.dtype is not None  # checked at load
        try:
            raw = np.asarray(value)
        except (ValueError, TypeError):
            raise BadInput(f"{where}: not a rectangular nested list of values") from None
        kind = spec.dtype.kind
        if raw.size and raw.dtype.kind not in _ACCEPTS[kind]:
            raise BadInput(
                f"{where}: the model takes {_KIND_WORDS[kind]} ({spec.onnx_type}), "
                f"got {_described(raw)}"
            )
        expected = spec.shape[1:] if self.batched else spec.shape
        if raw.ndim != len(expected) or any(
            want is not None and got != want for got, want in zip(raw.shape, expected, strict=True)
        ):
            what = "one example of shape" if self.batched else "shape"
            raise BadInput(
                f"{where}: expected {what} {_shape_text(expected)}, got {list(raw.shape)}"
            )
        if kind in "iu" and raw.size:
            info = np.iinfo(spec.dtype)
            if int(raw.min()) < info.min or int(raw.max()) > info.max:
                raise BadInput(f"{where}: a value is out of range for {spec.dtype.name}")
        with np.errstate(over="ignore"):  # a number too large for float32: see _finite
            return raw.astype(spec.dtype, copy=False)

    def _run(self, feed: Mapping[str, np.ndarray[Any, Any]]) -> list[Any]:
        try:
            result: list[Any] = self.session.run(None, dict(feed))
        except self._invalid as exc:  # the inputs disagree with the graph (dynamic dims)
            raise BadInput(f"the model refused the inputs: {str(exc)[:300]}") from None
        return result

    def _outputs(self, results: list[Any], n: int | None) -> list[dict[str, Any]]:
        """Per example when batched (``n`` examples), else one whole answer."""
        count = n or 1
        answers: list[dict[str, Any]] = [{} for _ in range(count)]
        for spec, value in zip(self.outputs, results, strict=True):
            split = n is not None and _length(value) == n
            whole = _json(value)  # converted once for the batch, then shared out by row
            for i in range(count):
                answers[i][spec.name] = whole[i] if split else whole
        return answers


def _same_shapes(
    a: Mapping[str, np.ndarray[Any, Any]], b: Mapping[str, np.ndarray[Any, Any]]
) -> bool:
    return all(a[k].shape == b[k].shape for k in a)


def _length(value: Any) -> int | None:
    if isinstance(value, np.ndarray):
        return int(value.shape[0]) if value.ndim else None
    return len(value) if isinstance(value, list) else None


def _json(value: Any) -> Any:
    """A JSON value: arrays as nested lists, a non-finite float as null, map keys as text."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            boxed = value.astype(object)
            boxed[~np.isfinite(value)] = None
            value = boxed
        return value.tolist()
    if isinstance(value, np.generic):
        return _json(np.asarray(value))
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value


def _described(raw: np.ndarray[Any, Any]) -> str:
    return {"f": "numbers", "i": "integers", "u": "integers", "b": "true/false", "U": "text"}.get(
        raw.dtype.kind, "mixed or nested values"
    )


def _shape_text(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("any" if d is None else str(d) for d in shape) + "]"


class OnnxModel:
    """The ``onnx`` recipe: loads imported ONNX files; it has nothing to train."""

    name = NAME
    description = "an imported ONNX model, served through onnxruntime from its signature"
    unpickles_model = False

    def load(
        self, model_dir: Path, device: str = "cpu", threads: int | None = None
    ) -> OnnxPredictor:
        import onnxruntime as ort  # type: ignore[import-untyped]
        from onnxruntime.capi.onnxruntime_pybind11_state import (  # type: ignore[import-untyped]
            InvalidArgument,
        )

        path = model_file(Path(model_dir))
        options = ort.SessionOptions()
        options.intra_op_num_threads = _threads(threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: warnings about unused initializers are noise
        try:
            session = ort.InferenceSession(
                path.read_bytes(), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime's own error types; the file is the problem
            raise ModelMismatch(
                f"{path.name}: onnxruntime cannot load it: {str(exc)[:300]}"
            ) from None
        return OnnxPredictor(session, InvalidArgument)

    def predict(self, model_dir: Path, inputs: list[Any], device: str = "cpu") -> list[Any]:
        return self.load(model_dir, device).predict(inputs)

    def evaluate(
        self, ctx: RunContext, model_dir: Path, ds: LocalDataset, params: Any = None
    ) -> EvalOutput:
        """The model's first output on the validation rows' numbers, scored against the
        column ``params.target`` names (``recipes.prediction_scores``)."""
        scores.check_scored_tables(ds, params)
        rows, truth = scores.validation_examples(ds, params)
        inputs = scores.numeric_rows(rows)
        ctx.log(f"evaluating on {len(inputs)} validation rows of {len(inputs[0])} numbers")
        predictor = self.load(model_dir, ctx.device)
        first = predictor.outputs[0].name
        return scores.scored(
            ctx,
            NAME,
            predictor.predict,
            inputs,
            truth,
            EVAL_BATCH,
            pick=lambda output: output[first],
            details={"output": first},
        )
