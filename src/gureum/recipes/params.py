"""The built-in recipes' parameters and their manifest-only dataset checks, light.

The control plane validates a job's parameters and refuses a dataset that does not fit before
anything is queued, reading only these (through ``recipes.specs``): this module imports
pydantic and the platform's own light modules, never torch or sklearn. The recipe modules,
which train and load models, import their ``Params`` and checks back from here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any, Literal, get_args

from pydantic import ConfigDict, Field, field_validator, model_validator

from gureum.recipes.base import DatasetMismatch, ModelMismatch, RecipeParams
from gureum.recipes.dataset import LocalDataset
from gureum.recipes.textdata import require_text

IMAGE_GENERATOR = "image-generator"
IMAGE_CLASSIFIER = "image-classifier"
IMAGE_DIFFUSION = "image-diffusion"
TEXT_GENERATOR = "text-generator"
TABULAR = "tabular"
SCRIPT = "script"

# -- image-generator and image-classifier -----------------------------------------------------


class GeneratorParams(RecipeParams):
    epochs: int = Field(30, ge=1, le=5000)
    batch_size: int = Field(32, ge=1, le=4096)
    lr: float = Field(2e-3, gt=0, le=1)
    image_size: int = Field(32, ge=8, le=128, multiple_of=8)
    latent: int = Field(32, ge=2, le=512)
    width: int = Field(32, ge=4, le=256)
    samples_per_class: int = Field(8, ge=1, le=64, description="pictures per class in the grid")


class ClassifierParams(RecipeParams):
    epochs: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(16, ge=1, le=4096)
    lr: float = Field(2e-3, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    image_size: int = Field(32, ge=8, le=256)
    width: int = Field(32, ge=4, le=256, description="channels of the first conv layer")
    dropout: float = Field(0.1, ge=0, lt=1)


def require_images(ds: LocalDataset, recipe: str, min_classes: int) -> None:
    """Refuse, from the manifest alone, a dataset an image recipe cannot use."""
    layout = "a folder-per-class image dataset" if min_classes > 1 else "an image dataset"
    images = ds.select("image")
    if not images:
        raise DatasetMismatch(f"{recipe} needs {layout}; got {ds.describe()}")
    classes = ds.labels()
    if len(classes) < min_classes:
        found = ", ".join(classes) or "none"
        raise DatasetMismatch(
            f"{recipe} needs {layout} with at least {min_classes} classes (one folder per "
            f"class); found {len(classes)}: {found}"
        )
    for split in ("train", "validation"):
        if not ds.select("image", split):
            raise DatasetMismatch(
                f"{recipe} needs images in both splits; the {split} split has none "
                "(push the dataset with a validation ratio between 0 and 1)"
            )


def check_generator_dataset(ds: LocalDataset, params: GeneratorParams | None = None) -> None:
    require_images(ds, IMAGE_GENERATOR, min_classes=0)


def check_classifier_dataset(ds: LocalDataset, params: ClassifierParams | None = None) -> None:
    require_images(ds, IMAGE_CLASSIFIER, min_classes=2)


# -- image-diffusion --------------------------------------------------------------------------

MAX_SAMPLE_STEPS = 100  # denoising steps one generation may ask for
MAX_GUIDANCE = 10.0  # classifier-free guidance scale
Sampler = Literal["ddim", "dpm-solver"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)


Conditioning = Literal["class", "caption"]


class DiffusionParams(RecipeParams):
    """A small class-conditional UNet trained from scratch with DDPM; sampled with DDIM or
    DPM-Solver and classifier-free guidance. The defaults train usefully on 2 CPU cores in a
    few minutes on the garments sample. ``conditioning=caption`` conditions on the pictures'
    captions instead (a ``captions.jsonl``/``metadata.jsonl``, else the class name) through a
    tiny text embedding trained with the UNet over the training captions' words."""

    conditioning: Conditioning = Field("class", description="class labels or captions")
    epochs: int = Field(40, ge=1, le=5000)
    # Small batches: on a CPU, optimizer steps are what a diffusion model is short of.
    batch_size: int = Field(8, ge=1, le=4096)
    lr: float = Field(2e-3, gt=0, le=1)
    image_size: int = Field(32, ge=16, le=64, multiple_of=16, description="16, 32, 48 or 64")
    width: int = Field(16, ge=8, le=256, multiple_of=8, description="channels of the top level")
    layers_per_block: int = Field(1, ge=1, le=4)
    attention: bool = Field(True, description="self-attention in the UNet's middle block")
    train_timesteps: int = Field(1000, ge=10, le=4000, description="DDPM noise levels")
    beta_schedule: Literal["squaredcos_cap_v2", "linear", "scaled_linear"] = "squaredcos_cap_v2"
    # v-prediction and a short EMA: measured better at a few minutes of CPU (docs/benchmarks.md).
    prediction: Literal["epsilon", "v_prediction"] = "v_prediction"
    label_dropout: float = Field(
        0.1, ge=0, lt=1, description="share of training pictures shown without their class"
    )
    ema_decay: float = Field(0.99, ge=0, lt=1, description="ceiling of the EMA's decay")
    snr_gamma: float = Field(
        5.0, ge=0, le=100, description="min-SNR-gamma loss weighting; 0 for the plain loss"
    )
    # DPM-Solver++: at 25 steps its samples scored as real pictures where DDIM's (25 and 50
    # steps) were blotchy, on the same model (docs/benchmarks.md, issue 15).
    sampler: Sampler = Field("dpm-solver", description="default for grids, evaluation, serving")
    sample_steps: int = Field(25, ge=1, le=MAX_SAMPLE_STEPS, description="default steps")
    guidance: float = Field(2.0, ge=0, le=MAX_GUIDANCE, description="default guidance scale")
    grid_every: int = Field(10, ge=0, le=5000, description="epochs between sample grids; 0 none")
    samples_per_class: int = Field(8, ge=1, le=64, description="pictures per class in a grid")
    time_budget_s: float = Field(
        60.0, gt=0, le=600, description="longest one served generation may take"
    )
    text_dim: int = Field(
        32, ge=8, le=512, multiple_of=8, description="caption embedding width (captions)"
    )
    max_caption_tokens: int = Field(
        16, ge=1, le=77, description="caption words read; longer prompts are truncated"
    )
    vocab_size: int = Field(
        1000, ge=8, le=50_000, description="most frequent caption words kept (captions)"
    )


def check_diffusion_dataset(ds: LocalDataset, params: DiffusionParams | None = None) -> None:
    require_images(ds, IMAGE_DIFFUSION, min_classes=0)


# -- text-generator ---------------------------------------------------------------------------

GPT_ONLY = frozenset({"n_layer", "n_head", "n_embd", "dropout"})
LORA_ONLY = frozenset({"lora_r", "lora_alpha", "lora_dropout"})
MAX_TOKENS = 2048
BASE_PARAM = "base_model"
BASE_DIR = "base"  # a LoRA model's copy of its base model's files
# NAME or NAME:VERSION of the model registry (a name as the server allows one; no path can match).
MODEL_REF = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}(:([1-9][0-9]{0,9}|latest|production))?$")
REF_HELP = (
    "base_model names a Hugging Face model of this workspace's registry, NAME or NAME:VERSION "
    "(import a folder with `gureum models import NAME FOLDER`); paths are not accepted"
)


def is_model_ref(value: Any) -> bool:
    return isinstance(value, str) and MODEL_REF.match(value) is not None


def lora_base(config: Mapping[str, Any]) -> str | None:
    """The base model a saved model's ``config.json`` names, checked: None for a model trained
    from scratch; a registry reference for a LoRA model; a path (what this recipe once wrote,
    or anything an uploader chose) is refused, since following it would read whatever folder
    of the machine it names."""
    base = config.get("base_model")
    if base is None and config.get("mode") != "lora":
        return None
    if not is_model_ref(base):
        raise ModelMismatch(
            f"{TEXT_GENERATOR}: config.json names base_model {str(base)[:200]!r}; a LoRA model "
            f"names its base as a registry reference NAME:VERSION and carries its files in "
            f"{BASE_DIR}/, never a path (retrain it on the platform with base_model=NAME:VERSION)"
        )
    return str(base)


class TextParams(RecipeParams):
    base_model: str | None = Field(
        None,
        description="LoRA fine-tuning of a Hugging Face model of this workspace's registry: "
        "NAME or NAME:VERSION (e.g. imported with `gureum models import`), never a path",
    )
    epochs: int = Field(5, ge=1, le=10000)
    steps_per_epoch: int = Field(100, ge=1, le=1_000_000)
    batch_size: int = Field(16, ge=1, le=4096)
    block_size: int = Field(128, ge=8, le=8192, description="context length in tokens")
    lr: float | None = Field(None, gt=0, le=1, description="default 3e-3 (GPT), 5e-4 (LoRA)")
    n_layer: int = Field(4, ge=1, le=48)
    n_head: int = Field(4, ge=1, le=64)
    n_embd: int = Field(128, ge=8, le=4096)
    dropout: float = Field(0.0, ge=0, lt=1)
    lora_r: int = Field(8, ge=1, le=1024)
    lora_alpha: int = Field(16, ge=1, le=4096)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    sample_tokens: int = Field(200, ge=1, le=MAX_TOKENS, description="length of samples")
    eval_windows: int = Field(200, ge=1, le=100_000, description="held-out windows measured")

    @model_validator(mode="after")
    def _one_mode(self) -> TextParams:
        given = self.chosen()  # a stored default (lora_r=8 with no base_model) is no choice
        if self.base_model is not None and not is_model_ref(self.base_model):
            raise ValueError(f"{REF_HELP}; got {self.base_model[:200]!r}")
        if self.base_model and given & GPT_ONLY:
            names = ", ".join(sorted(given & GPT_ONLY))
            raise ValueError(f"{names} shape a model trained from scratch; not with base_model")
        if not self.base_model and given & LORA_ONLY:
            names = ", ".join(sorted(given & LORA_ONLY))
            raise ValueError(f"{names} apply to LoRA fine-tuning; give base_model too")
        if not self.base_model and self.n_embd % self.n_head:
            raise ValueError("n_embd must be a multiple of n_head")
        return self

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (5e-4 if self.base_model else 3e-3)


def check_text_dataset(ds: LocalDataset, params: TextParams | None = None) -> None:
    require_text(ds, TEXT_GENERATOR)


# -- tabular ----------------------------------------------------------------------------------


class TabularParams(RecipeParams):
    target: str = Field(..., min_length=1, description="the column to predict")
    task: Literal["auto", "classification", "regression"] = "auto"
    model: Literal["gradient_boosting", "random_forest", "linear"] = "gradient_boosting"
    drop: list[str] = Field(default_factory=list, description="columns to leave out (ids)")
    max_iter: int = Field(200, ge=1, le=100_000, description="boosting rounds / forest trees")
    learning_rate: float = Field(0.1, gt=0, le=1)
    max_depth: int | None = Field(None, ge=1, le=1000)

    @field_validator("drop", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        return [c.strip() for c in v.split(",") if c.strip()] if isinstance(v, str) else v


def table_columns(schema: Mapping[str, Any]) -> list[str] | None:
    """The column names every table shares, from the version's schema (one table: its
    ``columns``; several: ``tables``), or None when the schema records none."""
    if isinstance(schema.get("columns"), list):
        tables: list[Any] = [schema]
    elif isinstance(schema.get("tables"), Mapping):
        tables = list(schema["tables"].values())
    else:
        return None
    shared: list[str] | None = None
    for t in tables:
        columns = t.get("columns") if isinstance(t, Mapping) else None
        names = [str(c["name"]) for c in columns or [] if isinstance(c, Mapping) and "name" in c]
        shared = names if shared is None else [c for c in shared if c in names]
    return shared


def check_tabular_dataset(ds: LocalDataset, params: TabularParams | None = None) -> None:
    if not ds.select("table"):
        raise DatasetMismatch(f"{TABULAR} needs CSV files with a header row; got {ds.describe()}")
    columns = table_columns(ds.schema)
    if params is not None and columns is not None:
        if params.target not in columns:
            raise DatasetMismatch(
                f"{TABULAR}: target column {params.target!r} is not in the table; "
                f"columns: {', '.join(columns)}"
            )
        if len([c for c in columns if c != params.target and c not in params.drop]) < 1:
            raise DatasetMismatch(f"{TABULAR}: no feature columns left besides the target")


# -- script -----------------------------------------------------------------------------------


class ScriptParams(RecipeParams):
    """``entrypoint``/``args`` come from the job's code; every other key is the user's own."""

    model_config = ConfigDict(extra="allow", validate_default=True)

    entrypoint: str = Field(..., min_length=1, description="the .py file to run, relative")
    args: list[str] = Field(default_factory=list, description="command-line arguments")

    @field_validator("entrypoint")
    @classmethod
    def _relative_py(cls, v: str) -> str:
        p = PurePosixPath(v)
        if p.is_absolute() or ".." in p.parts or "\\" in v or not v.endswith(".py"):
            raise ValueError("must be a relative path of a .py file inside the code folder")
        return v

    def user_params(self) -> dict[str, Any]:
        """What the script gets as ``gureum.run.params()``."""
        return {k: v for k, v in self.model_dump().items() if k not in {"entrypoint", "args"}}


def check_script_dataset(ds: LocalDataset | None, params: ScriptParams | None = None) -> None:
    """Any dataset, or none: the script decides what it can read."""
