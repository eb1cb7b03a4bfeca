"""`gureum demo`'s choice of generator (issue 15): the recorded equal-time benchmark and the
step times measured here decide, and the reason names the numbers."""

from __future__ import annotations

import pytest

from gureum.cli import demo_generator as g
from gureum.cli.demo_generator import DIFFUSION, VAE, Measured, choose, probe


def test_the_probe_times_a_training_step_of_each_model_here() -> None:
    ms = probe(image_size=16, vae_batch=4, diffusion_batch=2, repeats=1)
    assert set(ms) == {VAE, DIFFUSION} and all(v > 0 for v in ms.values())


def test_the_vae_when_diffusion_would_not_get_the_steps_it_needed_with_the_numbers_why() -> None:
    choice = choose(320, {VAE: 10.0, DIFFUSION: 200.0})
    assert choice.recipe == VAE
    assert choice.steps_in_budget == {VAE: 320, DIFFUSION: 16}
    assert choice.budget_s == pytest.approx(3.2)
    recorded = g.MEASURED[DIFFUSION]
    assert choice.reason.startswith("diffusion was ahead only with more steps than it gets here")
    assert f"after {recorded.steps:,} steps" in choice.reason
    assert "docs/benchmarks.md" in choice.reason and "buys the VAE 320 steps" in choice.reason
    assert choice.as_dict()["measured"][VAE]["class_accuracy"] == g.MEASURED[VAE].class_accuracy


def test_diffusion_once_recorded_ahead_and_it_gets_the_steps_it_needed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ahead = {
        VAE: Measured(VAE, "defaults", 1000, 0.2, 0.8),
        DIFFUSION: Measured(DIFFUSION, "defaults", 500, 0.05, 0.9),
    }
    monkeypatch.setattr(g, "MEASURED", ahead)
    fast = choose(1000, {VAE: 10.0, DIFFUSION: 20.0})  # 10 s buy diffusion 500 steps
    assert (fast.recipe, fast.steps_in_budget[DIFFUSION]) == (DIFFUSION, 500)
    slow = choose(1000, {VAE: 10.0, DIFFUSION: 21.0})
    assert slow.recipe == VAE
    assert slow.reason.startswith("diffusion was ahead only with more steps than it gets here")


def test_the_vae_when_diffusion_was_not_ahead_on_both_measures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    behind = {
        VAE: Measured(VAE, "defaults", 1000, 0.0, 0.97),
        DIFFUSION: Measured(DIFFUSION, "defaults", 500, -0.01, 0.93),  # lower mmd only
    }
    monkeypatch.setattr(g, "MEASURED", behind)
    choice = choose(1000, {VAE: 10.0, DIFFUSION: 10.0})  # all the steps it could want
    assert choice.recipe == VAE
    assert choice.reason.startswith("diffusion was not ahead on both measures")
