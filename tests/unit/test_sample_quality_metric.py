"""The generated-picture metric (issue 15): KID in the trained classifier's features prefers real
held-out pictures to blurred, speckled and random ones, and scores real pictures about 0.

The "generators" here draw real training pictures of the class asked for (a perfect generator)
or damaged copies of them, so what is measured is the metric, not a model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gureum import samples
from gureum.recipes import LocalDataset, LocalRunContext
from gureum.recipes import sample_quality as sq
from gureum.recipes.sample_quality import (
    EvalPictures,
    Sampler,
    classes_of,
    eval_pictures,
    kid,
    kid_spread,
    sample_quality,
)

CPU = torch.device("cpu")


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur (reflect padding), what a VAE's samples look like."""
    r = torch.arange(-2, 3, dtype=x.dtype)
    w = torch.exp(-(r**2) / (2 * sigma * sigma))
    w = w / w.sum()
    c = x.shape[1]
    out = F.pad(x, (2, 2, 2, 2), mode="reflect")
    out = F.conv2d(out, w.view(1, 1, 1, 5).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, w.view(1, 1, 5, 1).repeat(c, 1, 1, 1), groups=c)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[EvalPictures, list[str], Path]:
    root = tmp_path_factory.mktemp("garments")
    samples.write("garments", root, count=320)
    ds = LocalDataset.from_folder(root)
    classes = classes_of(ds)
    return eval_pictures("test", ds, classes, 32), classes, tmp_path_factory.mktemp("run")


@pytest.fixture(scope="module")
def measure(
    setup: tuple[EvalPictures, list[str], Path],
) -> Callable[[Callable[[torch.Tensor], torch.Tensor]], dict[str, float]]:
    """The metrics of a generator that draws training pictures of the asked class and passes
    them through ``damage``. The feature extractor (seeded, so the same every call) is
    trained once for the module."""
    pics, classes, folder = setup
    ctx = LocalRunContext(folder)
    extractor = sq.feature_extractor(ctx, pics.tx, pics.ty, len(classes), CPU)
    by_class = [torch.nonzero(pics.ty == i).flatten() for i in range(len(classes))]

    def run(damage: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        def draw(y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            picked = [
                int(by_class[int(c)][torch.randint(len(by_class[int(c)]), (1,), generator=gen)])
                for c in y
            ]
            return damage(pics.tx[picked]).clamp(0, 1)

        sampler: Sampler = draw
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sq, "feature_extractor", lambda *_: extractor)
            metrics, details = sample_quality(ctx, sampler, pics, classes, CPU)
        assert details["generated_pictures"] == sq.SAMPLES_PER_PICTURE * len(pics.vx)
        return metrics

    return run


def test_kid_is_about_zero_for_one_distribution_and_grows_with_a_shift() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 16, generator=gen), torch.randn(400, 16, generator=gen)
    same, shifted = kid(a, b), kid(a + 0.5, b)
    assert abs(same) < 0.02 < shifted
    assert kid(a + 1.0, b) > shifted
    assert 0 < kid_spread(a + 0.5, b, gen) < shifted
    assert kid(a[:1], b) != kid(a[:1], b)  # nan: too few to estimate


def test_real_pictures_score_about_zero_and_below_blurred_speckled_and_noise(
    measure: Callable[[Callable[[torch.Tensor], torch.Tensor]], dict[str, float]],
) -> None:
    noise_gen = torch.Generator().manual_seed(7)
    real = measure(lambda x: x)
    soft = measure(lambda x: blur(x, 0.7))
    blurred = measure(lambda x: blur(x, 1.0))
    speckled = measure(lambda x: x + 0.2 * torch.randn(x.shape, generator=noise_gen))
    noise = measure(lambda x: torch.rand(x.shape, generator=noise_gen))
    # A perfect generator scores what real pictures do: about 0, within the noise scale.
    assert abs(real["mmd"]) < 3 * real["mmd_std"]
    assert abs(real["mmd"] - real["mmd_reference"]) < 3 * real["mmd_std"]
    # Damage of every kind scores worse, by more than the noise, the more the worse.
    for damaged in (soft, blurred, speckled):
        assert damaged["mmd"] > real["mmd"] + 2 * real["mmd_std"], damaged
    assert real["mmd"] < soft["mmd"] < blurred["mmd"] < noise["mmd"]
    assert real["class_accuracy"] > 0.9 > noise["class_accuracy"]
