"""The chapter experiments at tiny sizes: reproducible, cached, and their claim checks can fail."""

from __future__ import annotations

import pytest
import torch

from icl import evaluate, presets, tasks, train
from icl.checks import ClaimCheckFailed
from icl.experiments import one_step_pgd

TINY = dict(
    dim=3,
    n_context=6,
    n_context_sweep=(4, 6),
    n_seeds=2,
    train_steps=40,
    batch_size=64,
    n_test=2000,
    random_start_seeds=3,
    device="cpu",
)


def tiny_result(monkeypatch: pytest.MonkeyPatch, store: str, **changes) -> one_step_pgd.OneStepPGDResult:
    monkeypatch.setenv("ICL_STORE", store)
    config = presets.get("one_step_pgd", "quick", **{**TINY, **changes})
    return one_step_pgd.run(config, progress=False)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[one_step_pgd.OneStepPGDResult, str]:
    """One tiny run shared by the tests of this module, and the store that holds it."""
    store = str(tmp_path_factory.mktemp("store"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        return tiny_result(monkeypatch, store), store


def assert_same(a: one_step_pgd.OneStepPGDResult, b: one_step_pgd.OneStepPGDResult) -> None:
    for name, value in a._asdict().items():
        if name == "elapsed_seconds":
            continue
        assert torch.equal(value, getattr(b, name)), name


def test_same_seed_gives_identical_numbers(stored, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    second = tiny_result(monkeypatch, str(tmp_path))  # another store: recomputed, not loaded
    assert_same(stored[0], second)


def test_another_seed_gives_other_numbers(stored, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    other = tiny_result(monkeypatch, str(tmp_path), seed=1)
    assert not torch.equal(stored[0].learned, other.learned)
    assert not torch.equal(stored[0].covariance[1], other.covariance[1])


def test_second_run_comes_from_the_store(stored, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the store holds the result")

    monkeypatch.setattr(train, "train", no_training)
    assert_same(stored[0], tiny_result(monkeypatch, stored[1]))


def test_result_shapes(stored) -> None:
    r = stored[0]
    K, S, d, N = 2, TINY["n_seeds"], TINY["dim"], len(TINY["n_context_sweep"])
    assert r.learned.shape == r.optimal.shape == r.covariance.shape == (K, S, d, d)
    assert r.test_loss.shape == r.error_to_optimal.shape == (K, S)
    assert r.sweep_error_to_optimal.shape == (N, S)
    R = TINY["random_start_seeds"]
    assert r.random_start_covariance.shape == (K, R, d, d)
    assert r.random_start_loss_ratio.shape == r.random_start_error.shape == r.random_start_initial_ratio.shape == (K, R)
    assert r.random_start_curve.shape == (len(r.curve_steps), K, R)
    assert torch.equal(r.random_start_covariance[0], torch.eye(d, dtype=torch.float64).expand(R, d, d))
    assert one_step_pgd.random_start_kappa(r) == pytest.approx(16.0)  # the paper's κ, whatever the main run's
    assert not torch.equal(r.random_start_covariance[1, 0], r.covariance[1, 0])  # their own rotations
    assert torch.equal(r.covariance[0], torch.eye(d, dtype=torch.float64).expand(S, d, d))


def test_summary_quotes_the_result(stored) -> None:
    r = stored[0]
    summary = one_step_pgd.summary(r)
    assert summary["seeds"] == TINY["n_seeds"] and summary["sweep_n_small"] == 4 and summary["sweep_n_large"] == 6
    assert summary["err_max"] == r.error_to_optimal.max().item()
    assert summary["ill_optimal_loss"] == r.optimal_loss[1].item()
    assert summary["iso_test_se"] > 0 and summary["minutes"] == r.elapsed_seconds / 60
    assert all(isinstance(value, float | int) for value in summary.values())


def test_undertrained_run_fails_its_claim_checks(stored) -> None:
    checks = one_step_pgd.claim_checks(stored[0])
    assert not checks.passed
    with pytest.raises(ClaimCheckFailed):
        checks.verify()


def exact_result(r: one_step_pgd.OneStepPGDResult) -> one_step_pgd.OneStepPGDResult:
    """The tiny result with every measured quantity replaced by the theory's value, up to small noise."""
    inverse = torch.linalg.inv(r.covariance)
    return r._replace(
        learned=r.optimal,
        error_to_optimal=torch.full_like(r.error_to_optimal, 1e-3),
        error_to_inverse=evaluate.relative_error(r.optimal, inverse),
        test_loss=r.optimal_loss[:, None].expand_as(r.test_loss).clone(),
        optimal_test_loss=r.optimal_loss[:, None].expand_as(r.test_loss).clone(),
        sweep_error_to_optimal=torch.full_like(r.sweep_error_to_optimal, 1e-3),
        sweep_error_to_inverse=r.sweep_optimal_to_inverse,
        label_row_ratio=torch.full_like(r.label_row_ratio, 1e-3),
        key_column_ratio=torch.full_like(r.key_column_ratio, 1e-3),
        # from a random start: every model on Σ = I converged, one on the ill-conditioned Σ stalled
        random_start_error=torch.full_like(r.random_start_error, 1e-3),
        random_start_label_row_ratio=torch.full_like(r.random_start_label_row_ratio, 1e-3),
        random_start_key_column_ratio=torch.full_like(r.random_start_key_column_ratio, 1e-3),
        random_start_loss_ratio=torch.tensor([[1.0] * 3, [2.5, 1.0, 1.0]], dtype=torch.float64),
    )


def test_checks_pass_on_the_theory_and_fail_on_the_naive_answer(stored) -> None:
    exact = exact_result(stored[0])
    one_step_pgd.claim_checks(exact).verify()
    # A model that learned Σ⁻¹ instead of Γ*: its error to Γ* is the theory's gap, its error to Σ⁻¹ zero.
    inverse = torch.linalg.inv(exact.covariance)
    naive = exact._replace(
        error_to_optimal=evaluate.relative_error(inverse, exact.optimal),
        error_to_inverse=torch.full_like(exact.error_to_inverse, 1e-3),
    )
    with pytest.raises(ClaimCheckFailed) as failure:
        one_step_pgd.claim_checks(naive).verify()
    failed = {c.name for c in failure.value.checks if not c.passed}
    assert "ill-conditioned: error to Σ⁻¹ / error to Γ*" in failed
    # A loss 5 % above the optimum fails the loss checks.
    worse = exact._replace(test_loss=exact.test_loss * 1.05)
    assert not one_step_pgd.claim_checks(worse).passed
    # A label row that kept its start's 4 %: only the vanishing-blocks check fails.
    kept = exact._replace(label_row_ratio=torch.full_like(exact.label_row_ratio, 0.04))
    failed = [c.name for c in one_step_pgd.claim_checks(kept).checks if not c.passed]
    assert len(failed) == 1 and failed[0].startswith("blocks that vanish"), failed
    # The finding fails when no random-start model stalls, the convergence check when one on Σ = I does not converge.
    none_stalled = exact._replace(random_start_loss_ratio=torch.ones_like(exact.random_start_loss_ratio))
    failed = [c.name for c in one_step_pgd.claim_checks(none_stalled).checks if not c.passed]
    assert len(failed) == 1 and "stays ≥ 1.5 f*" in failed[0], failed
    error = exact.random_start_error.clone()
    error[0, 1] = 0.1
    unconverged = exact._replace(random_start_error=error)
    failed = [c.name for c in one_step_pgd.claim_checks(unconverged).checks if not c.passed]
    assert len(failed) == 1 and failed[0].startswith("random start, Σ = I: max relative error"), failed


def test_no_checkpoint_is_left_once_the_results_are_stored(stored) -> None:
    from pathlib import Path

    store = Path(stored[1])
    assert list((store / "results").glob("*.pt"))  # one stored state per training run
    assert not list((store / "checkpoints").glob("*"))  # their checkpoints are gone, temporaries too


def test_monte_carlo_predictions_fill_every_prompt_in_chunk_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunked evaluation returns, per predictor and for the targets, exactly the chunks' outputs side by side."""
    monkeypatch.setattr(evaluate, "EVAL_CONTEXT_EXAMPLES", 70)  # n = 10: chunks of 7 prompts, the last one of 4
    covariance = torch.eye(3).expand(2, 3, 3)

    def sample(size: int, generator: torch.Generator):
        return tasks.sample_regression(size, 10, covariance, generator=generator)

    first = torch.Generator().manual_seed(5)
    out = evaluate.monte_carlo_predictions(25, 10, lambda size: sample(size, first), {"mean": lambda b: b.y.mean(-1)})
    second = torch.Generator().manual_seed(5)
    chunks = [sample(size, second) for size in (7, 7, 7, 4)]
    assert set(out) == {"target", "mean"} and out["mean"].shape == (2, 25)
    torch.testing.assert_close(out["target"], torch.cat([c.y_query for c in chunks], -1), rtol=0, atol=0)
    torch.testing.assert_close(out["mean"], torch.cat([c.y.mean(-1) for c in chunks], -1), rtol=0, atol=0)
