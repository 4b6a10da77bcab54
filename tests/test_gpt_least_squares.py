"""Garg et al.'s Fig. 2 experiment: tiny runs (shapes, reproducible, cached), the baselines against hand-computed
values and closed forms, the shifted prompts, claim checks that can fail, and bad input named before any work."""

from __future__ import annotations

import pytest
import torch

from icl import baselines, presets
from icl.experiments import gpt_least_squares as experiment

TINY = dict(dim=3, max_context=6, width=16, n_layers=1, n_heads=2, n_seeds=2, train_steps=20, batch_size=16, n_test=64)


def tiny(**overrides: object) -> experiment.GPTLeastSquaresConfig:
    return presets.get("gpt_least_squares", "quick", device="cpu", **(TINY | overrides))


def test_tiny_run_shapes_reproducibility_cache_and_summary() -> None:
    config = tiny()
    first = experiment.run(config, progress=False)
    S, K, C = 2, 7, 8
    assert first.gpt.shape == first.gpt_se.shape == (S, K)
    assert first.least_squares.shape == first.nearest_neighbours.shape == first.averaging.shape == (K,)
    assert first.shifted_gpt.shape == first.shifted_gpt_se.shape == (C, S, K)
    assert first.shifted_least_squares.shape == (C, K)
    assert first.shifts[0] == "skewed covariance" and first.shifts[-1] == "query = a context input"
    orthogonal = first.shifted_gpt[first.shifts.index("query ⊥ context")]
    assert orthogonal[:, 1:3].isfinite().all() and orthogonal[:, 3:].isnan().all() and orthogonal[:, 0].isnan().all()
    torch.testing.assert_close(first.linear[1:], 4 / (torch.arange(1, K) + 4.0).double())  # (d + 1)/(k + d + 1)
    second = experiment.run(config, progress=False)  # the trained GPT from the store
    for a, b in zip(first[:-1], second[:-1], strict=True):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
        else:
            assert a == b
    summary = experiment.summary(first, config)
    assert (summary["d"], summary["two_d"], summary["seeds"]) == (3, 6, 2)
    assert summary["at_2d"] == first.gpt.mean(0)[6].item()
    assert summary["scaled_triple"] == first.shifted_gpt[first.shifts.index("x × 3")].mean(0)[6].item()


def test_baselines_on_hand_made_prompts() -> None:
    X = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [0.0, 1.0]]], dtype=torch.float64)
    y = torch.tensor([[1.0, 2.0, 30.0, 4.0]], dtype=torch.float64)
    query = torch.tensor([[0.1, 0.1]], dtype=torch.float64)
    assert baselines.nearest_neighbours(X, y, query).item() == pytest.approx((1 + 2 + 4) / 3)  # not (5, 5)
    assert baselines.nearest_neighbours(X[:, :2], y[:, :2], query).item() == pytest.approx(1.5)  # all of 2
    w = (X * y.unsqueeze(-1)).mean(-2)
    assert experiment.averaging(X, y, query).item() == pytest.approx((w * query).sum().item())
    xs, ys = torch.cat([X, query.unsqueeze(1)], 1), torch.cat([y, torch.tensor([[7.0]], dtype=torch.float64)], 1)
    errors = baselines.prefix_errors(baselines.nearest_neighbours, xs, ys)  # position 0: the zero estimator
    torch.testing.assert_close(errors[0, [0, 4]], torch.tensor([1.0, (7 - 7 / 3) ** 2], dtype=torch.float64))


def test_orthogonal_query_is_orthogonal_to_the_context_and_keeps_its_norm() -> None:
    xs = torch.randn(50, 7, 5, generator=torch.Generator().manual_seed(0))
    out = experiment.orthogonal_query(xs, 3)
    assert (out[:, :3] @ out[:, 3].unsqueeze(-1)).abs().max() < 1e-5
    torch.testing.assert_close(out[:, 3].norm(dim=-1), xs[:, 3].norm(dim=-1))
    torch.testing.assert_close(torch.cat([out[:, :3], out[:, 4:]], 1), torch.cat([xs[:, :3], xs[:, 4:]], 1))


def test_harness_checks_hold_and_an_undertrained_run_fails() -> None:
    config = tiny(train_steps=3, n_test=4000)
    checks = experiment.claim_checks(experiment.run(config, progress=False), config)
    by_name = {c.name.split(",")[0]: c for c in checks.checks}
    assert by_name["harness: least squares against (d − k)/d at k < d = 3"].passed
    assert by_name["harness: averaging against (d + 1)/k at every k ≥ 1"].passed
    assert not checks.passed
    with pytest.raises(AssertionError):
        checks.verify()


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        (dict(width=30, n_heads=4), "width"),
        (dict(max_context=5), "max_context"),  # the positions must cover 2d + 1 = 7 examples
        (dict(x_scales=(2.0, -1.0)), "x_scales"),
        (dict(noise_std=-1.0), "noise_std"),
        (dict(dim=0), "dim"),
    ],
)
def test_bad_parameters_name_themselves(overrides: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        tiny(**overrides)


@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_chapter_11_loads_this_chapters_gpt(preset: str) -> None:
    """At both presets the model chapter 11 trains on covariance I is this chapter's: one store key, one training."""
    from icl import store
    from icl.experiments import softmax_covariate_shift

    ours = presets.get("gpt_least_squares", preset, device="cpu").gpt()
    theirs = presets.get("softmax_covariate_shift", preset, device="cpu").gpt("fixed")
    assert ours == theirs
    assert store.config_key("gpt-identity", ours) == store.config_key("gpt-identity", theirs)
    assert presets.get("softmax_covariate_shift", preset, device="cpu").gpt("random") != ours
    assert softmax_covariate_shift.REGIMES["fixed"] == ours.covariance
