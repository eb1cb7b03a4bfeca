"""Parameters survive the platform's round trip: the server validates what a user gave, stores
it with defaults filled in, and the worker validates the stored form again. A rule between
parameters must therefore read a filled-in default as no choice (issue 10: every
text-generator job once failed in its worker on its own defaults)."""

from __future__ import annotations

from typing import Any

import pytest

from gureum.recipes.base import InvalidParams, parse_params
from gureum.recipes.registry import RECIPES

# What a recipe cannot do without: the column to predict, the base to adapt.
MINIMAL: dict[str, dict[str, Any]] = {
    "tabular": {"target": "y"},
    "image-lora": {"base_model": "sd:1"},
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_stored_defaults_validate_again_unchanged(name: str) -> None:
    model = RECIPES[name].Params
    given = parse_params(name, model, MINIMAL.get(name, {}))
    stored = given.model_dump()
    assert parse_params(name, model, stored) == given


def test_text_generator_modes_round_trip_and_still_refuse_real_mixups() -> None:
    model = RECIPES["text-generator"].Params
    lora = parse_params("text-generator", model, {"base_model": "tiny", "lora_r": 4})
    assert parse_params("text-generator", model, lora.model_dump()) == lora
    # A default typed out is the default: harmless either way.
    assert parse_params("text-generator", model, {"lora_r": 8}).lora_r == 8
    with pytest.raises(InvalidParams, match="lora_r apply to LoRA fine-tuning"):
        parse_params("text-generator", model, {"lora_r": 4})
    with pytest.raises(InvalidParams, match="n_layer shape a model trained from scratch"):
        parse_params("text-generator", model, {"base_model": "tiny", "n_layer": 2})
