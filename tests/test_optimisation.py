"""One setting's ensemble of SGD-with-momentum and Adam members, and the landscape measured on it (icl.optimisation)."""

from __future__ import annotations

import pytest
import torch

from icl import optimisation

TINY = dict(dim=2, n_layers=2, n_seeds=2, train_steps=6, batch_size=32)
STORE: list = []
MEASURES = optimisation.Measures(
    test_every=2,
    n_test=40,
    smoothness_until=4,
    hessian_steps=(0, 4),
    hessian_prompts=10,
    noise_samples=3,
    noise_full_batch=64,
)


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory):
    store = tmp_path_factory.mktemp("store")
    STORE[:] = [store]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ICL_STORE", str(store))
        config = optimisation.RunConfig(setting="gamma", **TINY)
        yield (
            config,
            optimisation.measure(config, MEASURES, progress=False),
            optimisation.trained(config, progress=False),
        )


def test_each_seed_starts_its_two_members_alike_and_they_part(measured) -> None:
    config, result, (model, training) = measured
    S = config.n_seeds
    for name, history in training.snapshots.items():
        assert torch.equal(history[0, :S], history[0, S:]), name  # same start
        assert not torch.equal(history[-1, :S], history[-1, S:]), name  # SGD and Adam went different ways
    torch.testing.assert_close(result["test_loss"][0, :S], result["test_loss"][0, S:])
    assert training.losses.shape == (6, 2 * S)
    torch.testing.assert_close(training.losses[0, :S], training.losses[0, S:])  # same prompts at every step


def test_measures_have_their_shapes(measured) -> None:
    config, result, _ = measured
    E = 2 * config.n_seeds
    assert result["test_steps"].tolist() == [0, 2, 4, 6] and result["test_loss"].shape == (4, E)
    assert result["smoothness_steps"].tolist() == [0, 1, 2, 3] and result["smoothness"].shape == (4, E)
    assert result["gradient_norm"].shape == (4, E) and bool((result["gradient_norm"] > 0).all())
    assert result["hessian_steps"].tolist() == [0, 4]
    assert result["condition_eigen"].shape == result["condition_diagonal"].shape == (2, E)
    assert bool((result["condition_eigen"] >= 1).all()) and bool((result["condition_diagonal"] >= 1).all())
    assert result["noise"].shape == (3, config.n_seeds) and bool((result["noise"] > 0).all())


def test_a_second_measure_comes_from_the_store(measured, monkeypatch: pytest.MonkeyPatch) -> None:
    config, result, _ = measured
    monkeypatch.setenv("ICL_STORE", str(STORE[0]))  # the fixture's store (conftest gives each test its own)
    monkeypatch.setattr(optimisation, "_measure", lambda *args: pytest.fail("measured again"))
    again = optimisation.measure(config, MEASURES, progress=False)
    assert torch.equal(again["smoothness"], result["smoothness"])


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        (dict(setting="cauchy"), "setting"),
        (dict(attention="relu"), "attention"),
        (dict(n_layers=0), "n_layers"),
        (dict(clip_norm=-1.0), "clip_norm"),
        (dict(learning_rates=(0.1,)), "learning_rates"),
    ],
)
def test_bad_run_settings_are_named(changes: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        optimisation.RunConfig(**changes)


def test_the_zero_predictors_loss_is_e_y_squared() -> None:
    """E y² = E‖x‖² for w ~ N(0, I): compared with a large sample of each setting's prompts."""
    from icl import tasks

    for name, setting in optimisation.SETTINGS.items():
        batch = tasks.sample_regression(
            50_000, 1, torch.eye(5), generator=torch.Generator().manual_seed(0), covariate_law=setting.covariate_law
        )
        sample = batch.y_query.double().pow(2)
        assert abs(sample.mean().item() - setting.zero_loss(5)) < 5 * sample.std().item() / 50_000**0.5, name


def test_the_unpaired_starts_are_the_paired_ensembles_first_half() -> None:
    config = optimisation.RunConfig(**TINY)
    paired, starts = optimisation.model(config), optimisation.model(config, paired=False)
    assert starts.n_models == config.n_seeds
    for name, value in starts.state_dict().items():
        assert torch.equal(value, paired.state_dict()[name][: config.n_seeds]), name
