"""The (11)-form experiment at tiny sizes: reproducible, cached, baselines consistent, checks can fail."""

from __future__ import annotations

import pytest
import torch

from icl import presets
from icl.experiments import common, full_form_gdpp

TINY = dict(
    spectrum=(1.0, 0.5),
    n_context=6,
    n_layers=2,
    depths=(1, 2),
    n_seeds=2,
    train_steps=20,
    batch_size=64,
    n_validation=500,
    n_test=1000,
)


def tiny_result(monkeypatch: pytest.MonkeyPatch, store: str, **changes) -> full_form_gdpp.FullFormResult:
    monkeypatch.setenv("ICL_STORE", store)
    config = presets.get("full_form_gdpp", "quick", device="cpu", **{**TINY, **changes})
    return full_form_gdpp.run(config, progress=False)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[full_form_gdpp.FullFormResult, str]:
    store = str(tmp_path_factory.mktemp("store"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        return tiny_result(monkeypatch, store), store


def test_reproducible_and_cached(stored, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    again = tiny_result(monkeypatch, str(tmp_path))
    for name, value in stored[0]._asdict().items():
        if name != "elapsed_seconds":
            assert torch.equal(value, getattr(again, name)), name

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the store holds the result")

    monkeypatch.setattr(common, "train", no_training)
    assert torch.equal(tiny_result(monkeypatch, stored[1]).loss, stored[0].loss)


def test_shapes_and_baselines(stored) -> None:
    r = stored[0]
    S, L, d, D = TINY["n_seeds"], TINY["n_layers"], len(TINY["spectrum"]), len(TINY["depths"])
    assert r.whitened.shape == r.B.shape == (S, L, d, d)
    assert r.a.shape == r.b.shape == r.B_distance.shape == (S, L)
    assert r.loss.shape == r.gd_loss.shape == r.pgd_loss.shape == r.median_loss.shape == (D, S)
    assert r.whitened_distance_history.shape == (r.snapshot_steps.shape[0], S, L)
    # At one step, the sparse optimum and the shared-step PGD are the same thing.
    assert abs(r.sparse_loss[0].item() - r.pgd_exact_loss[0].item()) < 1e-12
    # More freedom, lower loss: a step per layer ≤ one shared step (exact).
    assert (r.sparse_loss <= r.pgd_exact_loss + 1e-12).all()


def test_undertrained_run_fails(stored) -> None:
    assert not full_form_gdpp.claim_checks(stored[0]).passed


def test_checks_pass_on_ideal_numbers_and_fail_without_the_covariate_update(stored) -> None:
    r = stored[0]
    S, L = r.a.shape
    small = torch.exp(torch.tensor(-7.0, dtype=torch.float64))
    loss = r.sparse_loss[:, None].expand(-1, S).clone()
    loss[1:] = small
    ideal = r._replace(
        whitened_distance=torch.zeros(S, L, dtype=torch.float64),
        B_distance=torch.zeros(S, L, dtype=torch.float64),
        loss=loss,
        projected_loss=torch.full((S,), small.item(), dtype=torch.float64),
        condition_number=torch.tensor([[5.0] * S] + [[1.5] * S] * (L - 1), dtype=torch.float64),
    )
    full_form_gdpp.claim_checks(ideal).verify()
    # A model that learned only preconditioned GD (B = 0) has the sparse loss and leaves the data's
    # conditioning alone: four checks fail.
    sparse = ideal._replace(
        condition_number=torch.full((L, S), 5.0, dtype=torch.float64),
        loss=r.sparse_loss[:, None].expand(-1, S).clone(),
        projected_loss=r.sparse_loss[-1].expand(S).clone(),
        B_distance=torch.ones(S, L, dtype=torch.float64),
    )
    failed = [c.name for c in full_form_gdpp.claim_checks(sparse).checks if not c.passed]
    assert len(failed) == 4, failed


@pytest.mark.parametrize(
    ("change", "name"),
    [
        (dict(depths=(1, 2), n_layers=3), "depths"),
        (dict(clip_norm=0.0), "clip_norm"),
        (dict(spectrum=(1, 0)), "spectrum"),
    ],
)
def test_bad_input_names_the_parameter(change: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        presets.get("full_form_gdpp", "quick", device="cpu", **change)
