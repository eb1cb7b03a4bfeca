"""How good a class-conditional image generator's samples are: one measurement for every
generative image recipe (image-generator's VAE, image-diffusion's UNet), so they compare.

Sample quality is KID (Binkowski et al. 2018, "Demystifying MMD GANs"): the unbiased squared
kernel MMD with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1) ** 3`` between generated
and held-out pictures, in the penultimate-layer features (``SmallCNN.features``, d = 64) of a
small CNN classifier trained here, at evaluation time, on the dataset's training split with a
fixed seed (where KID uses Inception's; this dataset's own classifier knows its pictures). The
same data always gives the same feature extractor, so two models evaluated on one dataset
version are compared on equal terms (what "must beat production" needs). Features are divided
by one number, the root mean square of the held-out pictures' features, so ``x.y / d`` is about
1 whatever the network's scale. A single-class dataset has nothing to classify; its features
come from the same CNN left at its seeded random initialisation.

An RBF kernel at the median bandwidth (what this measured before) barely told blurred pictures
from real ones at this sample size: blurred VAE samples scored below real pictures
(docs/benchmarks.md, issue 15); ``tests/unit/test_sample_quality_metric.py`` holds the metric to
preferring real held-out pictures over blurred copies, speckled copies and noise.

Reported: ``mmd`` (KID, generated vs validation, lower is better; about 0 for a perfect
generator, negative values are sampling noise), ``mmd_std`` (the spread of the same estimate
over random halves of both sets: a noise scale, somewhat larger than the full estimate's),
``mmd_reference`` (real training pictures vs validation: what a generator that drew real
pictures would score) and ``class_accuracy`` (how often the classifier recognises the class a
sample was asked for). ``SAMPLES_PER_PICTURE`` samples are drawn per held-out picture, asked
for its class.
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
from gureum.recipes.nets import SmallCNN
from gureum.recipes.params import ClassifierParams

SINGLE_CLASS = "all"
EVAL_SEED = 1234
# Fixed, not parameters: two models evaluated on one dataset must share the feature space.
FEATURE_EPOCHS = 20
FEATURE_WIDTH = 16
SAMPLES_PER_PICTURE = 2  # generated per held-out picture: the real side is the scarce one
SUBSETS = 20  # random halves that estimate ``mmd_std``

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
    """``mmd``, ``mmd_std``, ``mmd_reference`` and (2+ classes) ``class_accuracy`` of
    ``SAMPLES_PER_PICTURE`` samples per validation picture, asked for that picture's class; and
    what they were measured with."""
    single = list(classes) == [SINGLE_CLASS]
    extractor = feature_extractor(ctx, pics.tx, pics.ty, len(classes), dev)
    gen = torch.Generator().manual_seed(EVAL_SEED)
    asked = pics.vy.repeat(SAMPLES_PER_PICTURE)
    fake = torch.cat(
        [sampler(asked[i : i + batch].to(dev), gen).cpu() for i in range(0, len(asked), batch)]
    )
    real_f, fake_f = features(extractor, pics.vx, dev), features(extractor, fake, dev)
    ref_idx = torch.randperm(len(pics.tx), generator=gen)[: len(fake)]
    train_f = features(extractor, pics.tx[ref_idx], dev)
    scale = float(real_f.pow(2).mean().sqrt()) or 1.0
    real_f, fake_f, train_f = real_f / scale, fake_f / scale, train_f / scale
    metrics = {
        "mmd": kid(fake_f, real_f),
        "mmd_std": kid_spread(fake_f, real_f, gen),
        "mmd_reference": kid(train_f, real_f),
    }
    if not single:
        with torch.no_grad():
            guessed = torch.cat(
                [
                    extractor(fake[i : i + batch].to(dev)).argmax(1).cpu()
                    for i in range(0, len(fake), batch)
                ]
            )
        metrics["class_accuracy"] = float((guessed == asked).float().mean())
    trained = "random" if single else f"trained on {len(pics.tx)} training pictures"
    details = {
        "classes": list(classes),
        "validation_pictures": len(pics.vx),
        "generated_pictures": len(fake),
        "reference_pictures": len(train_f),
        "feature_extractor": f"SmallCNN (width {FEATURE_WIDTH}), {trained}",
        "mmd": "KID: unbiased MMD^2, kernel (x.y/d + 1)^3 on the CNN's penultimate features",
    }
    return metrics, details


def kid(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased squared MMD between feature sets ``x`` and ``y`` with KID's cubic polynomial
    kernel; 0 means the same distribution, small negative values are sampling noise."""
    if len(x) < 2 or len(y) < 2:
        return float("nan")
    x, y = x.double(), y.double()
    d = x.shape[1]

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a @ b.T / d + 1) ** 3

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(xx + yy - 2 * kxy.mean())


def kid_spread(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> float:
    """The standard deviation of ``kid`` over ``SUBSETS`` random halves of both sets."""
    if len(x) < 4 or len(y) < 4:
        return float("nan")
    values = torch.tensor(
        [
            kid(
                x[torch.randperm(len(x), generator=gen)[: len(x) // 2]],
                y[torch.randperm(len(y), generator=gen)[: len(y) // 2]],
            )
            for _ in range(SUBSETS)
        ]
    )
    return float(values.std())


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
