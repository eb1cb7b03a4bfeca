"""The ``onnx`` recipe (issue 11, item 3): an ONNX file built here with onnx's helper API is
served through onnxruntime from its signature: examples batched along a dynamic first
dimension, whole tensors otherwise, and every input the model cannot take refused as
``BadInput`` (422) with the reason. Also the import check of ``.onnx`` files
(``server.services.model_formats``): not ONNX, external data, a graph the checker refuses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import schemathesis
from onnx import TensorProto, helper, numpy_helper

from gureum.recipes import LocalDataset, LocalRunContext
from gureum.recipes.base import BadInput, DatasetMismatch, ModelMismatch
from gureum.recipes.onnx_model import OnnxModel, OnnxPredictor
from gureum.recipes.specs import for_format, spec_of
from gureum.schemas.models import VersionCreate
from gureum.server.services.model_formats import NotAModel, check_format
from gureum.serving import oip_schema
from gureum.serving.deployment import ModelServer
from gureum.storage.store import ArtifactStore
from tests.unit.test_serving_ingress import KEY, LABEL, FakeCore, make_server

OPSET = [helper.make_opsetid("", 17)]
IR_VERSION = 9  # what onnxruntime reads, whatever onnx writes by default
# The classifier's weights: three classes from four features.
W = np.array(
    [[0.5, -1.0, 0.2], [1.5, 0.3, -0.7], [-0.4, 0.8, 1.1], [0.9, -0.2, 0.05]], dtype=np.float32
)
B = np.array([0.1, -0.3, 0.2], dtype=np.float32)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def classifier(path: Path) -> Path:
    """``features`` float [N, 4] -> ``logits`` [N, 3], ``probabilities`` [N, 3], ``label``
    int64 [N]: a linear classifier with a softmax, batched along N."""
    nodes = [
        helper.make_node("Gemm", ["features", "W", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")],
    )
    return _save(graph, path)


def expected(rows: list[list[float]]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The classifier's logits and probabilities, computed here in numpy."""
    logits = np.asarray(rows, dtype=np.float32) @ W + B
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return logits, e / e.sum(axis=1, keepdims=True)


def fixed_pair(path: Path) -> Path:
    """Two fixed-shape inputs ``a`` float [2, 2] and ``steps`` int64 [2]: not batched."""
    nodes = [
        helper.make_node("Cast", ["steps"], ["steps_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["a", "steps_f"], ["sum"]),
    ]
    graph = helper.make_graph(
        nodes,
        "pair",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 2]),
            helper.make_tensor_value_info("steps", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [2, 2])],
    )
    return _save(graph, path)


def sequence_model(path: Path) -> Path:
    """``x`` float [N, L] -> ``total`` [N] and ``log`` [N, L] (log of x: -inf at 0)."""
    nodes = [
        helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=0),
        helper.make_node("Log", ["x"], ["log"]),
    ]
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    graph = helper.make_graph(
        nodes,
        "sequence",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L"])],
        [
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("log", TensorProto.FLOAT, ["N", "L"]),
        ],
        [axes],
    )
    return _save(graph, path)


def load(path: Path, threads: int | None = None) -> OnnxPredictor:
    return OnnxModel().load(path.parent, threads=threads)


# -- the recipe ---------------------------------------------------------------------------


def test_the_spec_serves_onnx_imports_per_input_with_oip() -> None:
    spec = spec_of("onnx")
    assert spec is not None and for_format("onnx") is spec
    assert spec.trainable is False and spec.formats == ("onnx",)
    assert spec.serving is not None and spec.serving.unit == "input" and spec.serving.oip
    assert spec.serving.count([{}, {}, {}], [{}, {}, {}]) == 3.0
    assert isinstance(spec.load_implementation(), OnnxModel)


def test_the_signature_is_read_from_the_session(tmp_path: Path) -> None:
    p = load(classifier(tmp_path / "m" / "model.onnx"))
    assert [(s.name, s.datatype, s.shape) for s in p.inputs] == [("features", "FP32", (None, 4))]
    assert [(s.name, s.datatype, s.shape) for s in p.outputs] == [
        ("logits", "FP32", (None, 3)),
        ("probabilities", "FP32", (None, 3)),
        ("label", "INT64", (None,)),
    ]
    assert p.batched is True


def test_a_batch_runs_as_one_call_and_matches_numpy(tmp_path: Path) -> None:
    p = load(classifier(tmp_path / "m" / "model.onnx"))
    rows: list[list[float]] = [[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 1.0, 0.0], [0, 0, 0, 0]]
    calls: list[tuple[int, ...]] = []
    run = p.session.run
    p.session = _Recorder(run, calls)
    # Objects by input name and the bare row (the model has one input) are both inputs.
    out = p.predict([{"features": rows[0]}, rows[1], {"features": rows[2]}])
    assert calls == [(3, 4)]  # one session call for the three examples
    logits, probs = expected(rows)
    assert len(out) == 3
    for i, o in enumerate(out):
        assert set(o) == {"logits", "probabilities", "label"}
        assert o["logits"] == pytest.approx(logits[i].tolist(), abs=1e-5)
        assert o["probabilities"] == pytest.approx(probs[i].tolist(), abs=1e-5)
        assert o["label"] == int(np.argmax(logits[i]))
    # By hand: logits (6.0, 0.9, 2.5), (-0.8, 1.5, 1.1) and B = (0.1, -0.3, 0.2).
    assert [o["label"] for o in out] == [0, 1, 2]
    assert out[0]["logits"] == pytest.approx([6.0, 0.9, 2.5], abs=1e-5)


class _Recorder:
    """Wraps ``session.run`` to record the batch shapes it is called with."""

    def __init__(self, run: Any, calls: list[tuple[int, ...]]) -> None:
        self._run, self.calls = run, calls

    def run(self, names: Any, feed: dict[str, Any]) -> Any:
        self.calls.append(tuple(next(iter(feed.values())).shape))
        return self._run(names, feed)


def test_a_single_input_with_a_fixed_shape_runs_whole(tmp_path: Path) -> None:
    p = load(fixed_pair(tmp_path / "m" / "pair.onnx"))
    assert p.batched is False
    out = p.predict([{"a": [[1.5, 2.0], [3.0, -4.0]], "steps": [10, 20]}])
    assert out == [{"sum": [[11.5, 22.0], [13.0, 16.0]]}]
    two = p.predict(
        [{"a": [[0, 0], [0, 0]], "steps": [1, 2]}, {"a": [[1, 1], [1, 1]], "steps": [0, 0]}]
    )
    assert two == [{"sum": [[1.0, 2.0], [1.0, 2.0]]}, {"sum": [[1.0, 1.0], [1.0, 1.0]]}]


def test_examples_of_different_lengths_run_one_by_one_and_infinity_is_null(
    tmp_path: Path,
) -> None:
    p = load(sequence_model(tmp_path / "m" / "seq.onnx"))
    out = p.predict([[1.0, 2.0], [1.0, 2.0, 3.0], [0.0, 1.0]])
    assert [o["total"] for o in out] == [3.0, 6.0, 1.0]
    assert out[2]["log"] == [None, 0.0]  # log(0) is -inf: JSON has no such number


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([[1.0, 2.0, 3.0]], "input 0 'features': expected one example of shape [4], got [3]"),
        ([[[1, 2, 3, 4]]], "expected one example of shape [4], got [1, 4]"),
        ([{"feature": [1, 2, 3, 4]}], "input 0: missing 'features'; unknown 'feature'"),
        ([[1, 2, 3, 4], {"features": [1, 2, 3, 4], "x": 1}], "input 1: unknown 'x'"),
        ([["a", "b", "c", "d"]], "the model takes numbers (tensor(float)), got text"),
        ([[[1, 2], 3, 4, 5]], "not a rectangular nested list"),
        ([[1e39, 0, 0, 0]], "a value is not finite in float32"),
        ([[0, 0, 0, 0], [0, 1e39, 0, 0]], "input 1 'features': a value is not finite in float32"),
        ([[True, False, True, False]], "got true/false"),
    ],
)
def test_inputs_the_model_cannot_take_are_bad_input(
    tmp_path: Path, inputs: list[Any], message: str
) -> None:
    p = load(classifier(tmp_path / "m" / "model.onnx"))
    with pytest.raises(BadInput) as caught:
        p.predict(inputs)
    assert message in str(caught.value)
    assert BadInput.code == "invalid_request"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ([[1, 2], [3, 4]], "this model takes 2 tensors; send an object with 'a', 'steps'"),
        ({"a": [[1, 2], [3, 4]], "steps": [1.5, 2]}, "takes integers (tensor(int64)), got numbers"),
        ({"a": [[1, 2], [3, 4]], "steps": [2**63 - 1, 2**64]}, "'steps': the model takes integers"),
        ({"a": [[1, 2], [3, 4]], "steps": [2**63, 2**63]}, "a value is out of range for int64"),
        ({"a": [[1, 2, 3], [3, 4, 5]], "steps": [1, 2]}, "expected shape [2, 2], got [2, 3]"),
    ],
)
def test_a_fixed_shape_models_bad_inputs(tmp_path: Path, item: Any, message: str) -> None:
    p = load(fixed_pair(tmp_path / "m" / "pair.onnx"))
    with pytest.raises(BadInput) as caught:
        p.predict([item])
    assert message in str(caught.value)


def test_threads_follow_the_replica_share(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = classifier(tmp_path / "m" / "model.onnx")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert load(path).session.get_session_options().intra_op_num_threads == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # what Ray sets from the replica's num_cpus
    assert load(path).session.get_session_options().intra_op_num_threads == 2
    assert load(path, threads=3).session.get_session_options().intra_op_num_threads == 3


def test_the_model_file_is_found_or_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelMismatch, match=r"holds no \.onnx file"):
        OnnxModel().load(empty)
    classifier(tmp_path / "two" / "a.onnx")
    fixed_pair(tmp_path / "two" / "sub" / "b.onnx")
    with pytest.raises(ModelMismatch, match=r"several \.onnx files"):
        OnnxModel().load(tmp_path / "two")
    classifier(tmp_path / "two" / "model.onnx")  # the one named model.onnx is chosen
    assert OnnxModel().load(tmp_path / "two").batched is True
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelMismatch, match="onnxruntime cannot load it"):
        OnnxModel().load(tmp_path / "junk")


# -- the import check ---------------------------------------------------------------------


def _version(store: ArtifactStore, files: dict[str, bytes]) -> VersionCreate:
    entries = []
    for path, data in files.items():
        info = store.write_blob(1, iter([data]), max_bytes=1 << 24)
        entries.append({"path": path, "sha256": info.sha256, "size": info.size})
    return VersionCreate.model_validate({"files": entries, "format": "onnx"})


def _refusal(store: ArtifactStore, files: dict[str, bytes]) -> str:
    with pytest.raises(NotAModel) as caught:
        check_format(store, 1, _version(store, files))
    assert caught.value.status == 422 and caught.value.code == "invalid_request"
    return str(caught.value.message)


def test_a_real_onnx_file_passes_the_import_check(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    data = classifier(tmp_path / "m" / "model.onnx").read_bytes()
    check_format(store, 1, _version(store, {"model.onnx": data}))


def test_a_file_that_is_not_onnx_is_refused_with_the_reason(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    message = _refusal(store, {"x.onnx": b"PK\x03\x04 this is a zip, not a model" * 10})
    assert message.startswith("x.onnx is not a usable ONNX model: ")
    assert "does not parse as ONNX protobuf" in message or "holds no graph" in message
    message = _refusal(store, {"empty.onnx": b""})
    assert "holds no graph or no opset" in message
    message = _refusal(store, {"weights.bin": b"x"})
    assert "needs a file ending in .onnx" in message


def test_external_data_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    model = onnx.load_model(str(classifier(tmp_path / "m" / "model.onnx")))
    onnx.external_data_helper.convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location="../outside-the-model.data", size_threshold=0
    )
    message = _refusal(store, {"model.onnx": model.SerializeToString()})
    assert "W, B are stored as external data, which is not supported" in message


def test_a_graph_the_checker_refuses_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["x"], ["y"])],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    bad = helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION)
    message = _refusal(store, {"model.onnx": bad.SerializeToString()})
    assert "onnx's checker refused it" in message and "NoSuchOperator" in message


# -- the Open Inference Protocol routes, in-process (the replica's ingress without Ray) -----


class TensorCore(FakeCore):
    """The ingress tests' replica core, serving an ONNX predictor billed per input."""

    unit = "input"

    def __init__(self, predictor: OnnxPredictor, recipe: str = "onnx") -> None:
        super().__init__(predictor, recipe=recipe)  # type: ignore[arg-type]


def _call(
    server: ModelServer, route: str, body: Any = None, method: str = "POST", key: str = KEY
) -> tuple[int, dict[str, Any]]:
    raw = b"" if body is None else json.dumps(body).encode()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    response = asyncio.run(server._ingress(route, method, headers, raw, None))
    return response.status_code, json.loads(bytes(response.body))


def _infer_body(rows: list[list[float]], **extra: Any) -> dict[str, Any]:
    flat = [x for row in rows for x in row]
    tensor = {"name": "features", "shape": [len(rows), 4], "datatype": "FP32", "data": flat}
    return {"inputs": [tensor], **extra}


def test_oip_infer_answers_tensors_billed_per_example(tmp_path: Path) -> None:
    core = TensorCore(load(classifier(tmp_path / "m" / "model.onnx")))
    server = make_server(core)
    rows = [[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 1.0, 0.0]]
    for name in (LABEL, "shop"):  # the version label or the endpoint name
        status, body = _call(server, f"v2/models/{name}/infer", _infer_body(rows, id="r-1"))
        assert status == 200, body
        assert (body["model_name"], body["model_version"], body["id"]) == (name, "1", "r-1")
        assert body["parameters"] == {"units": 2.0, "unit": "input"}
        out = {o["name"]: o for o in body["outputs"]}
        assert (out["logits"]["datatype"], out["logits"]["shape"]) == ("FP32", [2, 3])
        logits, _ = expected(rows)
        assert out["logits"]["data"] == pytest.approx(logits.ravel().tolist(), abs=1e-5)
        assert (out["label"]["datatype"], out["label"]["shape"], out["label"]["data"]) == (
            "INT64",
            [2],
            [0, 1],
        )
    status, body = _call(server, "v2/models/shop/versions/1/infer", _infer_body(rows))
    assert status == 200 and "id" not in body
    wanted = _infer_body(rows[:1], outputs=[{"name": "label"}])
    status, body = _call(server, f"v2/models/{LABEL}/infer", wanted)
    assert [o["name"] for o in body["outputs"]] == ["label"] and body["outputs"][0]["data"] == [0]
    # Nested data in the tensor's shape is taken as well as flat data.
    nested = {
        "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": rows[:1]}]
    }
    assert _call(server, f"v2/models/{LABEL}/infer", nested)[0] == 200
    assert core.records == [("v2/infer", 200)] * 5  # metered under one route name


@pytest.mark.parametrize(
    ("route", "body", "status", "code", "message"),
    [
        ("v2/models/other:1/infer", _infer_body([[1, 2, 3, 4]]), 404, "model_not_found", "serves"),
        (
            "v2/models/shop/versions/2/infer",
            _infer_body([[1, 2, 3, 4]]),
            404,
            "model_not_found",
            "",
        ),
        ("v2/models/shop/infer", {"inputs": []}, 400, "bad_request", "inputs"),
        (
            "v2/models/shop/infer",
            {"input": 1},
            400,
            "bad_request",
            "input: Extra inputs are not permitted",
        ),
        (
            "v2/models/shop/infer",
            {
                "inputs": [
                    {"name": "features", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}
                ]
            },
            422,
            "bad_input",
            "datatype 'FP64'; the model takes FP32",
        ),
        (
            "v2/models/shop/infer",
            {
                "inputs": [
                    {"name": "features", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
                ]
            },
            422,
            "bad_input",
            "shape [2, 4] holds 8 values; data has 4",
        ),
        (
            "v2/models/shop/infer",
            {
                "inputs": [
                    {"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}
                ]
            },
            422,
            "bad_input",
            "expected one example of shape [4], got [3]",
        ),
        (
            "v2/models/shop/infer",
            {"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [1]}]},
            422,
            "bad_input",
            "unknown input 'pixels'",
        ),
        ("v2/models/shop/infer", _infer_body([[1, 2, 3, 4]] * 65), 413, "payload_too_large", "64"),
        ("v2/models/shop/nothing", None, 404, "not_found", "no route"),
    ],
)
def test_oip_infer_refuses_what_the_model_cannot_take(
    tmp_path: Path, route: str, body: Any, status: int, code: str, message: str
) -> None:
    core = TensorCore(load(classifier(tmp_path / "m" / "model.onnx")))
    got, answer = _call(make_server(core), route, body)
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert message in answer["error"]["message"]
    assert all(s == status and r == "v2/infer" for r, s in core.records)  # errors only


def test_oip_health_and_metadata_are_keyed_not_metered(tmp_path: Path) -> None:
    core = TensorCore(load(classifier(tmp_path / "m" / "model.onnx")))
    server = make_server(core)
    assert _call(server, "v2/health/live", method="GET") == (200, {"live": True})
    assert _call(server, "v2/health/ready", method="GET") == (200, {"ready": True})
    assert _call(server, "v2/models/shop/ready", method="GET") == (
        200,
        {"name": "shop", "ready": True},
    )
    status, meta = _call(server, f"v2/models/{LABEL}", method="GET")
    assert status == 200 and (meta["name"], meta["versions"]) == (LABEL, ["1"])
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("logits", "FP32", [-1, 3]),
        ("probabilities", "FP32", [-1, 3]),
        ("label", "INT64", [-1]),
    ]
    assert _call(server, "v2/models/other", method="GET")[0] == 404
    assert _call(server, "v2/health/live", method="POST")[0] == 405
    status, body = _call(server, "v2/health/live", method="GET", key="gck_k9_nope")
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    assert _call(server, "v2/models/shop/infer", _infer_body([[1, 2, 3, 4]]), key="x")[0] == 401
    assert core.records == []  # none of these ran the model or was billed


def test_oip_routes_are_for_tensor_models_only(tmp_path: Path) -> None:
    core = TensorCore(load(classifier(tmp_path / "m" / "model.onnx")), recipe="tabular")
    server = make_server(core)
    status, body = _call(server, "v2/health/ready", method="GET")
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body = _call(server, "v2/models/shop/infer", _infer_body([[1, 2, 3, 4]]))
    assert status == 404 and "tensor models (ONNX) only" in body["error"]["message"]


def test_the_oip_paths_load_as_an_openapi_document() -> None:
    """What ``serving.openapi_dataplane`` adds for an oip spec: schemathesis (a strict loader)
    reads it, and the infer body is documented inline (no references left to resolve)."""
    base = "/v1/endpoints/shop"
    paths = oip_schema.openapi_paths(base)
    doc = {"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": paths}
    operations = list(schemathesis.openapi.from_dict(doc).get_all_operations())
    assert len(operations) == 4
    body = paths[f"{base}/v2/models/{{model}}/infer"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert "$ref" not in json.dumps(schema) and schema["required"] == ["inputs"]
    tensor = schema["properties"]["inputs"]["items"]
    assert set(tensor["required"]) == {"name", "shape", "datatype", "data"}


# -- evaluation jobs ------------------------------------------------------------------------


def test_an_evaluation_scores_the_first_output_on_the_validation_rows(tmp_path: Path) -> None:
    model = classifier(tmp_path / "model" / "model.onnx")
    rows = np.random.default_rng(0).normal(size=(40, 4)).round(3).tolist()
    kinds = expected(rows)[0].argmax(axis=1)  # the truth is what the model says: all right
    kinds[0] = (kinds[0] + 1) % 3  # but one, which may land in either split
    data = tmp_path / "data"
    data.mkdir()
    lines = ["a,b,c,d,kind"] + [
        ",".join(map(str, r)) + f",{k}" for r, k in zip(rows, kinds, strict=True)
    ]
    (data / "rows.csv").write_text("\n".join(lines) + "\n")
    ds = LocalDataset.from_folder(data, validation_ratio=0.25)
    target = {"target": "kind"}
    out = OnnxModel().evaluate(LocalRunContext(tmp_path / "run"), model.parent, ds, target)
    held = out.details["samples"]
    assert out.details["output"] == "logits" and out.details["task"] == "classification"
    assert 0 < held < 40 and out.metrics["accuracy"] in (1.0, (held - 1) / held)

    check = spec_of("onnx").check_dataset
    assert check is not None
    check(ds, target)
    with pytest.raises(DatasetMismatch, match=r"params\.target"):
        check(ds, {})
    (data / "rows.csv").write_text("a,b,c,d,kind\n" + "1,2,x,4,0\n" * 12)
    words = LocalDataset.from_folder(data, validation_ratio=0.5)
    with pytest.raises(DatasetMismatch, match="column 'c' is not numeric"):
        OnnxModel().evaluate(LocalRunContext(tmp_path / "r2"), model.parent, words, target)
