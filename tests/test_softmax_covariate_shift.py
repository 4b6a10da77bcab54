"""The softmax-transformer covariate-shift experiment: tiny runs (shapes, reproducible, cached), the linear
transformers' exact errors, claim checks that can fail, and bad input named before any work."""

from __future__ import annotations

import pytest
import torch

from icl import presets, theory
from icl.experiments import softmax_covariate_shift

TINY = dict(
    dim=3,
    n_context=4,
    max_context=8,
    width=16,
    n_layers=1,
    n_heads=2,
    scales=(1.0, 4.0),
    n_seeds=2,
    train_steps=20,
    batch_size=16,
    n_test=64,
)


def tiny(**overrides: object) -> softmax_covariate_shift.SoftmaxShiftConfig:
    return presets.get("softmax_covariate_shift", "quick", device="cpu", **(TINY | overrides))


def test_tiny_run_shapes_reproducibility_cache_and_summary() -> None:
    config = tiny()
    first = softmax_covariate_shift.run(config, progress=False)
    P, S, K = 3, 2, 9
    assert first.softmax.shape == first.softmax_se.shape == (2, S, P, K)
    assert first.least_squares.shape == first.linear_fixed.shape == first.linear_random.shape == (P, K)
    assert first.conditions == ("I", "c = 1", "c = 4")
    torch.testing.assert_close(first.zero_levels, torch.tensor([1.0, 1.0, 4.0], dtype=torch.float64))
    second = softmax_covariate_shift.run(config, progress=False)  # from the store
    for a, b in zip(first[:-1], second[:-1], strict=True):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        else:
            assert a == b
    # the numbers the chapter quotes: d = 3, N = 4, so M = min(2d, N) = 4, [d, N] = [3, 4] and (N, 2N] = (4, 8]
    summary = softmax_covariate_shift.summary(first, config)
    assert (summary["d"], summary["n"], summary["at"], summary["seeds"], summary["c_max"]) == (3, 4, 4, 2, 4.0)
    fixed = first.softmax[0].mean(0)  # (P, K)
    assert summary["fixed_at"] == fixed[0, 4].item() and summary["linear_at"] == first.linear_fixed[0, 4].item()
    assert summary["inside"] == pytest.approx(fixed[0, 3:5].mean().item())
    assert summary["beyond"] == pytest.approx(fixed[0, 5:9].mean().item())
    per_seed = first.softmax[0, :, 0, 5:9].mean(-1) / first.softmax[0, :, 0, 3:5].mean(-1)
    torch.testing.assert_close(softmax_covariate_shift.jumps(first), per_seed)
    assert (summary["jump_low"], summary["jump_high"]) == (per_seed.min().item(), per_seed.max().item())
    assert summary["jump_doubled"] == int((per_seed >= 2).sum())
    assert summary["random_c"] == pytest.approx(first.softmax[1].mean(0)[2, 3:5].mean().item())


def test_isotropic_linear_errors_are_the_one_step_loss() -> None:
    variances = torch.tensor([[1.0, 2.0, 0.5], [3.0, 0.2, 1.0]], dtype=torch.float64)
    errors = softmax_covariate_shift.isotropic_linear_errors(0.4, variances, 6)
    assert errors.shape == (2, 7)
    torch.testing.assert_close(errors[:, 0], variances.sum(-1))
    for c in range(2):
        for m in range(1, 7):
            exact = theory.one_step_loss(0.4 * torch.eye(3, dtype=torch.float64), torch.diag(variances[c]), m)
            torch.testing.assert_close(errors[c, m], exact, rtol=1e-12, atol=0)


def test_least_squares_baseline_on_identity_is_d_minus_m_over_d() -> None:
    r = softmax_covariate_shift.run(tiny(n_test=2000), progress=False)
    expected = torch.clamp(1 - torch.arange(9) / 3, min=0).double()
    assert ((r.least_squares[0] - expected).abs() <= 4 * r.least_squares_se[0] + 1e-9).all()


def test_undertrained_run_fails_its_claim_checks() -> None:
    checks = softmax_covariate_shift.claim_checks(softmax_covariate_shift.run(tiny(train_steps=3), progress=False))
    assert not checks.passed
    with pytest.raises(AssertionError):
        checks.verify()


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"max_context": 2}, "max_context"),
        ({"n_heads": 3}, "width"),
        ({"scales": (-1.0,)}, "scales"),
        ({"dim": 0}, "dim"),
        ({"learning_rate": 0.0}, "learning_rate"),
    ],
)
def test_bad_input_names_the_parameter(overrides: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        tiny(**overrides)
