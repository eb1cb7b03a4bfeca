"""What the dashboard's forms offer, read from the recipes' own specs (no table of our own):
the recipes a train job can be started with from the browser, with their parameters and
defaults, and what kind of input an endpoint's "try it" panel asks for."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic_core import PydanticUndefined

from gureum.recipes.specs import SPECS, spec_of


@dataclass(frozen=True)
class Param:
    name: str
    default: str  # as the job form's key=value takes it: JSON, or "" for none
    description: str


@dataclass(frozen=True)
class TrainRecipe:
    name: str
    description: str
    params: tuple[Param, ...]


def _default(value: Any) -> str:
    if value is PydanticUndefined or value is None:
        return ""
    try:
        return json.dumps(value)
    except TypeError:
        return str(value)


@cache
def train_recipes() -> tuple[TrainRecipe, ...]:
    """Built-in recipes a job runs from their name (``script`` brings a code folder: the CLI's)."""
    shown = []
    for spec in SPECS.values():
        if not spec.trainable or spec.needs_code:
            continue
        fields = spec.params.model_fields if spec.params is not None else {}
        params = tuple(
            Param(name, _default(f.default), f.description or "")
            for name, f in fields.items()
            if name != "seed"
        )
        shown.append(TrainRecipe(spec.name, spec.description, params))
    return tuple(shown)


# The "try it" panel's form by the endpoint's recipe; anything else gets a JSON box.
_TEXT = {"text-generator", "hf-text-generation"}
_CLASS_IMAGES = {"image-generator", "image-diffusion"}
_PROMPT_IMAGES = {"image-lora"}
_IMAGE_IN = {"image-classifier", "hf-image-classification"}


def try_kind(recipe: str | None) -> str:
    """``text``, ``class-images``, ``prompt-images``, ``image-in`` or ``json``."""
    if recipe in _TEXT:
        return "text"
    if recipe in _CLASS_IMAGES:
        return "class-images"
    if recipe in _PROMPT_IMAGES:
        return "prompt-images"
    if recipe in _IMAGE_IN:
        return "image-in"
    return "json"


def try_unit(recipe: str | None) -> str:
    spec = spec_of(recipe)
    return spec.serving.unit if spec is not None and spec.serving is not None else "request"
