"""How good a class-conditional image generator's samples are: one measurement for every
generative image recipe (image-generator's VAE, image-diffusion's UNet), so they compare.

Sample quality is kernel MMD (RBF kernel, median bandwidth) between generated and held-out
pictures in the feature space of a small CNN classifier trained here, at evaluation time, on
the dataset's training split with a fixed seed. The same data always gives the same feature
extractor, so two models evaluated on one dataset version are compared on equal terms (what
"must beat production" needs). A single-class dataset has nothing to classify; its features
come from the same CNN left at its seeded random initialisation.

Reported: ``mmd`` (generated vs validation, lower is better), ``mmd_reference`` (real training
pictures vs validation: what a perfect generator would score) and ``class_accuracy`` (how
often the classifier recognises the class a sample was asked for).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gureum.recipes.base import DatasetMismatch, RunContext
from gureum.recipes.context import ScratchContext
from gureum.recipes.dataset import LocalDataset
from gureum.recipes.image_classifier import train_classifier
from gureum.recipes.images import load_split, save_grid
from gureum.recipes.metrics import median_bandwidth, mmd2
from gureum.recipes.nets import SmallCNN
from gureum.recipes.params import ClassifierParams

SINGLE_CLASS = "all"
EVAL_SEED = 1234
# Fixed, not parameters: two models evaluated on one dataset must share the feature space.
FEATURE_EPOCHS = 20
FEATURE_WIDTH = 16

# Pictures in [0, 1] for the class indices given (on the model's device); the generator, on
# the CPU, makes them repeatable.
Sampler = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def classes_of(ds: LocalDataset) -> list[str]:
    return ds.labels() or [SINGLE_CLASS]


@dataclass
class EvalPictures:
    """The held-out pictures of the model's classes and the training split, as tensors."""

    vx: torch.Tensor
    vy: torch.Tensor
    tx: torch.Tensor
    ty: torch.Tensor


def eval_pictures(recipe: str, ds: LocalDataset, classes: Sequence[str], size: int) -> EvalPictures:
    single = list(classes) == [SINGLE_CLASS]
    keep = [f for f in ds.select("image", "validation") if single or f.label in classes]
    if len(keep) < 2:
        raise DatasetMismatch(
            f"{recipe}: needs at least 2 validation pictures of the model's classes "
            f"({', '.join(classes)}); found {len(keep)}"
        )
    vx, vy = load_split(ds, keep, size, classes)
    tx, ty = load_split(ds, ds.select("image", "train"), size, classes)
    return EvalPictures(vx, vy, tx, ty)


def sample_quality(
    ctx: RunContext,
    sampler: Sampler,
    pics: EvalPictures,
    classes: Sequence[str],
    dev: torch.device,
    batch: int = 256,
) -> tuple[dict[str, float], dict[str, Any]]:
    """``mmd``, ``mmd_reference`` and (2+ classes) ``class_accuracy`` of one sample per
    validation picture, asked for that picture's class; and what they were measured with."""
    single = list(classes) == [SINGLE_CLASS]
    extractor = feature_extractor(ctx, pics.tx, pics.ty, len(classes), dev)
    gen = torch.Generator().manual_seed(EVAL_SEED)
    vy = pics.vy
    fake = torch.cat(
        [sampler(vy[i : i + batch].to(dev), gen).cpu() for i in range(0, len(vy), batch)]
    )
    real_f, fake_f = features(extractor, pics.vx, dev), features(extractor, fake, dev)
    ref_idx = torch.randperm(len(pics.tx), generator=gen)[: len(pics.vx)]
    train_f = features(extractor, pics.tx[ref_idx], dev)
    bandwidth = median_bandwidth(real_f)
    metrics = {
        "mmd": mmd2(fake_f, real_f, bandwidth),
        "mmd_reference": mmd2(train_f, real_f, bandwidth),
    }
    if not single:
        with torch.no_grad():
            guessed = torch.cat(
                [
                    extractor(fake[i : i + batch].to(dev)).argmax(1).cpu()
                    for i in range(0, len(fake), batch)
                ]
            )
        metrics["class_accuracy"] = float((guessed == vy).float().mean())
    trained = "random" if single else f"trained on {len(pics.tx)} training pictures"
    details = {
        "classes": list(classes),
        "validation_pictures": len(pics.vx),
        "feature_extractor": f"SmallCNN (width {FEATURE_WIDTH}), {trained}",
    }
    return metrics, details


def feature_extractor(
    ctx: RunContext, x: torch.Tensor, y: torch.Tensor, n: int, dev: torch.device
) -> SmallCNN:
    torch.manual_seed(EVAL_SEED)
    if n < 2:
        return SmallCNN(1, width=FEATURE_WIDTH).to(dev).eval()
    params = ClassifierParams(
        epochs=FEATURE_EPOCHS, seed=EVAL_SEED, width=FEATURE_WIDTH, image_size=x.shape[-1]
    )
    model, _, _, _ = train_classifier(ScratchContext(ctx, "mmd features"), x, y, n, params)
    return model.eval()


@torch.no_grad()
def features(model: SmallCNN, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.cat(
        [model.features(x[i : i + 256].to(device)) for i in range(0, len(x), 256)]
    ).cpu()


def class_grids(
    sampler: Sampler,
    classes: Sequence[str],
    per_class: int,
    dev: torch.device,
    folder: Path,
    name: str = "all",
) -> list[Path]:
    """``per_class`` samples of every class: ``<name>.png`` (a row per class) and, when
    ``name`` is ``all``, one ``<class>.png`` each."""
    gen = torch.Generator().manual_seed(EVAL_SEED)
    y = torch.arange(len(classes), device=dev).repeat_interleave(per_class)
    images = sampler(y, gen).cpu()
    files = [save_grid(images, per_class, folder / f"{name}.png")]
    if name != "all":
        return files
    for i, cls in enumerate(classes):
        rows = images[i * per_class : (i + 1) * per_class]
        files.append(save_grid(rows, per_class, folder / f"{cls}.png"))
    return files
