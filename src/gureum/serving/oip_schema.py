"""The Open Inference Protocol v2 shapes (KServe, Triton) and the routes' OpenAPI paths.

Pydantic only, so that an endpoint's OpenAPI document (``serving.openapi_dataplane``) can list
the routes without importing the replica (torch); ``serving.oip`` answers them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InferInput(_Strict):
    name: str = Field(min_length=1)
    shape: list[int] = Field(max_length=16)
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class RequestedOutput(_Strict):
    name: str = Field(min_length=1)
    parameters: dict[str, Any] | None = None


class InferRequest(_Strict):
    id: str | None = Field(None, max_length=256)
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=64)
    outputs: list[RequestedOutput] | None = Field(None, max_length=64)


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any]
    outputs: list[InferInput]


def openapi_paths(base: str) -> dict[str, Any]:
    """The protocol's paths under ``base`` (``/v1/endpoints/{E}``) for an endpoint's OpenAPI
    document: self-contained (schemas inline), for ``serving.openapi_dataplane`` to add when
    the spec is ``oip``."""

    def answer(schema: dict[str, Any], codes: str) -> dict[str, Any]:
        out: dict[str, Any] = {"200": _content("the answer", schema)}
        error = {"type": "object", "required": ["error"]}
        for code in codes.split():
            out[code] = _content("an error", error)
        return out

    name = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
    flag = {"type": "object"}
    infer = {
        "summary": "Open Inference Protocol v2 infer",
        "parameters": [name],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline(InferRequest)}},
        },
        "responses": answer(_inline(InferResponse), "400 401 404 409 413 415 422 429 500 503"),
    }
    read = "401 404 413 429 503"
    return {
        f"{base}/v2/health/live": {"get": {"summary": "live", "responses": answer(flag, read)}},
        f"{base}/v2/health/ready": {"get": {"summary": "ready", "responses": answer(flag, read)}},
        f"{base}/v2/models/{{model}}": {
            "get": {
                "summary": "model metadata",
                "parameters": [name],
                "responses": answer(flag, read),
            }
        },
        f"{base}/v2/models/{{model}}/infer": {"post": infer},
    }


def _inline(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` written in place (no refs to resolve)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def _content(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}
