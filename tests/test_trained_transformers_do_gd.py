"""The von Oswald experiment at tiny sizes, and its exact step-size fit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from icl import baselines, presets, tasks, train
from icl.experiments import trained_transformers_do_gd

TINY = dict(dim=3, n_context=6, n_seeds=2, train_steps=30, batch_size=64, n_validation=500, n_test=1000)


def tiny_result(monkeypatch: pytest.MonkeyPatch, store: str, **changes) -> trained_transformers_do_gd.VonOswaldGDResult:
    monkeypatch.setenv("ICL_STORE", store)
    config = presets.get("trained_transformers_do_gd", "quick", device="cpu", **{**TINY, **changes})
    return trained_transformers_do_gd.run(config, progress=False)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[trained_transformers_do_gd.VonOswaldGDResult, str]:
    store = str(tmp_path_factory.mktemp("store"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        return tiny_result(monkeypatch, store), store


def test_reproducible_and_cached(stored, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    again = tiny_result(monkeypatch, str(tmp_path))
    for name, value in stored[0]._asdict().items():
        if name != "elapsed_seconds":
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(getattr(again, name))), name

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the store holds the result")

    monkeypatch.setattr(train, "train", no_training)
    loaded = tiny_result(monkeypatch, stored[1])
    assert torch.equal(loaded.recurrent_loss, stored[0].recurrent_loss)


def test_shapes_constructions_and_baselines(stored) -> None:
    r = stored[0]
    S, d = TINY["n_seeds"], TINY["dim"]
    assert r.construction_error.shape == (3,) and r.construction_error.max() < 1e-10
    assert r.one_layer_loss.shape == r.recurrent_cosine_gdpp.shape == r.recurrent_gamma.shape == (S,)
    assert r.one_layer_preconditioner.shape == (S, d, d)
    assert r.one_layer_cosine_history.shape == (r.snapshot_steps.shape[0], S)
    # The fitted baselines are ordered as theory says: GD++ ≤ two GD steps ≤ one GD step < zero.
    assert r.gdpp_test_loss <= r.gd2_test_loss <= r.gd_test_loss < r.zero_loss


def test_undertrained_run_fails(stored) -> None:
    assert not trained_transformers_do_gd.claim_checks(stored[0]).passed


def test_checks_pass_on_ideal_numbers_and_fail_on_gd_for_the_recurrent_model(stored) -> None:
    r = stored[0]
    S = TINY["n_seeds"]
    ideal = r._replace(
        one_layer_loss=torch.full((S,), r.gd_loss, dtype=torch.float64),
        one_layer_cosine=torch.ones(S, dtype=torch.float64),
        one_layer_prediction_gap=torch.zeros(S, dtype=torch.float64),
        recurrent_loss=torch.full((S,), r.gdpp_test_loss, dtype=torch.float64),
        recurrent_cosine_gd=torch.full((S,), 0.95, dtype=torch.float64),
        recurrent_cosine_gdpp=torch.ones(S, dtype=torch.float64),
        recurrent_cosine_gd_history=torch.tensor([[0.9] * S, [0.95] * S, [0.95] * S], dtype=torch.float64),
        recurrent_cosine_gdpp_history=torch.tensor([[0.8] * S, [0.9] * S, [1.0] * S], dtype=torch.float64),
        snapshot_steps=torch.tensor([0, 10, 20]),
        recurrent_as_gdpp_loss=torch.full((S,), 1.01 * r.gdpp_validation_loss, dtype=torch.float64),
    )
    trained_transformers_do_gd.claim_checks(ideal).verify()
    # A recurrent model that learned two plain GD steps (γ = 0) fails four checks.
    as_gd = ideal._replace(
        recurrent_loss=torch.full((S,), r.gd2_test_loss, dtype=torch.float64),
        recurrent_cosine_gd=torch.ones(S, dtype=torch.float64),
        recurrent_cosine_gdpp=torch.full((S,), 0.95, dtype=torch.float64),
        recurrent_as_gdpp_loss=torch.full((S,), r.gd2_test_loss / r.gdpp_test_loss * r.gdpp_validation_loss),
    )
    assert sum(not c.passed for c in trained_transformers_do_gd.claim_checks(as_gd).checks) == 4
    # One closer to GD++ all along fails only the check of the turn.
    never_gd = ideal._replace(recurrent_cosine_gdpp_history=torch.ones(3, S, dtype=torch.float64))
    failed = [c.name for c in trained_transformers_do_gd.claim_checks(never_gd).checks if not c.passed]
    assert len(failed) == 1 and "first half" in failed[0], failed


@pytest.mark.parametrize("n_steps", [2, 3])
def test_best_shared_step_size_is_exact(n_steps: int) -> None:
    """The polynomial's minimiser matches a fine scan of the validation MSE."""
    g = torch.Generator().manual_seed(0)
    b = tasks.sample_regression(4000, 10, torch.eye(10) / 12, generator=g, covariate_law="uniform", dtype=torch.float64)
    gd = lambda e, k=n_steps: baselines.gd(b.X, b.y, b.x_query, e, n_steps=k)  # noqa: E731
    eta, loss = baselines.best_shared_step_size(gd, b.y_query, n_steps, scale=5.0)
    grid = torch.linspace(eta - 0.5, eta + 0.5, 1001, dtype=torch.float64)
    scan = torch.stack([((gd(e.item()) - b.y_query) ** 2).mean() for e in grid])
    assert abs(grid[scan.argmin()].item() - eta) <= 1e-3 and loss <= scan.min().item() + 1e-12
    with pytest.raises(ValueError, match="polynomial"):
        baselines.best_shared_step_size(lambda e: gd(e, n_steps + 1), b.y_query, n_steps, scale=5.0)


def test_minimise_scalar() -> None:
    assert abs(baselines.minimise_scalar(lambda x: (x - 0.3) ** 2 + 0.1 * (x > 0.9), 0.0, 1.0) - 0.3) < 1e-6
    # Two local minima, at 0.8 and at 0.1 (the lower): the grid picks the global one.
    bumpy = lambda x: min((x - 0.8) ** 2 + 0.01, (x - 0.1) ** 2)  # noqa: E731
    assert abs(baselines.minimise_scalar(bumpy, 0.0, 1.0) - 0.1) < 1e-6


def test_summary_quotes_the_result(stored) -> None:
    r = stored[0]
    summary = trained_transformers_do_gd.summary(r)
    assert summary["seeds"] == TINY["n_seeds"] and summary["gdpp_gamma"] == r.gdpp_gamma
    assert summary["one_gap"] == (r.one_layer_prediction_gap / r.gd_test_loss).max().item()
    assert summary["construction"] < 1e-10 and summary["minutes"] == r.elapsed_seconds / 60
    assert summary["rec_gamma_low"] == (r.recurrent_gamma / r.gdpp_gamma).min().item()
    assert summary["rec_early_lead"] == trained_transformers_do_gd.early_lead(r).min().item()
    chapter = (Path(__file__).resolve().parents[1] / "book" / "04_trained_transformers_do_gd.md").read_text()
    glued = set(re.findall(r"\{glue:text\}`trained_transformers_do_gd_(\w+)", chapter))
    glued -= {"eta_star", "gd_loss", "n_test"}  # glued by the chapter from the theory and the config
    assert glued and glued <= set(summary), sorted(glued - set(summary))


@pytest.mark.parametrize(
    ("change", "name"), [(dict(input_range=0.0), "input_range"), (dict(n_validation=1), "n_validation")]
)
def test_bad_input_names_the_parameter(change: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        presets.get("trained_transformers_do_gd", "quick", device="cpu", **change)
