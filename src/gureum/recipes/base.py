"""The one protocol every built-in trainer sits behind, and what the platform hands it.

A recipe never knows whether it runs in a Ray worker, a plain Python process or a test: the
platform gives it a ``RunContext`` (device, metrics, checkpoints, cancellation, artifacts) and a
``LocalDataset`` (files materialised in a folder plus their manifest), and gets back a model
folder. That keeps the code path identical everywhere, which is what the "platform overhead"
benchmark compares.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gureum.recipes.dataset import LocalDataset

CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


class RecipeError(ValueError):
    """Something the caller asked for cannot be done; ``code`` maps onto the API's error codes."""

    code = "bad_request"


class UnknownRecipe(RecipeError):
    code = "not_found"


class InvalidParams(RecipeError):
    code = "invalid_request"


class DatasetMismatch(RecipeError):
    """The dataset's shape does not fit the recipe (text given to an image classifier)."""

    code = "invalid_request"


class ModelMismatch(RecipeError):
    """A model folder that another recipe (or nothing we know) wrote."""

    code = "invalid_request"


class BadInput(RecipeError):
    """A prediction input the model cannot take."""

    code = "invalid_request"

    @classmethod
    def naming_limits(
        cls, exc: ValidationError, limits: Mapping[str, str], unknown: str = ""
    ) -> BadInput:
        """One message naming, for each field a request got wrong, the limit it must keep."""
        problems = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "input"
            limit = limits.get(name, unknown)
            problems.append(f'"{name}" must be {limit} (got {err.get("input")!r})')
        return cls("; ".join(problems))


class OverBudget(BadInput):
    """A generation ran past its time budget and was stopped: answered with an error (504),
    never billed. A ``BadInput``, so a batch of several requests is retried one by one and
    only the request whose budget ran out fails."""

    code = "generation_timeout"


class Cancelled(Exception):
    """The run was asked to stop (``RunContext.should_stop``); its last checkpoint stays."""


class RunContext(Protocol):
    """What the platform provides to a running recipe.

    ``save_checkpoint``/``load_checkpoint`` make retries resume instead of restarting: a recipe
    loads the last state when it starts and carries on from the epoch after it.
    """

    @property
    def device(self) -> str:
        """``"cpu"`` or ``"cuda"`` (optionally ``"cuda:N"``)."""
        ...

    @property
    def artifacts_dir(self) -> Path:
        """Files written here become the run's artifacts (model folder, sample grids, reports)."""
        ...

    def log(self, msg: str) -> None: ...

    def log_metrics(
        self, step: int, metrics: dict[str, float], epoch: int | None = None
    ) -> None: ...

    def progress(self, epoch: int, step: int, total_steps: int) -> None:
        """``step`` counts from the start of training, out of ``total_steps`` for the run."""
        ...

    def save_checkpoint(self, state: dict[str, Any]) -> None: ...

    def load_checkpoint(self) -> dict[str, Any] | None: ...

    def should_stop(self) -> bool: ...


def checkpoint_requested(ctx: RunContext) -> bool:
    """Whether the platform asked ``ctx``'s run to save a checkpoint now (it is about to be
    preempted for serving): a recipe saves one at its next step. Contexts that never ask (a
    run by hand, a helper model's scratch context) have no ``should_checkpoint``."""
    ask = getattr(ctx, "should_checkpoint", None)
    return bool(ask()) if callable(ask) else False


class RecipeParams(BaseModel):
    """Base of every recipe's parameters: unknown names are refused, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    seed: int = Field(0, description="seed for initialisation, data order and sampling")

    def chosen(self) -> set[str]:
        """Parameters given with a value other than their default.

        Rules between parameters look at these, not at ``model_fields_set``: the platform
        stores a job's full parameters (defaults included) and the worker validates them again,
        so a default must read the same whether it was typed or filled in.
        """
        fields = type(self).model_fields
        return {
            name
            for name in self.model_fields_set
            if getattr(self, name) != fields[name].get_default(call_default_factory=True)
        }


@dataclass
class TrainOutput:
    model_dir: Path
    metrics: dict[str, float]
    epochs_run: int = 0
    resumed_from_epoch: int | None = None


@dataclass
class EvalOutput:
    """Scalar ``metrics`` (what promotion gates compare), richer ``details`` and files."""

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)


def evaluation_report(
    ctx: RunContext, recipe: str, metrics: dict[str, float], details: dict[str, Any]
) -> EvalOutput:
    """The evaluation as a job output (``evaluation.json``) and one log line."""
    report = ctx.artifacts_dir / "evaluation.json"
    report.write_text(json.dumps({"metrics": metrics, **details}, indent=2))
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if "/" not in k)
    ctx.log(f"{recipe}: {shown}")
    return EvalOutput(metrics, details, [report])


class Predictor(Protocol):
    """A model loaded once and asked many times (batch jobs, serving replicas)."""

    def predict(self, inputs: list[Any]) -> list[Any]: ...


P = TypeVar("P", bound=RecipeParams)
P_contra = TypeVar("P_contra", bound=RecipeParams, contravariant=True)


class Recipe(Protocol[P_contra]):
    name: str
    description: str

    @property
    def Params(self) -> type[RecipeParams]:
        """The pydantic model of the recipe's parameters (unknown names are refused)."""
        ...

    def check_dataset(self, ds: LocalDataset, params: P_contra | None = None) -> None:
        """Raise ``DatasetMismatch`` unless ``ds`` fits; looks only at the manifest, so the
        control plane can refuse a job at submission without fetching any file."""
        ...

    def train(self, ctx: RunContext, ds: LocalDataset, params: P_contra) -> TrainOutput: ...

    def evaluate(self, ctx: RunContext, model_dir: Path, ds: LocalDataset) -> EvalOutput:
        """Metrics on the dataset's validation split, plus artifact files in ``ctx``."""
        ...

    def load(self, model_dir: Path, device: str = "cpu") -> Predictor: ...

    def predict(self, model_dir: Path, inputs: list[Any], device: str = "cpu") -> list[Any]: ...

    def export(self, model_dir: Path, dest: Path) -> list[Path]:
        """Self-contained files for another runtime: weights (safetensors) and config."""
        ...


def parse_params(recipe_name: str, model: type[P], raw: dict[str, Any]) -> P:
    """Validate user parameters (CLI strings or JSON values) with one clear message."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        known = ", ".join(model.model_fields)
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown parameter {where!r}")
            elif where:
                problems.append(f"parameter {where!r}: {err['msg']}")
            else:  # a rule across parameters
                problems.append(str(err["msg"]).removeprefix("Value error, "))
        raise InvalidParams(f"{recipe_name}: {'; '.join(problems)} (parameters: {known})") from None


@dataclass(frozen=True)
class ModelConfig:
    """The small JSON beside a model's weights: which recipe, which params, what it knows."""

    recipe: str
    params: dict[str, Any]
    info: dict[str, Any]

    def write(self, model_dir: Path) -> Path:
        model_dir.mkdir(parents=True, exist_ok=True)
        body = {
            "recipe": self.recipe,
            "format_version": FORMAT_VERSION,
            "params": self.params,
            **self.info,
        }
        path = model_dir / CONFIG_FILE
        path.write_text(json.dumps(body, indent=2, sort_keys=True))
        return path

    @classmethod
    def read(cls, model_dir: Path, recipe: str) -> ModelConfig:
        path = model_dir / CONFIG_FILE
        try:
            body = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelMismatch(f"{model_dir} holds no {CONFIG_FILE}; not a model folder") from None
        except json.JSONDecodeError as exc:
            raise ModelMismatch(f"{path} is not valid JSON: {exc}") from None
        found = body.pop("recipe", None)
        if found != recipe:
            raise ModelMismatch(f"{model_dir} holds a {found!r} model, not a {recipe!r} model")
        body.pop("format_version", None)
        params = body.pop("params", {})
        return cls(recipe=recipe, params=params, info=body)


class RecipeBase:
    """Shared plumbing for the built-in recipes; a third-party recipe need not inherit it."""

    name: str
    description: str
    # True when ``load`` unpickles model files: the platform then loads only files its own
    # train jobs wrote (``registry.unpickles``), never uploaded ones.
    unpickles_model: bool = False

    def predict(self, model_dir: Path, inputs: list[Any], device: str = "cpu") -> list[Any]:
        return self.load(model_dir, device).predict(inputs)

    def load(self, model_dir: Path, device: str = "cpu") -> Predictor:
        raise NotImplementedError


def export_files(model_dir: Path, dest: Path, names: list[str]) -> list[Path]:
    """Copy the named files of a model folder to ``dest``; every one must exist."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        src = model_dir / name
        if not src.is_file():
            raise ModelMismatch(f"{model_dir} has no {name}; not a complete model folder")
        target = dest / name
        shutil.copyfile(src, target)
        out.append(target)
    return out
