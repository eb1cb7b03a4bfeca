"""image-lora against full fine-tuning (issue 15): trainable parameters and checkpoint size.

Builds the tiny Stable-Diffusion-shaped pipeline (``recipes.sd_tiny``, as the tests do), trains
image-lora on it in-process for a few steps on captioned garment pictures (the recipe's own
``train``, as a job runs it), and compares what it trained and saved with full fine-tuning of the
same UNet: every UNet weight trained, and the whole UNet saved (its safetensors file). The
numbers go to ``docs/benchmarks.md``; ``--rank`` changes the LoRA rank.

    .venv/bin/python -m benchmarks.lora_size [--rank 4] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from gureum import samples
from gureum.recipes import LocalDataset, LocalRunContext, get_recipe, parse_params
from gureum.recipes.sd_tiny import save_tiny_pipeline

NAME = "image-lora"
REF = "tiny-sd:1"


def measure(work: Path, rank: int, steps: int) -> dict[str, Any]:
    base = save_tiny_pipeline(work / "tiny-sd")
    samples.write("garments", work / "designs", count=20)
    ds = LocalDataset.from_folder(work / "designs")
    recipe = get_recipe(NAME)
    params = {
        "base_model": REF,
        "epochs": 1,
        "max_steps": steps,
        "lora_r": rank,
        "lora_alpha": rank,
    }
    out = recipe.train(
        LocalRunContext(work / "run", models={REF: base}),
        ds,
        parse_params(NAME, recipe.Params, params),
    )
    unet_file = base / "unet" / "diffusion_pytorch_model.safetensors"
    full_params = sum(t.numel() for t in load_file(unet_file).values())
    adapter = out.model_dir / "adapter" / "adapter_model.safetensors"
    lora_params = sum(t.numel() for t in load_file(adapter).values())
    pipeline_bytes = sum(p.stat().st_size for p in base.rglob("*.safetensors"))
    return {
        "rank": rank,
        "steps": steps,
        "lora_trainable_params": lora_params,
        "full_trainable_params": full_params,
        "params_ratio": lora_params / full_params,
        "adapter_bytes": adapter.stat().st_size,
        "full_unet_bytes": unet_file.stat().st_size,
        "bytes_ratio": adapter.stat().st_size / unet_file.stat().st_size,
        "pipeline_bytes": pipeline_bytes,
        "train_loss": out.metrics.get("train_loss"),
        "val_loss": out.metrics.get("val_loss"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(Path(tmp), args.rank, args.steps)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
