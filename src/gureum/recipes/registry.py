"""The recipes by name, from their specs (``recipes.specs``), and the two calls the platform
makes around them. A recipe's implementation (torch, sklearn) is imported when first asked for.

``prepare`` is what the control plane runs at submission (unknown recipe, unknown or bad
parameter, a dataset that does not fit: refused before anything is queued); ``train_and_evaluate``
is what a job runs, on Ray or as a plain process (``python -m gureum.recipes.run``): one code
path, so the two can be compared.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gureum.recipes import specs
from gureum.recipes.base import (
    EvalOutput,
    Recipe,
    RecipeError,
    RecipeParams,
    RunContext,
    TrainOutput,
    UnknownRecipe,
    parse_params,
)
from gureum.recipes.dataset import LocalDataset
from gureum.recipes.spec import RecipeSpec

_loaded: dict[str, Recipe[Any]] = {}
_lock = threading.Lock()


def names() -> list[str]:
    """The recipes a train job runs by name alone: trainable, bringing no code of their own."""
    return [n for n, s in specs.SPECS.items() if s.trainable and not s.needs_code]


def spec(name: str) -> RecipeSpec:
    """The recipe's spec; ``UnknownRecipe`` listing the known ones."""
    found = specs.spec_of(name)
    if found is None:
        raise UnknownRecipe(f"unknown recipe {name!r}; choose one of: {', '.join(specs.SPECS)}")
    return found


def get_recipe(name: str) -> Recipe[Any]:
    """The recipe object, its implementation imported on first use (torch and the like)."""
    found = spec(name)
    with _lock:
        if name not in _loaded:
            _loaded[name] = found.load_implementation()
        return _loaded[name]


class _Recipes(Mapping[str, Recipe[Any]]):
    """The built-in trainers by name (``names()``), each loaded when first looked up."""

    def __getitem__(self, name: str) -> Recipe[Any]:
        if name not in names():
            raise KeyError(name)
        return get_recipe(name)

    def __iter__(self) -> Iterator[str]:
        return iter(names())

    def __len__(self) -> int:
        return len(names())


RECIPES: Mapping[str, Recipe[Any]] = _Recipes()


def unpickles(name: str) -> bool:
    """Whether the recipe's ``load`` unpickles model files (code runs on load): the platform
    hands it only files a platform train job wrote. Unknown names unpickle nothing here."""
    found = specs.spec_of(name)
    return bool(found and found.unpickles_model)


def check_params(name: str, raw: Mapping[str, Any]) -> RecipeParams:
    """A train job's parameters validated against the recipe's spec (no implementation
    loaded); ``InvalidParams`` with every problem, ``UnknownRecipe``, or a ``RecipeError`` for
    a recipe that does not train."""
    found = spec(name)
    if not found.trainable or found.params is None:
        raise RecipeError(f"recipe {name!r} only serves models; it does not train")
    return parse_params(name, found.params, dict(raw))


def check_dataset(name: str, ds: LocalDataset, params: RecipeParams | None = None) -> None:
    """``DatasetMismatch`` unless ``ds`` fits the recipe, from its manifest alone."""
    found = spec(name)
    if found.check_dataset is not None:
        found.check_dataset(ds, params)


def prepare(
    name: str, raw_params: Mapping[str, Any], ds: LocalDataset
) -> tuple[Recipe[Any], RecipeParams]:
    """Recipe, validated parameters, and the dataset checked against them (manifest only)."""
    params = check_params(name, raw_params)
    check_dataset(name, ds, params)
    return get_recipe(name), params


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
    from gureum.recipes.training import is_main  # torch: a job's process, not the server

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
