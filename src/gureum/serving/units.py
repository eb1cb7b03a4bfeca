"""What one served request is billed for, and the checks on its body before any model runs.

Pure functions over bytes and JSON values (no Ray, no torch): the replica calls them on its hot
path, so they stay cheap, and they are tested without a server.

Units per recipe come from its ``RecipeSpec`` (``recipes.specs``); a recipe without a serving
spec is billed one unit per request.
"""

from __future__ import annotations

import json
import math
from typing import Any

from gureum.recipes.specs import serving_of

DEFAULT_UNIT = "request"
JSON_TYPES = ("application/json",)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# What any integer beyond 64 bits or number beyond a double must contain: 19 digits in a row
# or a three-digit exponent; looked for in the body with digits made 9 and the rest blank
# (bytes.translate and substring search: a regular expression costs 100s of microseconds).
_SHAPES = bytes(
    57 if chr(b).isdigit() and b < 128 else 101 if b in b"eE" else 43 if b == 43 else 32
    for b in range(256)
)
_DIGITS19 = b"9" * 19


def _has_long_number(body: bytes) -> bool:
    shapes = body.translate(_SHAPES)
    return _DIGITS19 in shapes or b"e999" in shapes or b"e+999" in shapes


class PayloadError(Exception):
    """A request body refused before it reaches the model; maps onto one HTTP error reply."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class ModelFault(Exception):
    """The model failed a request in a way the caller did not cause (a sandboxed predictor
    raised, hung, ran out of memory, or answered outside its schema): an HTTP ``status`` and
    ``code``, a ``what`` for the caller, and a ``detail`` only for the replica's log."""

    def __init__(self, status: int, code: str, what: str, detail: str = "") -> None:
        super().__init__(f"{code}: {what}")
        self.status, self.code, self.what, self.detail = status, code, what, detail


def unit_of(recipe: str | None, predictor: object = None) -> str:
    """The unit a plan prices; a served predictor may name its own (``predictor.unit``)."""
    own = getattr(predictor, "unit", None)
    if isinstance(own, str) and own:
        return own
    serving = serving_of(recipe)
    return serving.unit if serving else DEFAULT_UNIT


def count_units(recipe: str | None, inputs: list[Any], outputs: list[Any]) -> float:
    """Units one request used, given the inputs it sent and the outputs it was answered with."""
    serving = serving_of(recipe)
    return serving.count(inputs, outputs) if serving else 1.0


def is_json(content_type: str | None) -> bool:
    """``application/json`` or any ``+json`` type, in UTF-8; a missing type is taken as JSON
    (clients that send JSON without saying so are common; a form or a file says what it is)."""
    if content_type is None or not content_type.strip():
        return True
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media not in JSON_TYPES and not media.endswith("+json"):
        return False
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False
    return True


def read_json(body: bytes, content_type: str | None) -> Any:
    """The JSON value of a request body; ``PayloadError`` (415/400) when it is not JSON."""
    if not is_json(content_type):
        raise PayloadError(
            415,
            "unsupported_media_type",
            f"send the body as JSON with Content-Type: application/json (got {content_type!r})",
        )
    if not body.strip():
        raise PayloadError(400, "bad_request", "the request body is empty; send a JSON object")
    try:
        # The number checks cost a Python call per number: only for a body that may need them.
        checks: dict[str, Any] = (
            {"parse_int": _int64, "parse_float": _finite} if _has_long_number(body) else {}
        )
        return json.loads(body.decode("utf-8-sig"), parse_constant=_no_constant, **checks)
    except UnicodeDecodeError:
        raise PayloadError(400, "bad_request", "the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise PayloadError(
            400, "bad_request", f"the request body is not valid JSON: {exc}"
        ) from None
    except (ValueError, RecursionError) as exc:  # NaN, a number too large, deep nesting
        raise PayloadError(
            400, "bad_request", f"the request body is not valid JSON: {exc}"
        ) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _int64(text: str) -> int:
    """A JSON integer a model can take: within 64 bits (a seed goes to torch, a row's value to
    numpy; a larger one made them raise, a 500 for what is the caller's mistake)."""
    value = int(text) if len(text) <= 20 else INT64_MAX + 1
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"integer {text[:24]}{'...' if len(text) > 24 else ''} is over 64 bits")
    return value


def _finite(text: str) -> float:
    """A JSON number that fits a double (``1e400`` would be read as infinity)."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:24]} is too large for a double")
    return value


def parse_predict_body(
    body: bytes, content_type: str | None, max_items: int, max_bytes: int | None = None
) -> list[Any]:
    """The inputs of a ``/predict`` body: ``{"inputs": [...]}``, or ``{"input": x}`` for one.

    Unknown fields are refused rather than ignored, so a misspelt ``"inputs"`` is not mistaken
    for an empty request.
    """
    if max_bytes is not None and len(body) > max_bytes:
        raise PayloadError(
            413, "payload_too_large", f"the request body is {len(body)} bytes; at most {max_bytes}"
        )
    data = read_json(body, content_type)
    shape = 'the body must be a JSON object {"inputs": [...]} (or {"input": ...} for one input)'
    if not isinstance(data, dict):
        raise PayloadError(400, "bad_request", shape)
    extra = sorted(set(data) - {"inputs", "input"})
    if extra:
        raise PayloadError(400, "bad_request", f"unknown field(s) {', '.join(extra)}; {shape}")
    if "inputs" in data and "input" in data:
        raise PayloadError(400, "bad_request", 'give "inputs" or "input", not both')
    if "input" in data:
        inputs = [data["input"]]
    elif "inputs" in data:
        inputs = data["inputs"]
        if not isinstance(inputs, list):
            raise PayloadError(400, "bad_request", f'"inputs" must be a list; {shape}')
    else:
        raise PayloadError(400, "bad_request", shape)
    if not inputs:
        raise PayloadError(400, "bad_request", '"inputs" is empty; send at least one input')
    if len(inputs) > max_items:
        raise PayloadError(
            413,
            "payload_too_large",
            f"{len(inputs)} inputs in one request; at most {max_items}: split them up",
        )
    return inputs


def error_body(code: str, message: str, details: Any = None) -> bytes:
    """The API's error shape, ``{"error": {"code", "message", "details"}}``, as JSON bytes."""
    body = {"error": {"code": code, "message": message, "details": details}}
    return json.dumps(body, separators=(",", ":"), default=str).encode()
