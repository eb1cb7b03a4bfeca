"""image-generator: a class-conditional convolutional VAE for small pictures.

Sample quality is measured as ``recipes.sample_quality`` says (kernel MMD in a fixed CNN's
feature space, the classifier's accuracy on samples), the same way as image-diffusion's, plus
``val_loss`` (negative ELBO per picture, nats) and ``bits_per_dim``. A PNG grid of samples per
class goes to the artifacts.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gureum.recipes.base import (
    BadInput,
    EvalOutput,
    ModelConfig,
    RecipeBase,
    RunContext,
    TrainOutput,
    export_files,
)
from gureum.recipes.dataset import LocalDataset
from gureum.recipes.images import load_split, png_bytes, to_image
from gureum.recipes.io_schemas import MAX_IMAGES as MAX_COUNT
from gureum.recipes.nets import ConditionalVAE
from gureum.recipes.params import IMAGE_GENERATOR as NAME
from gureum.recipes.params import GeneratorParams, check_generator_dataset
from gureum.recipes.sample_quality import (
    EVAL_SEED,
    class_grids,
    classes_of,
    eval_pictures,
    sample_quality,
)
from gureum.recipes.specs import SPECS
from gureum.recipes.training import (
    WEIGHTS_FILE,
    batched,
    epoch_order,
    fit,
    is_main,
    load_weights,
    resolve_device,
    save_weights,
    seed_everything,
    steps_in,
)


def _vae(cfg: ModelConfig) -> ConditionalVAE:
    p = cfg.params
    return ConditionalVAE(
        len(cfg.info["classes"]), int(p["image_size"]), int(p["latent"]), int(p["width"])
    )


class GeneratorPredictor:
    def __init__(self, model: ConditionalVAE, classes: list[str], device: torch.device) -> None:
        self.model, self.classes, self.device = model, classes, device

    def generate(self, cls: str, count: int, seed: int, temperature: float = 1.0) -> torch.Tensor:
        if cls not in self.classes:
            raise BadInput(f"unknown class {cls!r}; the model knows: {', '.join(self.classes)}")
        y = torch.full((count,), self.classes.index(cls), dtype=torch.long, device=self.device)
        gen = torch.Generator().manual_seed(seed)
        return self.model.sample(y, gen, temperature).cpu()

    def predict(self, inputs: list[Any]) -> list[Any]:
        """``{"class": "dress", "seed": 3, "count": 4}`` -> the same with ``images``: base64
        PNGs. ``class`` may be left out when the model knows only one."""
        out = []
        for item in inputs:
            if not isinstance(item, dict):
                raise BadInput('each input must be an object like {"class": "dress", "count": 4}')
            default = self.classes[0] if len(self.classes) == 1 else None
            cls = item.get("class", default)
            if not isinstance(cls, str):
                raise BadInput(f'"class" is required; one of: {", ".join(self.classes)}')
            count = item.get("count", 1)
            seed = item.get("seed", 0)
            temp = item.get("temperature", 1.0)
            if not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
                raise BadInput(f'"count" must be an integer from 1 to {MAX_COUNT}')
            if not isinstance(seed, int) or not isinstance(temp, int | float) or temp <= 0:
                raise BadInput('"seed" must be an integer and "temperature" a positive number')
            images = self.generate(cls, count, seed, float(temp))
            out.append(
                {
                    "class": cls,
                    "seed": seed,
                    "format": "png",
                    "images": [base64.b64encode(png_bytes(to_image(t))).decode() for t in images],
                }
            )
        return out


class ImageGenerator(RecipeBase):
    name = NAME
    description = SPECS[NAME].description
    Params = GeneratorParams

    def check_dataset(self, ds: LocalDataset, params: GeneratorParams | None = None) -> None:
        check_generator_dataset(ds, params)

    def train(self, ctx: RunContext, ds: LocalDataset, params: GeneratorParams) -> TrainOutput:
        self.check_dataset(ds, params)
        seed_everything(params.seed)
        device = resolve_device(ctx.device)
        classes = classes_of(ds)
        x, y = load_split(ds, ds.select("image", "train"), params.image_size, classes)
        vx, vy = load_split(ds, ds.select("image", "validation"), params.image_size, classes)
        ctx.log(f"{NAME}: {len(x)} training pictures in {len(classes)} classes")
        model = ConditionalVAE(len(classes), params.image_size, params.latent, params.width).to(
            device
        )
        opt = torch.optim.Adam(model.parameters(), lr=params.lr)

        def batches(epoch: int) -> Any:
            for idx in batched(epoch_order(len(x), params.seed, epoch), params.batch_size):
                yield x[idx].to(device), y[idx].to(device)

        def step(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
            out = m(*batch)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            return {k: v.item() for k, v in out.items()} | {"samples": len(batch[0])}

        def validate(m: nn.Module) -> dict[str, float]:
            return {"val_loss": _nll(m, vx, vy, device)}

        result = fit(
            ctx,
            model,
            opt,
            epochs=params.epochs,
            steps_per_epoch=steps_in(len(x), params.batch_size),
            batches=batches,
            step=step,
            validate=validate,
        )
        model_dir = ctx.artifacts_dir / "model"
        if is_main():
            save_weights(model, model_dir)
            ModelConfig(NAME, params.model_dump(), {"classes": classes}).write(model_dir)
        return TrainOutput(model_dir, result.metrics, result.epochs_run, result.resumed_from_epoch)

    def _load(
        self, model_dir: Path, device: str
    ) -> tuple[ConditionalVAE, ModelConfig, torch.device]:
        cfg = ModelConfig.read(model_dir, NAME)
        dev = resolve_device(device)
        model = load_weights(_vae(cfg), model_dir, dev)
        assert isinstance(model, ConditionalVAE)
        return model, cfg, dev

    def evaluate(self, ctx: RunContext, model_dir: Path, ds: LocalDataset) -> EvalOutput:
        model, cfg, dev = self._load(model_dir, ctx.device)
        classes: list[str] = cfg.info["classes"]
        size = int(cfg.params["image_size"])
        pics = eval_pictures(NAME, ds, classes, size)
        torch.manual_seed(EVAL_SEED)
        nll = _nll(model, pics.vx, pics.vy, dev)
        metrics, details = sample_quality(ctx, model.sample, pics, classes, dev)
        metrics |= {"val_loss": nll, "bits_per_dim": nll / (math.log(2) * 3 * size * size)}
        per_class = int(cfg.params["samples_per_class"])
        files = class_grids(model.sample, classes, per_class, dev, ctx.artifacts_dir / "samples")
        report = ctx.artifacts_dir / "evaluation.json"
        report.write_text(json.dumps({"metrics": metrics, **details}, indent=2))
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        ctx.log(f"{NAME}: {shown}; sample grids in {files[0].parent}")
        return EvalOutput(metrics, details, [*files, report])

    def load(self, model_dir: Path, device: str = "cpu") -> GeneratorPredictor:
        model, cfg, dev = self._load(model_dir, device)
        return GeneratorPredictor(model, list(cfg.info["classes"]), dev)

    def export(self, model_dir: Path, dest: Path) -> list[Path]:
        ModelConfig.read(model_dir, NAME)
        return export_files(model_dir, dest, [WEIGHTS_FILE, "config.json"])


@torch.no_grad()
def _nll(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """Mean negative ELBO per picture: an upper bound on the held-out negative log-likelihood."""
    if not len(x):
        return float("nan")
    total = 0.0
    for i in range(0, len(x), 256):
        xb, yb = x[i : i + 256].to(device), y[i : i + 256].to(device)
        total += float(model(xb, yb)["loss"]) * len(xb)
    return total / len(x)
