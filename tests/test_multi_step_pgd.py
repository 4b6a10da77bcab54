"""The many-layer experiment at tiny sizes: reproducible, cached, snapshots consistent, checks can fail."""

from __future__ import annotations

import pytest
import torch

from icl import evaluate, presets, tasks, train
from icl.experiments import multi_step_pgd

TINY = dict(spectrum=(1.0, 0.5, 0.25), n_context=6, n_layers=2, n_seeds=2, train_steps=30, batch_size=64, n_test=2000)


def tiny_result(monkeypatch: pytest.MonkeyPatch, store: str, **changes) -> multi_step_pgd.MultiStepPGDResult:
    monkeypatch.setenv("ICL_STORE", store)
    config = presets.get("multi_step_pgd", "quick", device="cpu", **{**TINY, **changes})
    return multi_step_pgd.run(config, progress=False)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[multi_step_pgd.MultiStepPGDResult, str]:
    store = str(tmp_path_factory.mktemp("store"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        return tiny_result(monkeypatch, store), store


def assert_same(a: multi_step_pgd.MultiStepPGDResult, b: multi_step_pgd.MultiStepPGDResult) -> None:
    for name, value in a._asdict().items():
        if name != "elapsed_seconds":
            assert torch.equal(value, getattr(b, name)), name


def test_same_seed_gives_identical_numbers_and_another_seed_does_not(stored, monkeypatch, tmp_path) -> None:
    assert_same(stored[0], tiny_result(monkeypatch, str(tmp_path / "a")))
    other = tiny_result(monkeypatch, str(tmp_path / "b"), seed=1)
    assert not torch.equal(other.learned, stored[0].learned)


def test_second_run_comes_from_the_store(stored, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the store holds the result")

    monkeypatch.setattr(train, "train", no_training)
    assert_same(stored[0], tiny_result(monkeypatch, stored[1]))


def test_shapes_and_the_last_snapshot_is_the_final_model(stored) -> None:
    r = stored[0]
    S, L, d = TINY["n_seeds"], TINY["n_layers"], len(TINY["spectrum"])
    assert r.covariance.shape == (S, d, d)
    assert r.learned.shape == r.whitened.shape == (S, L, d, d)
    assert r.whitened_distance.shape == r.scale.shape == r.raw_distance.shape == (S, L)
    assert r.optimal_step_sizes.shape == (L,)
    assert r.snapshot_steps[0] == 0 and r.snapshot_steps[-1] == TINY["train_steps"]
    T = r.snapshot_steps.shape[0]
    assert r.whitened_distance_history.shape == r.scale_history.shape == (T, S, L)
    torch.testing.assert_close(r.whitened_distance_history[-1], r.whitened_distance, rtol=1e-12, atol=0)
    for s in range(S):  # each seed has its own rotation of the same spectrum
        torch.testing.assert_close(
            torch.linalg.eigvalsh(r.covariance[s]), torch.tensor(sorted(TINY["spectrum"]), dtype=torch.float64)
        )
    assert not torch.allclose(r.covariance[0], r.covariance[1])


def test_whitening() -> None:
    """Σ^½ (a Σ⁻¹) Σ^½ = a I: the whitened distance of a multiple of Σ⁻¹ is 0, of I it is Dist(Σ, I)."""
    covariance = tasks.covariance_from_spectrum(torch.tensor([1.0, 0.25, 0.0625]), generator=torch.Generator())
    S = covariance[None]
    A = torch.stack([0.7 * torch.linalg.inv(covariance), torch.eye(3, dtype=torch.float64)])[None]  # (1, 2, d, d)
    whitened = evaluate.whiten(A, S)
    torch.testing.assert_close(whitened[0, 0], 0.7 * torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(whitened[0, 1], covariance)
    distances = evaluate.distance_to_identity(whitened)
    assert distances[0, 0] < 1e-12 and abs(distances[0, 1] - evaluate.distance_to_identity(covariance)) < 1e-12


def test_summary_quotes_the_result(stored) -> None:
    r = stored[0]
    summary = multi_step_pgd.summary(r)
    assert summary["seeds"] == TINY["n_seeds"] and summary["dist_max"] == r.whitened_distance.max().item()
    assert summary["theory_steps"] == ", ".join(f"{a:.3f}" for a in r.optimal_step_sizes.tolist())
    assert len(summary["order"].split(", ")) == TINY["n_layers"]
    assert summary["step_error"] >= 0 and summary["test_se"] > 0


def test_undertrained_run_fails(stored) -> None:
    assert not multi_step_pgd.claim_checks(stored[0]).passed


def exact(r: multi_step_pgd.MultiStepPGDResult) -> multi_step_pgd.MultiStepPGDResult:
    """The tiny result with every measured quantity set to the theory's value."""
    S, L = r.scale.shape
    return r._replace(
        whitened_distance=torch.zeros(S, L, dtype=torch.float64),
        raw_distance=r.inverse_distance.expand(S, L).clone(),
        scale=r.optimal_step_sizes.flip(0).expand(S, L).clone(),  # any layer order
        test_loss=r.optimal_loss.expand(S).clone(),
    )


def test_checks_pass_on_the_theory_and_fail_on_wrong_answers(stored) -> None:
    r = exact(stored[0])
    multi_step_pgd.claim_checks(r).verify()
    covariance_distance = evaluate.distance_to_identity(r.covariance[0]).item()
    # Multiples of I instead of Σ⁻¹: whitened distance Dist(Σ, I), raw distance 0.
    identity = r._replace(
        whitened_distance=torch.full_like(r.whitened_distance, covariance_distance),
        raw_distance=torch.zeros_like(r.raw_distance),
    )
    failed = {c.name for c in multi_step_pgd.claim_checks(identity).checks if not c.passed}
    assert len(failed) == 2
    # One step size 0.1 off, or a loss 6 % above the optimum.
    off = r.scale.clone()
    off[0, 0] += 0.1
    assert not multi_step_pgd.claim_checks(r._replace(scale=off)).passed
    assert not multi_step_pgd.claim_checks(r._replace(test_loss=r.test_loss * 1.06)).passed


@pytest.mark.parametrize(
    ("change", "name"),
    [
        (dict(spectrum=(1.0, -1.0)), "spectrum"),
        (dict(spectrum=()), "spectrum"),
        (dict(spectrum="1, 2"), "spectrum"),
        (dict(n_layers=0), "n_layers"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_input_names_the_parameter(change: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        presets.get("multi_step_pgd", "quick", device="cpu", **change)
