"""One setting's ensemble of SGD-with-momentum and Adam members, and the landscape measured on it (icl.optimisation)."""

from __future__ import annotations

import dataclasses

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
    monkeypatch.setattr(optimisation, "_Landscape", lambda *args: pytest.fail("measured again"))
    monkeypatch.setattr(optimisation, "gradient_noise", lambda *args, **kwargs: pytest.fail("measured again"))
    again = optimisation.measure(config, MEASURES, progress=False)
    assert all(torch.equal(again[key], value) for key, value in result.items())


def test_each_measurement_is_stored_on_its_own(measured, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another test batch size re-measures the test loss, smoothness and Hessians (they are taken on that batch) but
    not the gradient noise, which does not read it."""
    config, result, _ = measured
    monkeypatch.setenv("ICL_STORE", str(STORE[0]))
    monkeypatch.setattr(optimisation, "gradient_noise", lambda *args, **kwargs: pytest.fail("noise measured again"))
    again = optimisation.measure(config, dataclasses.replace(MEASURES, n_test=30), progress=False)
    assert torch.equal(again["noise"], result["noise"]) and again["test_loss"].shape == result["test_loss"].shape


def test_measurements_can_be_left_out(measured, monkeypatch: pytest.MonkeyPatch) -> None:
    config, _, _ = measured
    monkeypatch.setenv("ICL_STORE", str(STORE[0]))
    none = dataclasses.replace(MEASURES, smoothness_until=0, hessian_steps=(), noise_samples=0)
    result = optimisation.measure(config, none, progress=False)
    E = 2 * config.n_seeds
    assert result["smoothness"].shape == result["gradient_norm"].shape == (0, E)
    assert result["condition_eigen"].shape == (0, E) and result["noise"].shape == (0, config.n_seeds)
    assert result["test_loss"].shape == (4, E)


def test_arms_share_their_starts_and_prompts_and_train_at_their_rates(tmp_path, monkeypatch) -> None:
    """An Adam-only sweep of three learning rates: every arm's seed s starts where the default run's seed s starts and
    sees the same prompts; a larger rate moves the weights further on the first step (Adam's first step is the rate
    times the gradient's sign, elementwise, before clipping bites)."""
    monkeypatch.setenv("ICL_STORE", str(tmp_path))
    sweep = optimisation.RunConfig(setting="gamma", optimisers=("adam",) * 3, learning_rates=(0.001, 0.01, 0.1), **TINY)
    assert sweep.part == "gamma-L2-linear-adam-adam-adam" and sweep.rates == (0.001, 0.01, 0.1)
    S = sweep.n_seeds
    default = optimisation.model(dataclasses.replace(sweep, optimisers=("sgd", "adam"), learning_rates=None))
    ensemble = optimisation.model(sweep)
    assert ensemble.n_models == 3 * S
    for name, value in ensemble.state_dict().items():
        assert torch.equal(value, default.state_dict()[name][:S].repeat(3, *([1] * (value.dim() - 1)))), name
    _, training = optimisation.trained(dataclasses.replace(sweep, train_steps=1), progress=False)
    torch.testing.assert_close(training.losses[0, :S], training.losses[0, 2 * S :])  # same prompts
    moved = [
        sum(
            (h[1, a * S : (a + 1) * S] - h[0, a * S : (a + 1) * S]).abs().max().item()
            for h in training.snapshots.values()
        )
        for a in range(3)
    ]
    assert moved[0] < moved[1] < moved[2]


def test_the_default_rates_follow_the_arms_optimisers() -> None:
    config = optimisation.RunConfig(setting="short", optimisers=("adam", "sgd", "adam"))
    assert config.rates == (0.005, 0.01, 0.005) and config.n_arms == 3
    assert optimisation.train_config(config).member_optimisers == ("adam",) * 6 + ("sgd",) * 6 + ("adam",) * 6


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        (dict(setting="cauchy"), "setting"),
        (dict(attention="relu"), "attention"),
        (dict(n_layers=0), "n_layers"),
        (dict(clip_norm=-1.0), "clip_norm"),
        (dict(learning_rates=(0.1,)), "learning_rates"),
        (dict(learning_rates=(0.1, -0.1)), r"learning_rates\[1\]"),
        (dict(optimisers=("adam", "lion")), r"optimisers\[1\]"),
        (dict(optimisers=()), "optimisers"),
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
