"""The light half of the ``predictor`` recipe (a script job's own ``gureum.serve.Predictor``):
how its outputs carry the units the user's counter gave them. The implementation that runs the
user's code in sandboxed workers is ``gureum.serving.predictor_pool``.

The counter runs in the worker, next to the user's code, once per input/output pair; the pool
hands each output back as a ``Counted`` (a dict that remembers its units). An output carries
its units through the replica's batching (which splits one call's outputs among requests) and
serializes as the plain JSON object it is, so ``ServingSpec.count`` needs nothing else.
"""

from __future__ import annotations

from typing import Any

from gureum.recipes.prediction_scores import check_scored_dataset
from gureum.recipes.spec import RecipeSpec, ServingSpec

NAME = "predictor"


class Counted(dict[str, Any]):
    """One output of a user's predictor, with the units its counter gave it."""

    __slots__ = ("units",)

    def __init__(self, value: dict[str, Any], units: float) -> None:
        super().__init__(value)
        self.units = units


def counted_units(inputs: list[Any], outputs: list[Any]) -> float:
    """The sum of the outputs' units; 1 for an output that does not carry any."""
    return float(sum(o.units if isinstance(o, Counted) else 1.0 for o in outputs))


PREDICTOR = RecipeSpec(
    name=NAME,
    description="your own gureum.serve.Predictor (a script job's predictor.py), sandboxed",
    implementation="gureum.serving.predictor_pool:PredictorRecipe",
    trainable=False,
    serving=ServingSpec(unit="prediction", count=counted_units),
    check_dataset=check_scored_dataset,
)
