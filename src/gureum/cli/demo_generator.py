"""Which generator `gureum demo` trains, and why: measured, not assumed (issue 15).

Two recipes draw garments: image-generator (a conditional VAE) and image-diffusion (a
class-conditional diffusion UNet). The demo trains the one that gives the better pictures
within its training budget on this machine. Two measurements decide:

- ``MEASURED``: the side-by-side benchmark at equal training CPU time on the same sample
  (``benchmarks/diffusion_vs_vae.py``, recorded in docs/benchmarks.md, "Image diffusion vs the
  VAE"): the shared sample-quality metrics and the optimizer steps each model had.
- ``probe``: here and now, the time of one training step of each model at the demo's settings
  (a second or two), which turns the demo's budget into steps for each.

Diffusion is chosen only when the benchmark recorded it ahead of the VAE with no more
optimizer steps than it would get in the demo's budget here; otherwise the VAE, and the demo
says so with the numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

VAE, DIFFUSION = "image-generator", "image-diffusion"
DOC = 'docs/benchmarks.md, "Image diffusion vs the VAE (issue 15)"'


@dataclass(frozen=True)
class Measured:
    """One recipe's best run of the equal-time benchmark."""

    recipe: str
    params: str
    steps: int  # optimizer steps it had in the budget
    mmd: float  # KID, lower is better; real pictures score about 0
    class_accuracy: float  # share of samples recognised as the class asked for


# The benchmark's record (180 CPU-s each, garments sample, 2 cores, one torch thread; KID
# since 2026-12-04 evening; see DOC). Update it with
# the benchmark's numbers when either recipe changes.
BUDGET_CPU_S = 180
MEASURED_ON = "2026-12-05, python-svc (2 cores, quiet), run s1"
MEASURED = {
    VAE: Measured(VAE, "defaults", 9168, 0.0075, 0.963),
    DIFFUSION: Measured(
        DIFFUSION,
        "defaults (v_prediction, ema_decay 0.99, snr_gamma 5, dpm-solver)",
        3232,
        -0.0337,
        1.0,
    ),
}


@dataclass(frozen=True)
class Choice:
    recipe: str
    reason: str  # the verdict, then what was recorded, then what was measured here
    step_ms: dict[str, float]
    steps_in_budget: dict[str, int]
    budget_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"measured": {k: asdict(v) for k, v in MEASURED.items()}}


def probe(
    image_size: int, vae_batch: int, diffusion_batch: int, repeats: int = 3
) -> dict[str, float]:
    """Milliseconds of one training step (forward, backward, optimizer) of each model at the
    demo's picture size, with their default shapes, on this machine now (one thread, as the
    demo's one-CPU job)."""
    import torch

    from gureum.recipes.diffusion_nets import Diffusion
    from gureum.recipes.nets import ConditionalVAE
    from gureum.recipes.params import DiffusionParams, GeneratorParams

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            g = GeneratorParams(image_size=image_size)
            vae = ConditionalVAE(5, image_size, g.latent, g.width)
            d = DiffusionParams(image_size=max(16, image_size - image_size % 16))
            diffusion = Diffusion(5, d.model_dump())
            return {
                VAE: _step_ms(vae, vae.parameters(), vae_batch, image_size, repeats),
                DIFFUSION: _step_ms(
                    diffusion, diffusion.net.parameters(), diffusion_batch, d.image_size, repeats
                ),
            }
    finally:
        torch.set_num_threads(threads)


def _step_ms(model: Any, params: Any, batch: int, size: int, repeats: int) -> float:
    import torch

    opt = torch.optim.Adam(params, lr=1e-3)
    x, y = torch.rand(batch, 3, size, size), torch.randint(0, 5, (batch,))
    times = []
    for _ in range(repeats + 1):  # the first one warms up
        t = time.perf_counter()
        loss = model(x, y)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append((time.perf_counter() - t) * 1000)
    return sorted(times[1:])[len(times[1:]) // 2]


def choose(vae_steps: int, step_ms: dict[str, float]) -> Choice:
    """The recipe for a demo that gives the VAE ``vae_steps`` optimizer steps, given the
    measured step times here: the same time buys diffusion fewer steps."""
    budget_s = vae_steps * step_ms[VAE] / 1000
    steps = {VAE: vae_steps, DIFFUSION: math.floor(budget_s * 1000 / step_ms[DIFFUSION])}
    v, d = MEASURED[VAE], MEASURED[DIFFUSION]
    diffusion_ahead = d.mmd < v.mmd and d.class_accuracy > v.class_accuracy
    recorded = (
        f"at {BUDGET_CPU_S} CPU-s each ({MEASURED_ON}; {DOC}) the VAE scored mmd {v.mmd:.3f} "
        f"with {v.class_accuracy:.0%} of its samples recognised as the class asked for, "
        f"diffusion at best mmd {d.mmd:.3f} and {d.class_accuracy:.0%} after {d.steps:,} steps "
        "(mmd is KID: lower is better; real pictures score about 0)"
    )
    here = (
        f"here a training step takes the VAE {step_ms[VAE]:.0f} ms and diffusion "
        f"{step_ms[DIFFUSION]:.0f} ms, so the demo's ~{budget_s:.0f} s of training buys the VAE "
        f"{vae_steps:,} steps and diffusion {steps[DIFFUSION]:,}"
    )
    if diffusion_ahead and steps[DIFFUSION] >= d.steps:
        why = f"diffusion was ahead, and gets the steps it needed: {recorded}; {here}"
        return Choice(DIFFUSION, why, step_ms, steps, budget_s)
    if diffusion_ahead:
        verdict = "diffusion was ahead only with more steps than it gets here"
    else:
        verdict = "diffusion was not ahead on both measures"
    return Choice(VAE, f"{verdict}: {recorded}; {here}", step_ms, steps, budget_s)
