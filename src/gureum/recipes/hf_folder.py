"""What a Hugging Face model folder is, read from its ``config.json`` and file names alone.

The server decides at import which recipe serves a folder (``gureum models import``), and the
recipe checks the same again when it loads one; both read only JSON and names here, so this
module imports neither torch nor transformers. A folder is served without code only when its
weights are safetensors and its config asks for no code of its own (``auto_map``): anything
else is refused with the reason, to be served through a sandboxed predictor instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel, Field

CONFIG = "config.json"
MAX_CONFIG_BYTES = 1024 * 1024  # real configs are a few KiB; a larger one is not read
MAX_TEXT_CHARS = 100_000  # one text to classify; the model reads a few hundred tokens of it
TEXT_GENERATION = "hf-text-generation"
TEXT_CLASSIFICATION = "hf-text-classification"
IMAGE_CLASSIFICATION = "hf-image-classification"
# The architecture's class name ends with what it does (``LlamaForCausalLM``).
TASKS: Mapping[str, str] = {
    "ForCausalLM": TEXT_GENERATION,
    "LMHeadModel": TEXT_GENERATION,  # GPT-2 and its kin: GPT2LMHeadModel
    "ForSequenceClassification": TEXT_CLASSIFICATION,
    "ForImageClassification": IMAGE_CLASSIFICATION,
}
PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SANDBOX_HINT = (
    "only safetensors weights are served without code; serve other weights through your own "
    "predictor (a script job's gureum.serve class), which runs in the sandbox"
)


class NotHuggingFace(ValueError):
    """The folder is not a Hugging Face model this platform serves without code; says why."""


def read_config(raw: bytes) -> dict[str, Any]:
    """``config.json``'s object, refused when too large or not a JSON object."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise NotHuggingFace(f"{CONFIG} is {len(raw)} bytes; at most {MAX_CONFIG_BYTES} are read")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise NotHuggingFace(f"{CONFIG} is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise NotHuggingFace(f"{CONFIG} must hold a JSON object")
    return data


def task_of(config: Mapping[str, Any], paths: Iterable[str]) -> str:
    """The recipe that serves a folder with this config and these file paths (at its root).

    Raises ``NotHuggingFace`` for a config that needs remote code, names no architecture or an
    architecture of no task we serve, or a folder without safetensors weights."""
    if config.get("auto_map"):
        raise NotHuggingFace(
            f"{CONFIG} has auto_map: the model needs its own Python code (trust_remote_code), "
            f"which the platform never runs outside the sandbox; {SANDBOX_HINT}"
        )
    archs = config.get("architectures")
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        raise NotHuggingFace(
            f'{CONFIG} names no "architectures" (a list such as ["LlamaForCausalLM"]): '
            "not a Hugging Face model folder saved with save_pretrained"
        )
    arch = archs[0]
    task = next((t for suffix, t in TASKS.items() if arch.endswith(suffix)), None)
    if task is None:
        kinds = ", ".join(f"*{s}" for s in TASKS)
        raise NotHuggingFace(
            f"architecture {arch[:100]!r} is of no task served without code (served: {kinds})"
        )
    names = [p.lower() for p in paths if "/" not in p.strip("/")]
    if not any(n.endswith(".safetensors") for n in names):
        pickled = sorted(p for p in names if p.endswith(PICKLED))
        found = f" (found {', '.join(pickled[:5])})" if pickled else ""
        raise NotHuggingFace(f"no .safetensors weights at the folder's root{found}; {SANDBOX_HINT}")
    return task


class TextRef(BaseModel):
    """One text to classify, as an object."""

    text: str = Field(max_length=MAX_TEXT_CHARS)


# One input of an imported text classifier (the data plane's schema; the predictor checks the
# same itself).
TextToClassify = Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | TextRef
