"""The served OpenAPI schema tells a generated client the truth: errors, auth, formats."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Cloud

METHODS = {"get", "put", "post", "patch", "delete"}
ERROR_REF = "#/components/schemas/ErrorBody"


@pytest.fixture
def schema(cloud: Cloud) -> dict[str, Any]:
    resp = cloud.http(False).get("/v1/openapi.json")  # type: ignore[arg-type]
    assert resp.status_code == 200
    body: dict[str, Any] = resp.json()
    return body


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def _error_schema(op: dict[str, Any], code: str) -> str | None:
    answer = op["responses"].get(code)
    if answer is None:
        return None
    ref: str | None = answer["content"]["application/json"]["schema"].get("$ref")
    return ref


def test_every_operation_documents_its_errors_with_the_error_shape(
    schema: dict[str, Any],
) -> None:
    ops = _operations(schema)
    assert len(ops) > 50
    for method, path, op in ops:
        where = f"{method.upper()} {path}"
        public = op.get("security") == []
        expected = {"400", "422"} | (set() if public else {"401", "403"})
        if "{" in path or method != "get":
            expected |= {"404", "409"}
        if method != "get":
            expected.add("413")
        for code in sorted(expected):
            assert _error_schema(op, code) == ERROR_REF, f"{where} lacks {code}"
    # Only the liveness probe is public; everything else needs a key.
    public = [f"{m} {p}" for m, p, op in ops if op.get("security") == []]
    assert public == ["get /v1/health"]
    assert schema["security"] == [{"bearer": []}]


def test_error_shape_is_a_component(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    body = components["ErrorBody"]
    assert body["required"] == ["error"]
    detail = components[body["properties"]["error"]["$ref"].rsplit("/", 1)[-1]]
    assert {"code", "message"} <= set(detail["required"])


def test_formats_are_in_the_schema(schema: dict[str, Any]) -> None:
    params = {
        (p["name"], p["in"]): p["schema"]
        for _, _, op in _operations(schema)
        for p in op.get("parameters", [])
    }
    cursor = params[("cursor", "query")]
    pattern = next(s for s in cursor["anyOf"] if s.get("type") == "string")["pattern"]
    assert pattern == "^[A-Za-z0-9_-]+={0,2}$"


def test_nullable_fields_are_declared_nullable(schema: dict[str, Any]) -> None:
    """A field the server may send as null says so (pydantic: anyOf [..., null])."""
    page = next(
        s for name, s in schema["components"]["schemas"].items() if name.startswith("Page_")
    )
    assert {"type": "null"} in page["properties"]["next_cursor"]["anyOf"]
    key = schema["components"]["schemas"]["KeyOut"]["properties"]
    for field in ("expires_at", "revoked_at", "last_used_at"):
        assert {"type": "null"} in key[field]["anyOf"], field


def test_errors_the_schema_promises_are_what_the_server_sends(cloud: Cloud) -> None:
    """Spot checks of documented answers, with the error shape, including the once-500s."""
    http = cloud.http()
    no_key = cloud.http(False)  # type: ignore[arg-type]
    assert no_key.get("/v1/datasets").status_code == 401
    r = http.post("/v1/plans", json={"name": "big", "monthly_quota": 2**70})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert http.get("/v1/plans/big").status_code == 404  # nothing half-written
