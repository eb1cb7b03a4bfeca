"""Every recipe the platform knows, by name: one ``RecipeSpec`` each (see ``recipes.spec``).

Adding a recipe is one module with its spec and implementation, plus one line here. Importing
this module imports no torch, sklearn, onnxruntime or transformers.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from gureum.recipes import hf_folder
from gureum.recipes import image_lora_params as lora
from gureum.recipes import io_schemas as io
from gureum.recipes import params as p
from gureum.recipes.prediction_scores import check_scored_tables
from gureum.recipes.predictor import PREDICTOR
from gureum.recipes.spec import (
    BaseModelParam,
    RecipeSpec,
    ServingSpec,
    images,
    per_input,
    tokens,
)

IMAGE_GENERATOR = RecipeSpec(
    name="image-generator",
    description="class-conditional VAE for small pictures; kernel MMD and sample grids",
    implementation="gureum.recipes.image_generator:ImageGenerator",
    serving=ServingSpec(
        unit="image", count=images, input_schema=io.ImageRequest, output_schema=io.Images
    ),
    params=p.GeneratorParams,
    check_dataset=p.check_generator_dataset,
    gate_metrics=(("mmd", False), ("class_accuracy", True)),
)
IMAGE_DIFFUSION = RecipeSpec(
    name="image-diffusion",
    description="class- or caption-conditional diffusion UNet (DDPM, DDIM/DPM-Solver, "
    "guidance); kernel MMD",
    implementation="gureum.recipes.image_diffusion:ImageDiffusion",
    serving=ServingSpec(
        unit="image",
        count=images,
        input_schema=io.DiffusionRequest,
        output_schema=io.DiffusionImages,
    ),
    params=p.DiffusionParams,
    check_dataset=p.check_diffusion_dataset,
    gate_metrics=(("mmd", False), ("class_accuracy", True)),
)
IMAGE_LORA = RecipeSpec(
    name=lora.NAME,
    description="LoRA fine-tuning of an imported Stable-Diffusion-format folder on captioned "
    "pictures; text-to-image PNGs",
    implementation="gureum.recipes.image_lora:ImageLora",
    serving=ServingSpec(
        unit="image",
        count=images,
        input_schema=lora.TextToImageRequest,
        output_schema=lora.TextToImages,
    ),
    params=lora.ImageLoraParams,
    check_dataset=lora.check_lora_dataset,
    base_model=BaseModelParam(
        param=p.BASE_PARAM,
        folder=p.BASE_DIR,
        named_in=lora.named_base,
        marker=lora.MODEL_INDEX,
        base_recipe=lora.NAME,
    ),
    gate_metrics=(("val_loss", False),),
)
IMAGE_CLASSIFIER = RecipeSpec(
    name="image-classifier",
    description="small CNN for folder-per-class images; accuracy, per-class P/R, confusion",
    implementation="gureum.recipes.image_classifier:ImageClassifier",
    serving=ServingSpec(
        unit="image",
        count=per_input,
        input_schema=io.ImageInput,
        output_schema=io.Classification,
    ),
    params=p.ClassifierParams,
    check_dataset=p.check_classifier_dataset,
    gate_metrics=(("accuracy", True),),
)
TEXT_GENERATOR = RecipeSpec(
    name="text-generator",
    description="byte-level GPT from scratch, or LoRA fine-tuning of a registered HF causal LM",
    implementation="gureum.recipes.text_generator:TextGenerator",
    serving=ServingSpec(
        unit="token",
        count=tokens,
        openai=True,
        input_schema=io.TextInput,
        output_schema=io.TextOutput,
    ),
    params=p.TextParams,
    check_dataset=p.check_text_dataset,
    base_model=BaseModelParam(param=p.BASE_PARAM, folder=p.BASE_DIR, named_in=p.lora_base),
    gate_metrics=(("perplexity", False),),
)
TABULAR = RecipeSpec(
    name="tabular",
    description="scikit-learn classification or regression on a CSV target column",
    implementation="gureum.recipes.tabular:Tabular",
    serving=ServingSpec(
        unit="row", count=per_input, input_schema=io.Row, output_schema=io.Prediction
    ),
    unpickles_model=True,
    params=p.TabularParams,
    check_dataset=p.check_tabular_dataset,
    gate_metrics=(("accuracy", True), ("rmse", False)),
)
SCRIPT = RecipeSpec(
    name="script",
    description="your own Python entry point, reporting through gureum.run",
    implementation="gureum.recipes.script:ScriptRecipe",
    params=p.ScriptParams,
    check_dataset=p.check_script_dataset,
    needs_code=True,
)
ONNX = RecipeSpec(
    name="onnx",
    description="an imported ONNX model through onnxruntime; also the Open Inference Protocol v2",
    implementation="gureum.recipes.onnx_model:OnnxModel",
    trainable=False,
    serving=ServingSpec(unit="input", count=per_input, oip=True),
    formats=("onnx",),
    check_dataset=check_scored_tables,
)

# Imported Hugging Face folders, one recipe per task (``recipes.hf_folder.task_of`` picks it).
HF_TEXT_GENERATION = RecipeSpec(
    name="hf-text-generation",
    description="an imported Hugging Face causal LM, OpenAI-compatible (transformers or vLLM)",
    implementation="gureum.recipes.hf_model:HfTextGeneration",
    trainable=False,
    serving=ServingSpec(
        unit="token",
        count=tokens,
        openai=True,
        input_schema=io.TextInput,
        output_schema=io.TextOutput,
    ),
    formats=("huggingface",),
)
HF_TEXT_CLASSIFICATION = RecipeSpec(
    name="hf-text-classification",
    description="an imported Hugging Face text classifier (*ForSequenceClassification)",
    implementation="gureum.recipes.hf_model:HfTextClassification",
    trainable=False,
    serving=ServingSpec(
        unit="input",
        count=per_input,
        input_schema=hf_folder.TextToClassify,
        output_schema=io.Classification,
    ),
    formats=("huggingface",),
    check_dataset=check_scored_tables,
)
HF_IMAGE_CLASSIFICATION = RecipeSpec(
    name="hf-image-classification",
    description="an imported Hugging Face image classifier (*ForImageClassification)",
    implementation="gureum.recipes.hf_model:HfImageClassification",
    trainable=False,
    serving=ServingSpec(
        unit="image",
        count=per_input,
        input_schema=io.ImageInput,
        output_schema=io.Classification,
    ),
    formats=("huggingface",),
)

_ALL: tuple[RecipeSpec, ...] = (
    IMAGE_GENERATOR,
    IMAGE_CLASSIFIER,
    TEXT_GENERATOR,
    TABULAR,
    IMAGE_DIFFUSION,
    IMAGE_LORA,
    SCRIPT,
    HF_TEXT_GENERATION,
    HF_TEXT_CLASSIFICATION,
    HF_IMAGE_CLASSIFICATION,
    PREDICTOR,
    ONNX,
)
SPECS: Mapping[str, RecipeSpec] = MappingProxyType({s.name: s for s in _ALL})


def spec_of(name: str | None) -> RecipeSpec | None:
    return SPECS.get(name or "")


def serving_of(name: str | None) -> ServingSpec | None:
    spec = spec_of(name)
    return spec.serving if spec else None


def for_format(fmt: str) -> RecipeSpec | None:
    """The recipe that serves an imported version of ``fmt`` without code, if any."""
    return next((s for s in _ALL if fmt in s.formats), None)
