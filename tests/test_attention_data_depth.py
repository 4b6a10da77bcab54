"""Chapter 14's checks on synthetic results: an ideal result passes each, and breaking one claim fails its check."""

from __future__ import annotations

import pytest
import torch

from icl import presets
from icl.experiments import attention_data_depth

S, R, D, T, H, K = 2, 3, 2, 41, 6, 500


def ideal() -> attention_data_depth.AttentionDataDepthResult:
    """Linear 100× below softmax; Adam 10× below SGD on both laws and 2× (L = 2) to 20× (L = 4) with depth; the
    Gamma law's noise with a long tail."""
    softmax = torch.full((T, R, S), 4.0)
    softmax[-5:, 1] = 1.0  # the best rate, over the last 10 % of the steps
    data = torch.ones(2, T, 2 * S)
    data[:, -5:, S:] = 0.1
    depth = torch.ones(D, T, 2 * S)
    depth[0, -5:, S:], depth[1, -5:, S:] = 0.5, 0.05
    noise = torch.rand(2, K, S, generator=torch.Generator().manual_seed(0)) + 1.0
    noise[0, :20] *= 10  # the Gamma law's tail
    condition = torch.ones(2, H, 2 * S)
    return attention_data_depth.AttentionDataDepthResult(
        test_steps=torch.arange(0, 2001, 50),
        linear_loss=torch.full((T, S), 0.01),
        softmax_learning_rates=torch.tensor([0.005, 0.01, 0.05], dtype=torch.float64),
        softmax_loss=softmax,
        data_loss=data,
        data_noise=noise,
        hessian_steps=torch.arange(0, 1251, 250),
        data_condition_eigen=condition,
        data_condition_diagonal=condition.clone(),
        sphere_divergence_step=23,
        depths=torch.tensor([2, 4]),
        depth_loss=depth,
        depth_noise=noise.clone(),
        depth_condition_eigen=condition.clone(),
        depth_condition_diagonal=condition.clone(),
        scale_learning_rates=torch.empty(0, dtype=torch.float64),
        scale_loss=torch.empty(T, 0, S),
        scale_noise=torch.empty(0, S),
        elapsed_seconds=1.0,
    )


def at_scale(adam: float) -> attention_data_depth.AttentionDataDepthResult:
    """The ideal result with Fig. 5's larger model run at two rates: SGD's best final loss 1, Adam's ``adam``."""
    loss = torch.full((T, 4, S), 2.0)
    loss[-5:, 1], loss[-5:, 2] = 1.0, adam  # SGD at its second rate, Adam at its first
    return ideal()._replace(
        scale_learning_rates=torch.tensor([0.001, 0.01], dtype=torch.float64),
        scale_loss=loss,
        scale_noise=torch.ones(K, S),
    )


def test_the_larger_model_is_checked_only_when_it_ran() -> None:
    assert len(attention_data_depth.claim_checks(at_scale(0.1)).checks) == 5
    assert attention_data_depth.claim_checks(at_scale(0.1)).passed
    assert attention_data_depth.scale_ratio(at_scale(0.1)) == pytest.approx(0.1)
    failed = [c.name for c in attention_data_depth.claim_checks(at_scale(1.5)).checks if not c.passed]
    assert len(failed) == 1 and "larger model" in failed[0]
    summary = attention_data_depth.summary(at_scale(0.1))
    assert (summary["scale_sgd_rate"], summary["scale_adam_rate"]) == (0.01, 0.001)


def test_an_ideal_result_passes_every_check() -> None:
    checks = attention_data_depth.claim_checks(ideal())
    assert checks.passed and len(checks.checks) == 4, checks
    summary = attention_data_depth.summary(ideal())
    assert summary["softmax_best_rate"] == 0.01 and summary["linear_over_softmax"] == pytest.approx(0.01)
    assert summary["depth_gain"] == pytest.approx(0.1) and summary["depth_table"] == "2 at L = 2 and 20 at L = 4"


@pytest.mark.parametrize(
    ("breaks", "check"),
    [
        (lambda r: r.softmax_loss[-5:, 2].fill_(0.015), "linear attention / softmax attention"),
        (lambda r: r.data_loss[1, -5:, S:].fill_(2.0), "Gamma radius and sphere"),
        (lambda r: r.data_noise[1, :20].mul_(100), "gradient noise at the start"),
        (lambda r: r.depth_loss[1, -5:, S:].fill_(0.9), "ratio at L = 4 over the ratio at L = 2"),
    ],
)
def test_breaking_a_claim_fails_its_check(breaks, check: str) -> None:
    result = ideal()
    breaks(result)
    failed = [c.name for c in attention_data_depth.claim_checks(result).checks if not c.passed]
    assert len(failed) == 1 and check in failed[0], failed


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        (dict(depths=(4, 2)), "depths"),
        (dict(depths=(3,)), "depths"),
        (dict(depths=(0, 2)), r"depths\[0\]"),
        (dict(softmax_learning_rates=()), "softmax_learning_rates"),
        (dict(softmax_learning_rates=(0.01, -1.0)), r"softmax_learning_rates\[1\]"),
        (dict(sphere_clip_norm=0.0), "sphere_clip_norm"),
        (dict(n_layers=0), "n_layers"),
        (dict(at_scale="yes"), "at_scale"),
        (dict(scale_learning_rates=()), "scale_learning_rates"),
        (dict(scale_dim=0), "scale_dim"),
    ],
)
def test_bad_parameters_are_named(changes: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        presets.get("attention_data_depth", "quick", device="cpu", **changes)


def test_the_quick_preset_shares_chapter_13s_runs_and_measurements() -> None:
    """The Setting 1 and Setting 3 runs at L = 3 are chapter 13's (the same configuration, so the same store key), and
    so are the test loss, Hessian and noise measurements taken on them."""
    mine = presets.get("attention_data_depth", "quick", device="cpu")
    theirs = presets.get("adam_beats_sgd", "quick", device="cpu")
    for setting in ("gaussian", "gamma"):
        assert mine.run(setting) == theirs.run(setting)
    a, b = mine.measures(), theirs.measures()
    for field in ("test_every", "n_test", "hessian_steps", "hessian_prompts", "noise_samples", "noise_full_batch"):
        assert getattr(a, field) == getattr(b, field), field


def test_a_tiny_run_with_the_larger_model_has_its_shapes(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ICL_STORE", str(tmp_path))
    config = attention_data_depth.CONFIG(
        device="cpu", n_seeds=1, train_steps=3, batch_size=8, n_test=16, test_every=1, hessian_until=0,
        hessian_prompts=4, noise_samples=2, noise_full_batch=16, depths=(1, 2), n_layers=1, scale_layers=2,
        scale_dim=3, scale_learning_rates=(0.01, 0.1), softmax_learning_rates=(0.01,),
    )  # fmt: skip
    result = attention_data_depth.run(config, progress=False)
    assert result.scale_loss.shape == (4, 4, 1) and result.scale_noise.shape == (2, 1)
    assert result.softmax_loss.shape == (4, 1, 1) and result.depth_loss.shape == (2, 4, 2)
    assert result.data_condition_eigen.shape == (2, 1, 2) and result.sphere_divergence_step >= 0
    assert len(attention_data_depth.claim_checks(result).checks) == 5


def test_a_late_spike_is_reported() -> None:
    assert attention_data_depth.depth_spikes(ideal()).startswith("No run's")
    result = ideal()
    result.depth_loss[0, :] = 5.0  # the start's loss, where nothing spikes ...
    result.depth_loss[1, 20, 1] = 80.0  # ... but SGD's second seed at L = 4, mid-run
    assert "at L = 4, 1 of the 2 runs of SGD with momentum (to 80 times" in attention_data_depth.depth_spikes(result)
