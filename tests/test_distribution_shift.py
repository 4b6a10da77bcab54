"""The distribution-shift experiment: tiny runs (shapes, reproducible, cached), its Monte Carlo against the closed
forms, claim checks that can fail, and bad input named before any work."""

from __future__ import annotations

import pytest
import torch

from icl import presets
from icl.checks import family_z
from icl.experiments import distribution_shift

TINY = dict(
    spectrum=(1.0, 1.0, 1.0),
    n_context=8,
    test_context=10,
    scales=(0.5, 2.0),
    noise_stds=(0.0, 1.0),
    noise_contexts=(6, 12),
    n_seeds=2,
    train_steps=30,
    batch_size=64,
    n_test=4000,
)


def tiny(**overrides: object) -> distribution_shift.DistributionShiftConfig:
    return presets.get("distribution_shift", "quick", device="cpu", **(TINY | overrides))


def test_tiny_run_shapes_reproducibility_cache_and_summary() -> None:
    config = tiny()
    first = distribution_shift.run(config, progress=False)
    assert first.covariate_theory.shape == first.covariate_trained.shape == (2,)
    assert first.noise_theory.shape == first.noise_least_squares.shape == (2, 2)
    assert first.orthogonal_theorem.shape == (2,) and first.learned.shape == first.random_learned.shape == (2, 3, 3)
    second = distribution_shift.run(config, progress=False)  # from the store
    for a, b in zip(first[:-1], second[:-1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the numbers the chapter quotes, at the largest scale c = 2 and the shortest noisy length M = 6
    summary = distribution_shift.summary(first, config)
    assert (summary["c_max"], summary["small_m"], summary["sigma_max"], summary["seeds"]) == (2.0, 6, 1.0, 2)
    assert summary["trained_c_max"] == first.covariate_trained[1].item()
    assert summary["zero_c_max"] == first.covariate_zero[1].item() == pytest.approx(4 * 3)  # c² tr Λ
    assert summary["noise_lsa_added"] == (first.noise_trained[1, 0] - first.noise_trained[0, 0]).item()
    assert summary["fixed_diag"] == pytest.approx(8 / (8 + 3 + 1))  # Γ⁻¹ = N/(N + d + 1) I for Λ = I


def test_monte_carlo_matches_the_closed_forms_at_any_training() -> None:
    r = distribution_shift.run(tiny(n_test=40_000, train_steps=1), progress=False)
    covariate = ((r.covariate_theorem - r.covariate_theory) / r.covariate_theorem_se).abs()
    noise = ((r.noise_theorem - r.noise_theory) / r.noise_theorem_se).abs()
    least_squares = ((r.noise_least_squares - r.noise_least_squares_theory) / r.noise_least_squares_se)[1].abs()
    assert torch.cat([covariate, noise.flatten(), least_squares]).max() < family_z(8)
    assert r.noise_least_squares[0].max() < 1e-20 and r.covariate_least_squares.max() < 1e-20  # exact without noise
    assert r.orthogonal_theorem.max() < 1e-12  # Λ = I: exactly 0 on an orthogonal query


def test_undertrained_run_fails_its_claim_checks() -> None:
    checks = distribution_shift.claim_checks(
        distribution_shift.run(tiny(train_steps=3), progress=False), isotropic=True
    )
    failed = [c.name for c in checks.checks if not c.passed]
    assert any(name.startswith("random") for name in failed)
    assert any("trained" in name for name in failed)
    with pytest.raises(AssertionError):
        checks.verify()


def test_the_orthogonal_query_check_needs_an_isotropic_covariance() -> None:
    assert tiny().isotropic and not tiny(spectrum=(2.0, 1.0, 1.0)).isotropic


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"spectrum": (1.0, -0.5)}, "spectrum"),
        ({"scales": (0.0,)}, "scales"),
        ({"noise_stds": (-1.0,)}, "noise_stds"),
        ({"noise_contexts": (4,)}, "noise_contexts"),
        ({"test_context": 0}, "test_context"),
        ({"n_test": 1}, "n_test"),
    ],
)
def test_bad_input_names_the_parameter(overrides: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        tiny(**overrides)
