"""The data plane's own OpenAPI schema (``GET /v1/endpoints/{E}/openapi.json``), and what the
fuzzer found in a replica's ingress, each reached as a consumer reaches it: a real
``ModelServer`` with its real key table and meter (a fake control plane, no Ray) over real
recipe predictors (a tiny byte GPT, a fitted tabular pipeline).

Findings (each a 500 "model_error" for what is the caller's mistake, before the fix):
- a JSON integer beyond 64 bits (a ``seed`` of 2**70) reached torch's ``manual_seed``;
- a number beyond a double (``1e400``, read as infinity) or beyond 64 bits reached numpy;
- a tabular number column given ``"inf"`` reached scikit-learn, which refuses infinity.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
import torch
from sklearn.feature_extraction import DictVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline

from gureum.recipes import gpt
from gureum.recipes.base import ModelConfig, Predictor
from gureum.recipes.tabular import TabularPredictor, features
from gureum.recipes.text_generator import TextPredictor, _gpt_lm
from gureum.serving import deployment
from gureum.serving import replica as replica_module
from gureum.serving.openapi_dataplane import document
from gureum.serving.replica import ReplicaCore
from gureum.serving.units import PayloadError, read_json
from tests.unit.test_serving_replica import FakeControl, QuietSpool, key, model, spec

TOKEN = "gck_k1_s3cret"
AUTH = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}


def text_predictor() -> TextPredictor:
    torch.manual_seed(0)
    net = gpt.TinyGPT(block_size=16, n_layer=1, n_head=1, n_embd=8).eval()
    return TextPredictor(_gpt_lm(net, torch.device("cpu")))


def tabular_predictor() -> TabularPredictor:
    types = {"x": "number", "color": "category"}
    rows = [{"x": str(i), "color": "rgb"[i % 3]} for i in range(9)]
    pipeline = Pipeline(
        [
            ("vectorize", DictVectorizer(sparse=False)),
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("model", Ridge()),
        ]
    )
    pipeline.fit([features(r, types) for r in rows], np.arange(9.0))
    return TabularPredictor(pipeline, ModelConfig("tabular", {}, {"columns": types}))


class Served:
    """One replica's ingress serving ``recipe``; ``records`` are the usage it spooled."""

    def __init__(self, tmp: Path, mp: pytest.MonkeyPatch, recipe: str, predictor: Predictor):
        self.control = FakeControl([key("k1", "s3cret", 7, "acme", quota=1000)])

        def core(spec_: Any, model_: Any, **kw: Any) -> ReplicaCore:
            return ReplicaCore(spec_, model_, predictor=predictor, control=self.control, **kw)

        mp.setattr(deployment, "ReplicaCore", core)
        self.server = deployment.ModelServer(spec(tmp / recipe).model_dump())
        served = model(recipe=recipe, label="shop:1").model_dump()
        self.server.reconfigure({"model": served, "max_batch_size": 1})

    def call(
        self, route: str, body: Any = None, method: str = "POST", headers: Any = None
    ) -> tuple[int, dict[str, str], Any]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent = AUTH if headers is None else headers
        r = asyncio.run(self.server._ingress(route, method, sent, raw, None))
        data = bytes(r.body)
        return r.status_code, dict(r.headers), json.loads(data) if data else None

    @property
    def records(self) -> list[dict[str, Any]]:
        self.server.core.spool.flush()
        return self.control.records


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(replica_module, "UsageSpool", QuietSpool)
    monkeypatch.setattr(replica_module, "REFRESH_S", 3600.0)
    made: list[Served] = []

    def make(recipe: str, predictor: Predictor) -> Served:
        made.append(Served(tmp_path, monkeypatch, recipe, predictor))
        return made[-1]

    yield make
    for s in made:
        s.server.core.close()


# -- the schema route -----------------------------------------------------------------------


def test_a_text_generator_documents_predict_and_the_openai_routes(serve: Any) -> None:
    s = serve("text-generator", text_predictor())
    status, headers, doc = s.call("openapi.json", method="GET", body=b"")
    assert status == 200 and headers["content-type"] == "application/json"
    assert doc["openapi"].startswith("3.1") and doc["info"]["version"] == "shop:1"
    base = "/v1/endpoints/shop"
    assert sorted(doc["paths"]) == [
        f"{base}/{p}"
        for p in (
            "chat/completions",
            "completions",
            "models",
            "models/{model}",
            "openapi.json",
            "predict",
        )
    ]
    predict = doc["paths"][f"{base}/predict"]["post"]
    assert {"400", "401", "409", "413", "415", "422", "429", "500", "503"} <= set(
        predict["responses"]
    )
    assert predict["responses"]["429"]["headers"]["Retry-After"]["schema"] == {"type": "integer"}
    assert predict["responses"]["500"]["headers"]["x-request-id"]
    assert "Idempotent-Replayed" in predict["responses"]["200"]["headers"]
    assert predict["parameters"][0]["name"] == "Idempotency-Key"
    assert doc["security"] == [{"bearer": []}]
    chat = doc["paths"][f"{base}/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(chat) == {"application/json", "text/event-stream"}
    # A consumer's client can be generated from it: schemathesis (a strict loader) reads it.
    loaded = schemathesis.openapi.from_dict(doc)
    assert len(list(loaded.get_all_operations())) == 6
    assert s.records == []  # not metered: no model ran


def test_a_tabular_schema_names_the_models_columns_and_no_openai_routes(serve: Any) -> None:
    s = serve("tabular", tabular_predictor())
    status, _, doc = s.call("openapi.json", method="GET", body=b"")
    assert status == 200
    assert sorted(doc["paths"]) == ["/v1/endpoints/shop/openapi.json", "/v1/endpoints/shop/predict"]
    row = doc["components"]["schemas"]["Row"]
    assert sorted(row["properties"]) == ["color", "x"]
    number = {a.get("type") for a in row["properties"]["x"]["anyOf"]}
    assert number == {"number", "string", "null"}


def test_the_schema_is_for_valid_keys_only_and_get_only(serve: Any) -> None:
    s = serve("tabular", tabular_predictor())
    for headers in ({}, {"authorization": "Bearer gck_k1_wrong"}):
        status, _, body = s.call("openapi.json", method="GET", body=b"", headers=headers)
        assert status == 401 and body["error"]["code"] == "unauthorized"
    status, _, body = s.call("openapi.json", method="POST", body=b"")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"


# -- what the fuzzer found ------------------------------------------------------------------


def test_a_seed_over_64_bits_is_a_400_not_a_model_error(serve: Any) -> None:
    s = serve("text-generator", text_predictor())
    status, _, body = s.call("predict", {"input": {"prompt": "hi", "max_tokens": 2}})
    assert status == 200 and body["units"] > 0
    for route, sent in (
        ("predict", {"input": {"prompt": "hi", "max_tokens": 2, "seed": 2**70}}),
        ("completions", {"prompt": "hi", "max_tokens": 2, "seed": -(2**63) - 1}),
        ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "seed": 2**64}),
    ):
        status, _, body = s.call(route, sent)
        assert (status, body["error"]["code"]) == (400, "bad_request"), (route, body)
        assert "64 bits" in body["error"]["message"]
    # Within 64 bits it is the model's seed as before.
    status, _, _ = s.call("completions", {"prompt": "hi", "max_tokens": 2, "seed": 2**63 - 1})
    assert status == 200
    assert [r["status"] for r in s.records] == [200, 400, 400, 400, 200]


@pytest.mark.parametrize(
    ("row", "status", "code"),
    [
        (b'{"input": {"x": "inf"}}', 422, "bad_input"),
        (b'{"input": {"x": "-Infinity"}}', 422, "bad_input"),
        (b'{"input": {"x": "1e999"}}', 422, "bad_input"),
        (b'{"input": {"x": 1e400}}', 400, "bad_request"),
        (b'{"input": {"x": 1' + b"0" * 40 + b"}}", 400, "bad_request"),
    ],
)
def test_a_tabular_number_that_is_not_finite_is_refused_not_a_model_error(
    serve: Any, row: bytes, status: int, code: str
) -> None:
    s = serve("tabular", tabular_predictor())
    assert s.call("predict", {"input": {"x": 1e300, "color": "r"}})[0] == 200  # large is fine
    got, _, body = s.call("predict", row)
    assert (got, body["error"]["code"]) == (status, code), body
    assert len(json.dumps(body)) < 400  # the value is quoted short, if at all


@pytest.mark.parametrize(
    ("number", "refused"),
    [
        (b"9223372036854775807", False),
        (b"-9223372036854775808", False),
        (b"9223372036854775808", True),
        (b"-9223372036854775809", True),
        (b"1" + b"0" * 310 + b".0", True),  # infinity without an exponent
        (b"1" + b"0" * 300 + b".5", False),
        (b"1E+0400", True),
        (b"1.7976931348623157e308", False),
        (b"1.8e308", True),
        (b"1e-400", False),  # underflows to 0.0, a number
    ],
)
def test_numbers_beyond_64_bits_or_a_double_are_refused_wherever_they_are(
    number: bytes, refused: bool
) -> None:
    body = b'{"inputs": [{"a": [' + number + b"]}]}"
    if refused:
        with pytest.raises(PayloadError) as e:
            read_json(body, "application/json")
        assert e.value.status == 400
    else:
        assert read_json(body, "application/json")["inputs"][0]["a"][0] == json.loads(number)


@pytest.mark.parametrize(
    ("recipe", "operations"),
    [
        ("text-generator", 6),
        ("tabular", 2),
        ("image-classifier", 2),
        ("image-generator", 2),
        ("image-diffusion", 2),
        (None, 2),
    ],
)
def test_every_recipes_schema_loads_and_documents_its_outputs(
    recipe: str | None, operations: int
) -> None:
    doc = json.loads(document("shop", recipe, "shop:1", 64))
    assert len(list(schemathesis.openapi.from_dict(doc).get_all_operations())) == operations
    inputs = doc["components"]["schemas"]["PredictInputs"]["properties"]["inputs"]
    assert (inputs["minItems"], inputs["maxItems"]) == (1, 64)
    outputs = doc["components"]["schemas"]["PredictResponse"]["properties"]["outputs"]
    assert ("$ref" in outputs["items"]) == (recipe is not None)


def test_an_onnx_endpoint_documents_the_open_inference_protocol_routes() -> None:
    doc = json.loads(document("clf", "onnx", "clf:1", 64))
    assert "/v1/endpoints/clf/v2/models/{model}/infer" in doc["paths"]
    assert "/v1/endpoints/clf/v2/health/ready" in doc["paths"]
    assert "/v1/endpoints/clf/chat/completions" not in doc["paths"]
    schemathesis.openapi.from_dict(doc)  # a loadable document


def test_a_user_predictors_exported_schemas_type_its_inputs_and_outputs() -> None:
    """The JSON Schemas a predictor exported in the sandbox, nested models included, replace
    "any value" (their ``$defs`` rebased into the document's components)."""
    exported = {
        "input_schema": {
            "$defs": {"Item": {"type": "object", "properties": {"n": {"type": "integer"}}}},
            "type": "object",
            "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
            "required": ["items"],
        },
        "output_schema": {"type": "object", "properties": {"total": {"type": "integer"}}},
    }
    doc = json.loads(document("mine", "predictor", "mine:1", 8, (), json.dumps(exported)))
    schemas = doc["components"]["schemas"]
    items = schemas["PredictInputs"]["properties"]["inputs"]["items"]
    assert items == {"$ref": "#/components/schemas/UserInput"}
    assert schemas["UserInput"]["properties"]["items"]["items"] == {
        "$ref": "#/components/schemas/UserItem"
    }
    assert schemas["UserItem"]["properties"]["n"] == {"type": "integer"}
    outputs = schemas["PredictResponse"]["properties"]["outputs"]["items"]
    assert outputs == {"$ref": "#/components/schemas/UserOutput"}
    assert "$defs" not in json.dumps(doc)
    schemathesis.openapi.from_dict(doc)
