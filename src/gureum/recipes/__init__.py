"""Built-in trainers behind one ``Recipe`` protocol: image-generator, image-classifier,
text-generator and tabular. Pure code: they run on the platform (Ray) and as plain Python alike.
"""

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
from gureum.recipes.context import LocalRunContext
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
