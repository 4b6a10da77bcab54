"""Chapter 15's experiment: Γ*'s ridge read off the theory, its checks on synthetic results and its parameters."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from icl import presets
from icl.experiments import precgd_matrix_sensing as exp

T, S = 3001, 3


def test_the_in_context_ridge_is_trace_over_n() -> None:
    covariance = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    for n in (3, 10, 100):
        assert exp.context_ridge(covariance, n).item() == pytest.approx(7.0 / n)


def ideal() -> exp.PrecGDResult:
    k = torch.arange(T, dtype=torch.float64)[:, None].expand(T, S)
    linear = (1e-1 * 0.8**k).clamp(min=1e-16)
    sublinear = 1e-1 / (1 + k / 10)  # slope ≈ −1 late
    noisy = 4e-3 + 1e-1 * 0.8**k
    return exp.PrecGDResult(
        gd=sublinear,
        scaled_gd=linear.clone(),
        prec_gd=linear.clone(),
        exact_gd=(1e-1 * 0.98**k).clamp(min=1e-16),
        exact_prec_gd=linear.clone(),
        fixed_dampings=torch.tensor([1e-6, 1.0], dtype=torch.float64),
        fixed=torch.stack([sublinear.clamp(min=1e-9), sublinear.clamp(min=1e-3)]),
        prec_gd_damping=linear.clone(),
        prec_gd_distance=linear.clone(),
        noisy_gd=noisy * 0.9,
        noisy_scaled_gd=noisy.clone(),
        noisy_prec_gd=noisy.clone(),
        noisy_damping=torch.full((S,), 1e-2, dtype=torch.float64),
        noisy_floor=torch.full((S,), 4e-3, dtype=torch.float64),
        context_lengths=torch.tensor([5, 10]),
        context_damping=torch.tensor([1.0, 0.5], dtype=torch.float64),
        elapsed_seconds=1.0,
    )


def test_an_ideal_result_passes_every_check() -> None:
    checks = exp.claim_checks(ideal())
    assert checks.passed and len(checks.checks) == 10, checks


@pytest.mark.parametrize(
    ("breaks", "check"),
    [
        (lambda r: r.prec_gd[300, 0].fill_(1e-8), "PrecGD (η = √f): relative error at iteration 300"),
        (lambda r: r.gd[-1, 1].fill_(1e-5), "GD: relative error at iteration 3000"),
        (lambda r: r.gd[500:, 2].copy_(0.1 * (torch.arange(500.0, T) / 500) ** -2), "the steepest"),  # k^-2
        (lambda r: r.gd[500:, 2].fill_(1e-3), "the flattest"),
        (lambda r: r.exact_gd[-1, 0].fill_(1e-6), "exactly parameterised"),
        (lambda r: r.fixed[0, -1, 1].fill_(1e-12), "every fixed damping"),
        (
            lambda r: r.noisy_prec_gd[300:, 0].mul_(torch.linspace(1.0, 0.5, T - 300, dtype=torch.float64)),
            "noisy, PrecGD",
        ),
        (lambda r: r.noisy_gd[-1, 0].fill_(1e-3), "the smallest"),
        (lambda r: r.noisy_scaled_gd[-1, 0].fill_(1e-1), "the largest"),
    ],
)
def test_breaking_a_claim_fails_its_check(breaks, check: str) -> None:
    result = ideal()
    breaks(result)
    failed = [c.name for c in exp.claim_checks(result).checks if not c.passed]
    assert failed and all(check in name for name in failed), failed


def test_the_damping_check_reads_iteration_200() -> None:
    result = ideal()
    result.prec_gd[200, 0] = 1e-9
    result.prec_gd[201:, 0] = 1e-16
    failed = [c.name for c in exp.claim_checks(result).checks if not c.passed]
    assert len(failed) == 1 and "iteration 200" in failed[0]


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        (dict(dim=-3), "dim"),
        (dict(rank=2), "rank"),
        (dict(rank=30), "rank"),
        (dict(singular_values=()), "singular_values"),
        (dict(fixed_dampings=(1e-6, -1.0)), r"fixed_dampings\[1\]"),
        (dict(noise_std=0.0), "noise_std"),
        (dict(step_size=float("nan")), "step_size"),
    ],
)
def test_bad_parameters_are_named(changes: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        presets.get("precgd_matrix_sensing", "quick", device="cpu", **changes)


def test_a_short_run_fails_and_is_reproducible() -> None:
    config = dataclasses.replace(presets.get("precgd_matrix_sensing", "quick", device="cpu"), steps=20, dim=8)
    config = dataclasses.replace(config, n_measurements=160)
    first, second = exp.run(config), exp.run(config)
    assert all(torch.equal(a, b) for a, b in zip(first[:-1], second[:-1], strict=True) if isinstance(a, torch.Tensor))
    assert not exp.claim_checks(first).passed
