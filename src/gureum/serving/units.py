"""What one served request is billed for, and the checks on its body before any model runs.

Pure functions over bytes and JSON values (no Ray, no torch): the replica calls them on its hot
path, so they stay cheap, and they are tested without a server.

Units per recipe (what a plan's price per unit multiplies):

- ``image-generator``: images generated (the sum of each input's ``count``);
- ``image-classifier``: images classified (one per input);
- ``tabular``: rows predicted (one per input);
- ``text-generator``: tokens, prompt plus completion, as the model itself counts them: the
  ``usage`` each output carries (a Hugging Face model's tokenizer tokens; UTF-8 bytes for the
  byte-level GPT, whose tokens are bytes). An output without ``usage`` is counted in UTF-8 bytes
  of prompt and text, the byte-level GPT's measure;
- anything else (``script`` models, unknown recipes): one unit per request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

UNITS: dict[str, str] = {
    "image-generator": "image",
    "image-classifier": "image",
    "tabular": "row",
    "text-generator": "token",
}
DEFAULT_UNIT = "request"
JSON_TYPES = ("application/json",)


class PayloadError(Exception):
    """A request body refused before it reaches the model; maps onto one HTTP error reply."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def unit_of(recipe: str | None) -> str:
    return UNITS.get(recipe or "", DEFAULT_UNIT)


def count_units(recipe: str | None, inputs: list[Any], outputs: list[Any]) -> float:
    """Units one request used, given the inputs it sent and the outputs it was answered with."""
    unit = unit_of(recipe)
    if unit == DEFAULT_UNIT:
        return 1.0
    if recipe == "image-generator":
        return float(sum(_images(i, o) for i, o in zip(inputs, outputs, strict=False)))
    if recipe == "text-generator":
        return float(sum(_tokens(o) for o in outputs))
    return float(len(inputs))  # one classified image or one predicted row per input


def _images(item: Any, output: Any) -> int:
    """Images delivered; the requested ``count`` when the output does not list them."""
    if isinstance(output, Mapping) and isinstance(output.get("images"), list):
        return len(output["images"])
    count = item.get("count", 1) if isinstance(item, Mapping) else 1
    return count if isinstance(count, int) and count > 0 else 1


def _tokens(output: Any) -> int:
    if not isinstance(output, Mapping):
        return 0
    usage = output.get("usage")
    if isinstance(usage, Mapping):
        counts = (usage.get("prompt_tokens"), usage.get("completion_tokens"))
        return sum(n for n in counts if isinstance(n, int) and n > 0)
    texts = (output.get("prompt"), output.get("text"))
    return sum(len(t.encode("utf-8")) for t in texts if isinstance(t, str))


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
        return json.loads(body.decode("utf-8-sig"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise PayloadError(400, "bad_request", "the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise PayloadError(
            400, "bad_request", f"the request body is not valid JSON: {exc}"
        ) from None
    except (ValueError, RecursionError) as exc:  # NaN/Infinity, or nesting deeper than Python's
        raise PayloadError(
            400, "bad_request", f"the request body is not valid JSON: {exc}"
        ) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


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
