"""Built-in trainers behind one ``Recipe`` protocol: image-generator, image-classifier,
text-generator and tabular. Pure code: they run on the platform (Ray) and as plain Python alike.

Importing this package imports no torch or sklearn: the control plane reads recipes through
their specs (``recipes.specs``). ``LocalRunContext`` (torch) is imported when first used.
"""

from typing import Any

from gureum.recipes.base import (
    BadInput,
    Cancelled,
    DatasetMismatch,
    EvalOutput,
    InvalidParams,
    ModelMismatch,
    Predictor,
    Recipe,
    RecipeError,
    RecipeParams,
    RunContext,
    TrainOutput,
    UnknownRecipe,
    parse_params,
)
from gureum.recipes.dataset import DataFile, LocalDataset
from gureum.recipes.registry import (
    RECIPES,
    JobResult,
    get_recipe,
    names,
    prepare,
    train_and_evaluate,
)

__all__ = [
    "RECIPES",
    "BadInput",
    "Cancelled",
    "DataFile",
    "DatasetMismatch",
    "EvalOutput",
    "InvalidParams",
    "JobResult",
    "LocalDataset",
    "LocalRunContext",
    "ModelMismatch",
    "Predictor",
    "Recipe",
    "RecipeError",
    "RecipeParams",
    "RunContext",
    "TrainOutput",
    "UnknownRecipe",
    "get_recipe",
    "names",
    "parse_params",
    "prepare",
    "train_and_evaluate",
]


def __getattr__(name: str) -> Any:
    """``LocalRunContext`` imports torch (devices): loaded on first use, not with the package."""
    if name == "LocalRunContext":
        from gureum.recipes.context import LocalRunContext

        return LocalRunContext
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
