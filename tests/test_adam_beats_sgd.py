"""Chapter 13's checks on synthetic results: an ideal result passes each, and breaking one claim fails its check."""

from __future__ import annotations

import pytest
import torch

from icl import optimisation, presets
from icl.experiments import adam_beats_sgd

S, C = 2, 3


def ideal() -> adam_beats_sgd.AdamBeatsSGDResult:
    """Adam 10× below SGD everywhere; Setting 3's noise with a long tail; Adam's path better conditioned and
    less curved; Adam's smoothness rising with its gradient norm."""
    steps = torch.arange(0, 2001, 10)
    U = len(steps)
    test_loss = torch.ones(C, 41, 2 * S)
    test_loss[:, -5:, :S], test_loss[:, -5:, S:] = 1.0, 0.1  # the last 10 % of the steps
    gradient = torch.linspace(2.0, 0.01, U)[None, :, None].expand(C, U, 2 * S).clone()
    smoothness = gradient.clone()  # rank correlation 1 with the gradient norm
    smoothness[..., :S] *= 10  # SGD meets more curvature
    condition = torch.ones(C, 6, 2 * S)
    condition[..., :S] = 3.0
    noise = torch.rand(C, 500, S, generator=torch.Generator().manual_seed(0)) + 1.0
    noise[2, :20] *= 10  # Setting 3's tail
    return adam_beats_sgd.AdamBeatsSGDResult(
        settings=("gaussian", "short", "gamma"),
        test_steps=torch.arange(0, 2001, 50),
        test_loss=test_loss,
        smoothness_steps=steps,
        smoothness=smoothness,
        gradient_norm=gradient,
        hessian_steps=torch.arange(0, 1251, 250),
        condition_eigen=condition,
        condition_diagonal=condition.clone(),
        noise=noise,
        training_loss=torch.ones(C, 2000, 2 * S),
        elapsed_seconds=1.0,
    )


def test_an_ideal_result_passes_every_check() -> None:
    checks = adam_beats_sgd.claim_checks(ideal())
    assert checks.passed and len(checks.checks) == 8, checks


def test_one_spike_at_the_last_evaluation_does_not_decide_the_final_loss() -> None:
    result = ideal()
    result.test_loss[0, -1, S:] = 50.0  # Adam spikes at the very last test point
    sgd, adam = adam_beats_sgd.final_loss(result)
    assert torch.equal(adam[0], torch.full((S,), 0.1)) and adam_beats_sgd.claim_checks(result).passed


@pytest.mark.parametrize(
    ("breaks", "check"),
    [
        (lambda r: r.test_loss[0, -5:, S:].fill_(0.5), "Setting 1: Adam's final test loss"),
        (lambda r: r.test_loss[1, -5:, S:].fill_(2.0), "every setting: Adam's final test loss"),
        (lambda r: r.noise[0, :20].mul_(100), "gradient noise at the start"),
        (lambda r: r.condition_diagonal[0, 3, S:].fill_(9.0), "step 750: R_med(SGD) / R_med(Adam) by Hessian diagonal"),
        (lambda r: r.smoothness[2, :, S:].mul_(100), "directional smoothness"),
        (lambda r: r.smoothness[0, :, S].copy_(r.smoothness[0, :, S].flip(0)), "Spearman"),  # ρ = −1
    ],
)
def test_breaking_a_claim_fails_its_check(breaks, check: str) -> None:
    result = ideal()
    breaks(result)
    failed = [c.name for c in adam_beats_sgd.claim_checks(result).checks if not c.passed]
    assert len(failed) == 1 and check in failed[0], failed


def test_spearman_and_tail_ratio() -> None:
    x = torch.arange(10.0)[:, None]
    assert adam_beats_sgd.spearman(x, x**3).item() == pytest.approx(1.0)
    assert adam_beats_sgd.spearman(x, -x).item() == pytest.approx(-1.0)
    assert adam_beats_sgd.spearman(x[:2], x[:2]).item() == 0.0  # two points: no evidence
    noise = torch.ones(100, 2)
    noise[:2] = 5.0  # 2 % of the draws far out: q99 = 5, q50 = 1
    assert optimisation.tail_ratio(noise).item() == pytest.approx(5.0)


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="settings"):
        presets.get("adam_beats_sgd", "quick", device="cpu", settings=("short",))
    with pytest.raises(ValueError, match="settings\\[0\\]"):
        presets.get("adam_beats_sgd", "quick", device="cpu", settings=("cauchy",))
    with pytest.raises(ValueError, match="n_layers"):
        presets.get("adam_beats_sgd", "quick", device="cpu", n_layers=0)
