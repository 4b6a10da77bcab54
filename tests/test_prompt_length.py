"""The prompt-length experiment: tiny runs (shapes, reproducible, cached), its Monte Carlo against R(M, N), the
wrong normaliser told apart, claim checks that can fail, and bad input named before any work."""

from __future__ import annotations

import pytest
import torch

from icl import presets, tasks, theory
from icl.checks import family_z
from icl.evaluate import query_averaged_error
from icl.experiments import prompt_length

TINY = dict(
    spectrum=(1.5, 1.0, 0.5),
    train_contexts=(4, 12),
    test_contexts=(3, 12, 40),
    n_seeds=2,
    train_steps=30,
    batch_size=64,
    n_test=4000,
)


def tiny(**overrides: object) -> prompt_length.PromptLengthConfig:
    return presets.get("prompt_length", "quick", device="cpu", **(TINY | overrides))


def test_tiny_run_shapes_reproducibility_cache_and_summary() -> None:
    config = tiny()
    first = prompt_length.run(config, progress=False)
    M, N, S, d = 3, 2, 2, 3
    assert first.theory_error.shape == first.trained_mean.shape == first.theorem_error.shape == (M, N)
    assert first.trained_error.shape == first.learned_error.shape == (M, N, S)
    assert first.learned.shape == (N, S, d, d) and first.learned_floor.shape == (N, S)
    torch.testing.assert_close(
        first.theory_error,
        theory.prompt_length_error(first.covariance, first.test_contexts[:, None], first.train_contexts).total,
    )
    second = prompt_length.run(config, progress=False)  # from the store
    for a, b in zip(first[:-1], second[:-1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the seeds train from different starts
    assert not torch.allclose(first.learned[0, 0], first.learned[0, 1])
    # the numbers the chapter quotes: counts stay int (they print without ".0"), ratios from the result
    summary = prompt_length.summary(first, config)
    assert {k: summary[k] for k in ("seeds", "n_test", "points", "n_first", "n_last", "m_last")} == dict(
        seeds=2, n_test=4000, points=M * N, n_first=4, n_last=12, m_last=40
    )
    assert all(type(summary[k]) is int for k in ("points", "within_3", "n_first", "m_last"))
    assert 0 <= summary["within_3"] <= M * N and summary["z_bar"] == family_z(M * N)
    trained_z = (first.trained_mean - first.theory_error) / first.trained_mean_se
    assert summary["trained_z"] == trained_z.abs().max().item()
    assert summary["fixed_ratio"] == (first.fixed_normaliser_error[-1, 0] / first.theory_error[-1, 0]).item()
    assert 0 < summary["bound_low"] <= summary["bound_high"]


def test_the_theorems_predictor_matches_r_and_the_wrong_normaliser_does_not() -> None:
    config = tiny(n_test=40_000, train_steps=1)
    r = prompt_length.run(config, progress=False)
    z = ((r.theorem_error - r.theory_error) / r.theorem_error_se).abs()
    assert z.max() < family_z(z.numel())
    # 1/N kept at test time: its Monte Carlo error with the trained models is far from R at M ≫ N
    assert (r.fixed_normaliser_error[-1, 0] / r.theory_error[-1, 0]) > 2


def test_query_averaged_error_equals_the_squared_error_on_sampled_queries() -> None:
    lam = torch.diag(torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64))
    g = torch.Generator().manual_seed(3)
    b = tasks.sample_regression(200_000, 6, lam, generator=g, dtype=torch.float64)
    A = theory.optimal_preconditioner(lam, 6)
    weights = (b.y.unsqueeze(-1) * b.X).mean(-2) @ A.mT
    sampled = ((weights * b.x_query).sum(-1) - b.y_query) ** 2
    averaged = query_averaged_error(weights, b.w, lam)
    exact = theory.prompt_length_error(lam, 6, 6).total.item()
    se = sampled.std().item() / len(sampled) ** 0.5
    assert abs(sampled.mean().item() - exact) < 4 * se and abs(averaged.mean().item() - exact) < 4 * se
    assert averaged.std() < sampled.std()  # the query's share of the variance is gone


def test_undertrained_run_fails_its_claim_checks() -> None:
    checks = prompt_length.claim_checks(prompt_length.run(tiny(train_steps=3), progress=False))
    failed = [c.name for c in checks.checks if not c.passed]
    assert any(name.startswith("trained") for name in failed)
    with pytest.raises(AssertionError):
        checks.verify()


def test_family_z() -> None:
    assert round(family_z(1, 0.001), 2) == 3.29
    assert round(family_z(28), 2) == 3.57


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"spectrum": (1.0, -0.5)}, "spectrum"),
        ({"train_contexts": (0,)}, "train_contexts"),
        ({"test_contexts": (5, 5)}, "test_contexts"),
        ({"init_scale": -1.0}, "init_scale"),
        ({"n_test": 1}, "n_test"),
    ],
)
def test_bad_input_names_the_parameter(overrides: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        tiny(**overrides)
