"""What a recipe says about itself, in one place, without importing its implementation.

The server (submission checks), the serving layer (loading, schemas, OpenAI routes) and metering
read a recipe's ``RecipeSpec`` instead of keeping their own tables by recipe name. A spec module
imports pydantic and the standard library only: torch, sklearn, onnxruntime or transformers are
imported when ``RecipeSpec.implementation()`` is first called, on a worker or a replica.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for annotations only: the spec stays importable without them
    from gureum.recipes.base import RecipeParams
    from gureum.recipes.dataset import LocalDataset

# How many units one request used, from the inputs it sent and the outputs it got.
UnitCounter = Callable[[list[Any], list[Any]], float]


def per_request(inputs: list[Any], outputs: list[Any]) -> float:
    return 1.0


def per_input(inputs: list[Any], outputs: list[Any]) -> float:
    """One classified image, predicted row or scored example per input."""
    return float(len(inputs))


def images(inputs: list[Any], outputs: list[Any]) -> float:
    """Images delivered; the requested ``count`` when an output does not list them."""
    return float(sum(_images(i, o) for i, o in zip(inputs, outputs, strict=False)))


def _images(item: Any, output: Any) -> int:
    if isinstance(output, Mapping) and isinstance(output.get("images"), list):
        return len(output["images"])
    count = item.get("count", 1) if isinstance(item, Mapping) else 1
    return count if isinstance(count, int) and count > 0 else 1


def tokens(inputs: list[Any], outputs: list[Any]) -> float:
    """Prompt plus completion tokens as the model counts them (its ``usage``); UTF-8 bytes of
    prompt and text for an output without ``usage`` (the byte-level GPT's tokens are bytes)."""
    return float(sum(_tokens(o) for o in outputs))


def _tokens(output: Any) -> int:
    if not isinstance(output, Mapping):
        return 0
    usage = output.get("usage")
    if isinstance(usage, Mapping):
        counts = (usage.get("prompt_tokens"), usage.get("completion_tokens"))
        return sum(n for n in counts if isinstance(n, int) and n > 0)
    texts = (output.get("prompt"), output.get("text"))
    return sum(len(t.encode("utf-8")) for t in texts if isinstance(t, str))


# Refuses (``DatasetMismatch``), from the manifest alone, a dataset the recipe cannot train on;
# the parameters are given when known (a target column must be in the table).
DatasetCheck = Callable[["LocalDataset", Any], None]


@dataclass(frozen=True)
class BaseModelParam:
    """A parameter that names a model of the workspace's registry to train on (LoRA).

    The server resolves ``param`` in the job's own workspace and pins it as ``NAME:V``; a model
    trained so carries the base's files in ``folder``, and ``named_in`` reads the base that a
    saved model's ``config.json`` names (raising ``RecipeError`` for a path, never followed).
    ``marker`` is the file at the root of ``folder`` that a complete copy holds;
    ``base_recipe``, if set, is the recipe the base version must be served by (image-lora
    trains only on diffusers folders).
    """

    param: str
    folder: str
    named_in: Callable[[Mapping[str, Any]], str | None]
    marker: str = "config.json"
    base_recipe: str | None = None


@dataclass(frozen=True)
class ServingSpec:
    """How a recipe's models are served and billed.

    ``unit`` is what a plan's price per unit multiplies; ``count`` counts them for one request.
    ``openai`` models also answer the OpenAI-compatible chat/completions, completions and models
    routes; ``oip`` models answer the Open Inference Protocol v2 routes (tensor inputs).
    ``input_schema``/``output_schema`` are the types of one input and one output (pydantic
    models or annotations) that the endpoint's OpenAPI schema and validation use; ``None``:
    any JSON value.
    """

    unit: str
    count: UnitCounter = per_request
    openai: bool = False
    oip: bool = False
    input_schema: Any = None
    output_schema: Any = None


@dataclass(frozen=True)
class RecipeSpec:
    """A recipe: its name, what it is, where its code lives, whether it trains and how it serves.

    ``implementation`` is ``"module:attribute"``, an object with the ``Recipe`` protocol's
    methods (``load`` at least; ``train``/``evaluate`` for trainable recipes).
    ``unpickles_model``: ``load`` unpickles model files (code runs on load), so the platform
    hands it only files its own train jobs wrote.
    ``formats``: the import formats (``gureum models import``) whose versions this recipe
    serves without a train job (``onnx``, ``huggingface``).
    ``params``: the pydantic model of a train job's parameters (unknown names refused);
    ``check_dataset``: the manifest-only dataset check (it gets a train job's parsed params,
    or for a recipe that does not train, an evaluate job's). Both light (no torch), so the
    server refuses a job at submission without loading the implementation.
    ``needs_code``: a job brings its own code folder (script); it cannot run from its name.
    ``base_model``: a parameter naming a registry model to train on, if any.
    ``gate_metrics``: (metric, higher is better) a retrain pipeline compares a candidate with
    production on, in order of preference (the first both evaluations report).
    """

    name: str
    description: str
    implementation: str
    trainable: bool = True
    serving: ServingSpec | None = None
    unpickles_model: bool = False
    formats: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    params: type[RecipeParams] | None = None
    check_dataset: DatasetCheck | None = None
    needs_code: bool = False
    base_model: BaseModelParam | None = None
    gate_metrics: tuple[tuple[str, bool], ...] = ()

    def load_implementation(self) -> Any:
        """The recipe object (imports its module: torch and the like live there)."""
        module, _, attr = self.implementation.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        return obj() if isinstance(obj, type) else obj
