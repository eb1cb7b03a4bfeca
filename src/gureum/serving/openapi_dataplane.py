"""The data plane's OpenAPI 3.1 schema, one per endpoint: what a consumer's client may send
to ``/v1/endpoints/{E}/...`` and every answer it can get back, so that a generated client
works and a fuzzer can hold the replica to it (tests/integration/test_data_plane_fuzz.py).

Built from pydantic models of the bodies the replica actually accepts (``units``,
``openai_compat`` and the recipes' predictors check the same rules) and of what it answers:
one input and one output as the recipe's ``ServingSpec`` names them (``recipes.io_schemas``
for the built-ins). The OpenAI routes are documented for recipes whose spec says ``openai``.

The schema is served to valid keys only (consumer keys and data-plane workspace keys), keyed
and rate-limited like ``GET /models`` but not metered: it names the endpoint's model version
and recipe, which a stranger has no business learning, and a consumer who can call the
endpoint can read it.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.json_schema import models_json_schema

from gureum.recipes.io_schemas import INT64_MAX, INT64_MIN, Category, Number, Row, Stop
from gureum.recipes.params import MAX_TOKENS
from gureum.recipes.specs import serving_of
from gureum.schemas.common import ErrorBody
from gureum.serving import oip_schema
from gureum.serving.idempotency import MAX_REQUEST_KEY
from gureum.serving.spec import ModelRef

OPENAPI = "openapi.json"
_REF = "#/components/schemas/{model}"


# -- predict inputs and outputs: the recipe's spec names them ---------------------------------


def _row(columns: tuple[tuple[str, str], ...]) -> Any:
    """The row of a tabular model whose columns are known (name -> "number" or "category")."""
    if not columns:
        return Row
    fields: dict[str, Any] = {
        f"c{i}": (Number if kind == "number" else Category, Field(None, alias=name))
        for i, (name, kind) in enumerate(columns)
    }
    return create_model("Row", __doc__=Row.__doc__, __base__=Row, **fields)


# -- OpenAI shapes (text generators) ----------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user"]
    content: str | list[TextPart]


class AssistantMessage(BaseModel):
    """An earlier answer in the conversation: its content may be left out."""

    role: Literal["assistant"]
    content: str | list[TextPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"] | None = None


class Sampling(BaseModel):
    """Fields both OpenAI routes read; others are accepted and ignored (``top_p``, ``user``),
    or refused with a 400 when they ask for what is not offered (tools, logprobs, ``n`` > 1)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "dependentSchemas": {
                "stream_options": {
                    "properties": {"stream": {"const": True}},
                    "required": ["stream"],
                }
            }
        },
    )
    model: str | None = None
    tools: Annotated[list[Any], Field(max_length=0)] | None = None
    logprobs: Literal[False] | None = None
    response_format: ResponseFormat | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(None, ge=0, le=2)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: Stop | None = None
    n: Literal[1] | None = None
    stream: bool | None = Field(None, description="true: server-sent events")
    stream_options: StreamOptions | None = Field(None, description='only with "stream": true')


class ChatRequest(Sampling):
    messages: list[Message | AssistantMessage] = Field(min_length=1)


class CompletionRequest(Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    echo: Literal[False] | None = Field(None, description="the prompt is never echoed")
    best_of: Literal[1] | None = None


class TokenUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AnswerMessage(BaseModel):
    role: Literal["assistant"]
    content: str
    refusal: None


class ChatChoice(BaseModel):
    index: int
    message: AnswerMessage
    logprobs: None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: None
    choices: list[ChatChoice]
    usage: TokenUsage


class TextChoice(BaseModel):
    index: int
    text: str
    logprobs: None
    finish_reason: Literal["stop", "length"]


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: None
    choices: list[TextChoice]
    usage: TokenUsage


class ModelObject(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelObject]


# -- the document -----------------------------------------------------------------------------

_ERRORS = {
    "400": "malformed request: not JSON, unknown fields, a number beyond 64 bits or a double, "
    "a bad Idempotency-Key, an unsupported OpenAI option",
    "401": "missing, unknown or revoked key",
    "404": "no such model",
    "409": "a request with this Idempotency-Key is still being answered; retry",
    "413": "the body, the number of inputs or the prompt is over the limit",
    "415": "the body is not JSON in UTF-8",
    "422": "the model refused an input, or the Idempotency-Key was used with another body",
    "429": "rate limit, monthly quota or open streams of this key used up",
    "500": "the model failed; the answer names a request id, the cause stays in the log",
    "503": "the endpoint is starting or cannot confirm keys or quota with its control plane",
}
_RETRY = {"429", "409", "503"}
_EVENT = {
    "type": "object",
    "properties": {
        "data": {"type": "string", "description": "an OpenAI chunk as JSON, last [DONE]"},
        "event": {"type": "string"},
    },
    "required": ["data"],
}
_HEADER = {"schema": {"type": "string"}}


def _answers(codes: str, ok: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"200": ok}
    for code in codes.split():
        entry: dict[str, Any] = {
            "description": _ERRORS[code],
            "content": {"application/json": {"schema": {"$ref": _REF.format(model="ErrorBody")}}},
        }
        if code in _RETRY:
            entry["headers"] = {
                "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
            }
        if code == "500":
            entry["headers"] = {"x-request-id": {"description": "quote it to report", **_HEADER}}
        out[code] = entry
    return out


def _json(name: str, description: str, stream: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": _REF.format(model=name)}}}
    if stream:
        # One server-sent event (OpenAPI 3.1 reads an event stream's schema per event).
        content["text/event-stream"] = {"schema": _EVENT}
    return {"description": description, "content": content}


def _computed(name: str, description: str, stream: bool = False) -> dict[str, Any]:
    ok = _json(name, description, stream)
    ok["headers"] = {
        "x-gureum-model": {"description": "the version that answered", **_HEADER},
        "Idempotent-Replayed": {
            "description": "true: replayed from this replica's cache, not computed or billed",
            "schema": {"type": "string", "enum": ["true"]},
        },
    }
    return ok


_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "retry safely: the same key and body on the same replica is replayed, not "
    "billed; the same key with another body is a 422",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_REQUEST_KEY},
}


def _post(summary: str, body: str, ok: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": summary,
        "parameters": [_IDEMPOTENCY],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=body)}}},
        },
        "responses": _answers("400 401 409 413 415 422 429 500 503", ok),
    }


def _predict_models(
    recipe: str | None, max_inputs: int, columns: tuple[tuple[str, str], ...]
) -> list[type[BaseModel]]:
    serving = serving_of(recipe)
    item = serving.input_schema if serving and serving.input_schema is not None else Any
    output = serving.output_schema if serving and serving.output_schema is not None else Any
    if item is Row:  # a tabular model: its own columns named
        item = _row(columns)
    strict = ConfigDict(extra="forbid")
    many = create_model(
        "PredictInputs",
        __config__=strict,
        inputs=(list[item], Field(min_length=1, max_length=max_inputs)),  # type: ignore[valid-type]
    )
    one = create_model("PredictInput", __config__=strict, input=(item, ...))
    answer = create_model(
        "PredictResponse",
        outputs=(list[output], ...),  # type: ignore[valid-type]
        model=(str, Field(description="the version's label")),
        units=(float, Field(description="what the call is billed for")),
        unit=(str, ...),
    )
    return [many, one, answer]


@functools.lru_cache(maxsize=8)
def document(
    endpoint: str,
    recipe: str | None,
    label: str,
    max_inputs: int,
    columns: tuple[tuple[str, str], ...] = (),
    user_schemas: str = "",
) -> bytes:
    """The schema of one endpoint serving ``label``, as JSON bytes (cached: it changes only
    with the version or the batch size). ``columns``: a tabular model's, named in its rows;
    ``user_schemas``: a user predictor's exported input and output JSON Schemas (JSON text)."""
    models: list[type[BaseModel]] = [ErrorBody, *_predict_models(recipe, max_inputs, columns)]
    serving = serving_of(recipe)
    text = bool(serving and serving.openai)
    if text:
        models += [ChatRequest, CompletionRequest, ChatCompletion, TextCompletion]
        models += [ModelObject, ModelList]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    schemas: dict[str, Any] = defs.get("$defs", {})
    schemas["PredictBody"] = {"anyOf": [{"$ref": _REF.format(model=n)} for n in _PREDICT_BODY]}
    if user_schemas:
        _user_types(schemas, json.loads(user_schemas))
    base = f"/v1/endpoints/{endpoint}"
    predict = _post("predict", "PredictBody", _computed("PredictResponse", "the outputs"))
    paths: dict[str, Any] = {f"{base}/predict": {"post": predict}}
    if text:
        chat = _computed("ChatCompletion", "the answer", stream=True)
        done = _computed("TextCompletion", "the completion", stream=True)
        one = _json("ModelObject", "the model")
        paths[f"{base}/chat/completions"] = {"post": _post("OpenAI chat", "ChatRequest", chat)}
        paths[f"{base}/completions"] = {
            "post": _post("OpenAI completion", "CompletionRequest", done)
        }
        paths[f"{base}/models"] = {
            "get": {
                "summary": "OpenAI models",
                "responses": _answers("401 413 429 503", _json("ModelList", "the model")),
            }
        }
        paths[f"{base}/models/{{model}}"] = {
            "get": {
                "summary": "one OpenAI model",
                "parameters": [
                    {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": _answers("401 404 413 429 503", one),
            }
        }
    if serving and serving.oip:
        paths.update(oip_schema.openapi_paths(base))
    schema_answer = {
        "description": "this document",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    paths[f"{base}/{OPENAPI}"] = {
        "get": {"summary": "this schema", "responses": _answers("401 413 429 503", schema_answer)}
    }
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": f"gureum endpoint {endpoint}",
            "version": label,
            "description": f"serves {label} ({recipe or 'custom'}); 405 for other methods",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a consumer key"}
            },
        },
        "security": [{"bearer": []}],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


_PREDICT_BODY = ("PredictInputs", "PredictInput")


def _user_types(schemas: dict[str, Any], exported: dict[str, Any]) -> None:
    """Put a user predictor's input and output schemas (pydantic's JSON Schema, exported in the
    sandbox) in place of "any value": their ``$defs`` become components named ``User...``."""
    for kind, title in (("input_schema", "UserInput"), ("output_schema", "UserOutput")):
        schema = json.loads(json.dumps(exported.get(kind) or {}))
        for name, sub in schema.pop("$defs", {}).items():
            schemas[f"User{name}"] = _rebased(sub)
        schemas[title] = _rebased(schema)
    ref_in, ref_out = _REF.format(model="UserInput"), _REF.format(model="UserOutput")
    schemas["PredictInputs"]["properties"]["inputs"]["items"] = {"$ref": ref_in}
    schemas["PredictInput"]["properties"]["input"] = {"$ref": ref_in}
    schemas["PredictResponse"]["properties"]["outputs"]["items"] = {"$ref": ref_out}


def _rebased(node: Any) -> Any:
    """``#/$defs/X`` references made ``#/components/schemas/UserX``."""
    if isinstance(node, dict):
        out = {k: _rebased(v) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            out["$ref"] = _REF.format(model="User" + ref.removeprefix("#/$defs/"))
        return out
    if isinstance(node, list):
        return [_rebased(v) for v in node]
    return node


def served(endpoint: str, model: ModelRef, predictor: object, max_inputs: int) -> bytes:
    """The schema of the version a replica serves; a tabular model's columns (its predictor's
    ``types``) are named in its rows, so that a client can fill them."""
    types = getattr(predictor, "types", None)
    columns = tuple(sorted(types.items())) if isinstance(types, dict) else ()
    manifest = getattr(predictor, "manifest", None)
    user = ""
    if isinstance(manifest, BaseModel):
        user = manifest.model_dump_json(include={"input_schema", "output_schema"})
    return document(endpoint, model.recipe, model.label, max_inputs, columns, user)
