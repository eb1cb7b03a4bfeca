"""What one input and one output of each built-in recipe's served model look like: pydantic
models that the recipes' ``ServingSpec`` names (``input_schema``/``output_schema``) and the data
plane's OpenAPI schema is built from (``serving.openapi_dataplane``).

The predictors check the same rules themselves (``BadInput``); these types describe them to a
consumer's client and let a fuzzer hold a replica to them. Light: pydantic only.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from gureum.recipes.params import MAX_GUIDANCE, MAX_SAMPLE_STEPS, MAX_TOKENS, Sampler

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what a JSON integer may hold on the data plane
MAX_IMAGES = 64  # pictures one image-generator input may ask for
MAX_STOPS = 4  # stop sequences one text generation may give
NonEmpty = Annotated[str, Field(min_length=1)]
Stop = NonEmpty | Annotated[list[NonEmpty], Field(max_length=MAX_STOPS)]

# -- tabular ----------------------------------------------------------------------------------


class Row(BaseModel):
    """A tabular row: column -> value. Unknown columns are ignored, missing ones imputed; a
    number column given text that is not a finite number is a 422."""

    model_config = ConfigDict(extra="allow")


# A number column's value: a number, a number as text, or empty or null for a missing value.
NUMERIC = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$|^$"
Number = float | Annotated[str, Field(pattern=NUMERIC)] | None
Category = str | float | bool | None


class Prediction(BaseModel):
    prediction: float | str
    probabilities: dict[str, float] | None = Field(None, description="classification only")


# -- text-generator ---------------------------------------------------------------------------


class Generation(BaseModel):
    model_config = ConfigDict(extra="allow")
    prompt: str
    max_tokens: int = Field(64, ge=1, le=MAX_TOKENS)
    temperature: float = Field(0.8, ge=0)
    seed: int = Field(0, ge=INT64_MIN, le=INT64_MAX)
    stop: Stop | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class TextOutput(BaseModel):
    prompt: str
    text: str
    finish_reason: Literal["stop", "length"]
    usage: Usage


TextInput = str | Generation

# -- image-classifier -------------------------------------------------------------------------


class ImageRef(BaseModel):
    model_config = ConfigDict(extra="allow")
    image: str = Field(description="the image file (PNG, JPEG, ...) in base64")


ImageInput = Annotated[str, Field(description="base64 image")] | ImageRef


class Classification(BaseModel):
    label: str
    confidence: float
    scores: dict[str, float]


# -- image-generator --------------------------------------------------------------------------


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    class_: str | None = Field(None, alias="class", description="required if the model knows 2+")
    count: int = Field(1, ge=1, le=MAX_IMAGES)
    seed: int = Field(0, ge=INT64_MIN, le=INT64_MAX)
    temperature: float = Field(1.0, gt=0)


class Images(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class")
    seed: int
    format: Literal["png"]
    images: list[str] = Field(description="base64 PNG files")


# -- image-diffusion --------------------------------------------------------------------------

MAX_BUDGET_S = 600.0  # the longest time budget a generation may ask for
MAX_PROMPT_CHARS = 4000  # a caption model reads a few dozen words; longer text is not kept


class DiffusionRequest(BaseModel):
    """One generation; ``steps``, ``guidance``, ``sampler`` and ``time_budget_s`` default to
    the model's (the training parameters of the same names). Inputs with equal ``steps`` and
    ``sampler`` are denoised together, across requests batched by the replica. A model trained
    with ``conditioning=caption`` takes ``prompt`` (and ``negative_prompt``, what guidance
    steers away from; default the empty caption) instead of ``class``."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    class_: str | None = Field(None, alias="class", description="required if the model knows 2+")
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description="caption models")
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    count: int = Field(1, ge=1, le=MAX_IMAGES)
    seed: int = Field(0, ge=INT64_MIN, le=INT64_MAX)
    steps: int | None = Field(None, ge=1, le=MAX_SAMPLE_STEPS, description="denoising steps")
    guidance: float | None = Field(None, ge=0, le=MAX_GUIDANCE, description="CFG scale")
    sampler: Sampler | None = None
    size: int | None = Field(None, description="if given, the model's own image size")
    time_budget_s: float | None = Field(
        None, gt=0, le=MAX_BUDGET_S, description="at most the model's; over it: 504, not billed"
    )


class DiffusionImages(BaseModel):
    """``class`` from a class-conditional model; ``prompt``, ``truncated`` (the prompt was cut
    to the model's caption length) and ``warning`` from a caption-conditional one."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    class_: str | None = Field(None, alias="class")
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int
    steps: int
    guidance: float
    sampler: Sampler
    truncated: bool | None = Field(None, description="the prompt was cut to the model's length")
    warning: str | None = None
    format: Literal["png"]
    images: list[str] = Field(description="base64 PNG files")
