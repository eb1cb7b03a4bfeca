"""The served OpenAPI schema, made to tell the truth about errors and authentication.

FastAPI documents only what a route declares; our errors come from dependencies (auth),
middleware (body limits) and services (404/409), so a generated client would not know them.
This adds, to every operation, the error answers it can give, each with the JSON error shape,
and marks the few public operations as needing no key.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gureum.schemas.common import ErrorBody

# Operations that need no key (everything else takes `Authorization: Bearer <key>`).
PUBLIC = frozenset({("get", "/v1/health")})
_MUTATIONS = frozenset({"post", "put", "patch", "delete"})
_ERRORS = {
    "400": "malformed request: an unreadable cursor, archive or batch",
    "401": "missing, malformed, invalid, expired or revoked API key",
    "403": "the key's role does not allow this",
    "404": "no such resource, or one the key may not see",
    "409": "conflicts with the resource's current state",
    "413": "the request body is over the limit",
    "422": "the request is well-formed but invalid; details say which field",
    "429": "too many requests or streams for this key; retry after Retry-After seconds",
}
_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}


def _error_codes(method: str, path: str, op: dict[str, Any]) -> list[str]:
    """What this operation can answer besides success (a superset is safe for a client)."""
    codes = ["400", "422"]
    if (method, path) not in PUBLIC:
        codes += ["401", "403"]
    if "{" in path or method in _MUTATIONS:
        codes += ["404", "409"]
    if "requestBody" in op or method in _MUTATIONS:
        codes.append("413")
    if path.endswith("/stream") or "text/event-stream" in str(op.get("responses", {})):
        codes.append("429")
    return codes


def _document_errors(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, model_schema in (
        ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        .get("$defs", {})
        .items()
    ):
        components.setdefault(name, model_schema)
    body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    body.pop("$defs", None)
    components.setdefault("ErrorBody", body)
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            if method not in {"get", "put", "post", "patch", "delete", "head", "options"}:
                continue
            responses = op.setdefault("responses", {})
            if (method, path) in PUBLIC:
                op["security"] = []
            for code in _error_codes(method, path, op):
                entry = responses.setdefault(code, {"description": _ERRORS[code]})
                # FastAPI's own 422 names its HTTPValidationError; ours is always the error shape.
                entry["content"] = {"application/json": {"schema": _ERROR_REF}}
                if code == "429":
                    entry.setdefault("headers", {})["Retry-After"] = {
                        "schema": {"type": "integer"},
                        "description": "seconds to wait",
                    }
    for unused in ("HTTPValidationError", "ValidationError"):
        if unused not in str(schema.get("paths")):
            components.pop(unused, None)


def install_openapi(app: FastAPI) -> None:
    """Serve the schema with bearer auth and every operation's error answers documented."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a gureum API key"}
            }
            schema["security"] = [{"bearer": []}]
            _document_errors(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
