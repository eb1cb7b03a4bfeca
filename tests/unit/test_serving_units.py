"""What a served request is billed for, and how a bad /predict body is refused (before any model
runs, so the replica is unharmed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gureum.serving.units import (
    PayloadError,
    count_units,
    error_body,
    parse_predict_body,
    read_json,
    unit_of,
)

JSON = "application/json"


def refused(body: bytes, content_type: str | None = JSON, max_items: int = 8) -> PayloadError:
    with pytest.raises(PayloadError) as info:
        parse_predict_body(body, content_type, max_items)
    return info.value


@pytest.mark.parametrize(
    ("recipe", "unit"),
    [
        ("image-generator", "image"),
        ("image-classifier", "image"),
        ("text-generator", "token"),
        ("tabular", "row"),
        ("script", "request"),
        ("someone-elses-recipe", "request"),
        (None, "request"),
    ],
)
def test_each_recipe_is_billed_in_its_own_unit(recipe: str | None, unit: str) -> None:
    assert unit_of(recipe) == unit


def test_generated_images_are_counted_as_delivered() -> None:
    inputs = [{"class": "dress", "count": 3}, {"class": "shirt"}]
    outputs = [{"images": ["a", "b", "c"]}, {"images": ["d"]}]
    assert count_units("image-generator", inputs, outputs) == 4.0
    # Outputs that do not list their images fall back on the counts asked for.
    assert count_units("image-generator", inputs, [{}, {}]) == 4.0


def test_classified_images_and_predicted_rows_count_one_per_input() -> None:
    labels = [{"label": "dress"}] * 3
    assert count_units("image-classifier", ["i1", "i2", "i3"], labels) == 3.0
    rows = [{"price": 1}, {"price": 2}]
    assert count_units("tabular", rows, [{"prediction": 0.5}] * 2) == 2.0


def test_tokens_are_the_models_own_count_else_utf8_bytes() -> None:
    outputs = [
        {"text": "ignored", "usage": {"prompt_tokens": 5, "completion_tokens": 12}},
        {"text": "x", "usage": {"prompt_tokens": 1, "completion_tokens": 2}},
    ]
    assert count_units("text-generator", ["a", "b"], outputs) == 20.0
    # Without usage: bytes, as the byte-level GPT reads them ("é" is two bytes).
    assert count_units("text-generator", ["hé"], [{"prompt": "hé", "text": "llo"}]) == 6.0


def test_a_script_or_unknown_model_bills_one_unit_per_request() -> None:
    assert count_units("script", [1, 2, 3], [1, 2, 3]) == 1.0
    assert count_units(None, [{}], [{}]) == 1.0


def test_predict_body_takes_a_list_of_inputs_or_one_input() -> None:
    body = json.dumps({"inputs": [{"class": "dress"}, {"class": "shirt", "seed": 2}]}).encode()
    assert parse_predict_body(body, JSON, 8) == [{"class": "dress"}, {"class": "shirt", "seed": 2}]
    assert parse_predict_body(b'{"input": "a prompt"}', JSON, 8) == ["a prompt"]
    assert parse_predict_body(b'{"input": null}', JSON, 8) == [None]  # the model judges values


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        "application/vnd.gureum+json",
        None,  # clients that do not say: taken as JSON
    ],
)
def test_json_content_types_are_accepted(content_type: str | None) -> None:
    assert parse_predict_body(b'{"inputs": [1]}', content_type, 8) == [1]


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",  # what curl -d sends unless told
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
    ],
)
def test_other_content_types_are_refused_with_415(content_type: str) -> None:
    err = refused(b'{"inputs": [1]}', content_type)
    assert (err.status, err.code) == (415, "unsupported_media_type")
    assert "application/json" in err.message


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"inputs": [NaN]}', "NaN is not a JSON number"),
        (b'{"inputs": [Infinity]}', "not a JSON number"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),  # deeper than Python recurses
        (b'["a", "b"]', "must be a JSON object"),
        (b'"a prompt"', "must be a JSON object"),
        (b"{}", "must be a JSON object"),
        (b'{"input": 1, "inputs": [1]}', "not both"),
        (b'{"imputs": [1]}', "unknown field(s) imputs"),
        (b'{"inputs": {"class": "dress"}}', '"inputs" must be a list'),
        (b'{"inputs": []}', "empty"),
    ],
)
def test_malformed_bodies_are_refused_with_400(body: bytes, says: str) -> None:
    err = refused(body)
    assert (err.status, err.code) == (400, "bad_request")
    assert says in err.message


def test_a_utf8_byte_order_mark_is_tolerated() -> None:
    assert parse_predict_body(b'\xef\xbb\xbf{"inputs": ["x"]}', JSON, 8) == ["x"]


def test_too_many_inputs_or_bytes_are_refused_with_413() -> None:
    err = refused(json.dumps({"inputs": list(range(9))}).encode(), max_items=8)
    assert (err.status, err.code) == (413, "payload_too_large")
    assert "9 inputs" in err.message and "at most 8" in err.message
    assert len(parse_predict_body(json.dumps({"inputs": list(range(8))}).encode(), JSON, 8)) == 8
    with pytest.raises(PayloadError) as info:
        parse_predict_body(b'{"inputs": ["' + b"x" * 2000 + b'"]}', JSON, 8, max_bytes=1000)
    assert info.value.status == 413 and "at most 1000" in info.value.message


def test_read_json_gives_any_json_value() -> None:
    assert read_json(b'[1, {"a": "\xc3\xa9"}]', JSON) == [1, {"a": "é"}]


def test_error_body_has_the_api_error_shape() -> None:
    body: dict[str, Any] = json.loads(error_body("rate_limited", "slow down", {"retry_after": 2}))
    assert body == {
        "error": {"code": "rate_limited", "message": "slow down", "details": {"retry_after": 2}}
    }
    assert json.loads(error_body("not_found", "no such endpoint"))["error"]["details"] is None
    # Details that JSON cannot hold are written as text rather than failing the reply.
    assert json.loads(error_body("x", "y", {"when": object}))["error"]["details"]["when"]
