"""The built-in recipes by name, and the two calls the platform makes around them.

``prepare`` is what the control plane runs at submission (unknown recipe, unknown or bad
parameter, a dataset that does not fit: refused before anything is queued); ``train_and_evaluate``
is what a job runs, on Ray or as a plain process (``python -m gureum.recipes.run``): one code
path, so the two can be compared.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gureum.recipes.base import (
    EvalOutput,
    Recipe,
    RecipeParams,
    RunContext,
    TrainOutput,
    UnknownRecipe,
    parse_params,
)
from gureum.recipes.dataset import LocalDataset
from gureum.recipes.image_classifier import ImageClassifier
from gureum.recipes.image_generator import ImageGenerator
from gureum.recipes.tabular import Tabular
from gureum.recipes.text_generator import TextGenerator
from gureum.recipes.training import is_main

_BUILT_IN: tuple[Recipe[Any], ...] = (
    ImageGenerator(),
    ImageClassifier(),
    TextGenerator(),
    Tabular(),
)
RECIPES: Mapping[str, Recipe[Any]] = MappingProxyType({r.name: r for r in _BUILT_IN})


def names() -> list[str]:
    return list(RECIPES)


def get_recipe(name: str) -> Recipe[Any]:
    try:
        return RECIPES[name]
    except KeyError:
        raise UnknownRecipe(
            f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}"
        ) from None


def prepare(
    name: str, raw_params: Mapping[str, Any], ds: LocalDataset
) -> tuple[Recipe[Any], RecipeParams]:
    """Recipe, validated parameters, and the dataset checked against them (manifest only)."""
    recipe = get_recipe(name)
    params = parse_params(recipe.name, recipe.Params, dict(raw_params))
    recipe.check_dataset(ds, params)
    return recipe, params


@dataclass
class JobResult:
    recipe: str
    params: dict[str, Any]
    train: TrainOutput
    evaluation: EvalOutput | None

    def to_dict(self) -> dict[str, Any]:
        ev = self.evaluation
        return {
            "recipe": self.recipe,
            "params": self.params,
            "model_dir": str(self.train.model_dir),
            "train_metrics": self.train.metrics,
            "epochs_run": self.train.epochs_run,
            "resumed_from_epoch": self.train.resumed_from_epoch,
            "metrics": ev.metrics if ev else {},
            "details": ev.details if ev else {},
            "artifacts": [str(p) for p in ev.artifacts] if ev else [],
        }


def train_and_evaluate(
    ctx: RunContext,
    recipe: str | Recipe[Any],
    raw_params: Mapping[str, Any],
    ds: LocalDataset,
) -> JobResult:
    """A train job: train (resuming from the context's checkpoint), then evaluate the model on
    the held-out split. ``result.json`` in the artifacts sums it up for the registry.

    ``recipe`` is a name, or a recipe object configured for this run (a script with its code).
    """
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    params = parse_params(recipe.name, recipe.Params, dict(raw_params))
    recipe.check_dataset(ds, params)
    ctx.log(f"training {recipe.name} on {ds.describe()} with {params.model_dump()}")
    out = recipe.train(ctx, ds, params)
    evaluation = recipe.evaluate(ctx, out.model_dir, ds) if is_main() else None
    result = JobResult(recipe.name, params.model_dump(), out, evaluation)
    if is_main():
        (ctx.artifacts_dir / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result
