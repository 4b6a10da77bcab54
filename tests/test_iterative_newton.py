"""Fu et al.'s experiment: layer probes (closed form, chunked), the ill-conditioned prompts, tiny runs (shapes,
reproducible, the shared GPT), claim checks that pass on the algorithms and fail on an untrained model, bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from icl import presets, probes, tasks
from icl.experiments import iterative_newton as experiment
from icl.models import SoftmaxTransformer

TINY = dict(
    dim=3,
    max_context=6,
    width=16,
    n_layers=2,
    n_heads=2,
    n_seeds=2,
    train_steps=20,
    batch_size=16,
    n_test=64,
    n_probe=300,
    newton_steps=8,
    gd_log2_steps=8,
    n_algorithm_test=50,
)


def tiny(**overrides: object) -> experiment.IterativeNewtonConfig:
    return presets.get("iterative_newton", "quick", device="cpu", **(TINY | overrides))


def sequences(size: int, seed: int, k: int = 5, d: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size, k, d, generator=g), torch.randn(size, k, generator=g)


def test_probes_are_least_squares_on_the_pooled_hidden_states_whatever_the_chunking(monkeypatch) -> None:
    model = SoftmaxTransformer(
        3, width=8, n_layers=2, n_heads=2, max_examples=5, n_models=2, generator=torch.Generator().manual_seed(0)
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # at its start the residual stream is nearly affine in x: move every weight off it
        for parameter in model.parameters():
            parameter.add_(0.5 * torch.randn(parameter.shape, generator=g))
    xs, ys = sequences(70, 1)
    served = iter([(xs[:40], ys[:40]), (xs[40:], ys[40:])])
    monkeypatch.setattr(probes, "CHUNK", 40)  # two chunks: 40 and 30 prompts
    fitted = probes.fit(model, lambda size: next(served), 70)
    with torch.no_grad():
        states = model.hidden_states(xs, ys).double()  # (L, E, B, k, D)
    predictions = probes.predict(model, fitted, xs, ys)
    for layer in range(2):
        for member in range(2):
            design = torch.cat([states[layer, member].flatten(0, 1), torch.ones(70 * 5, 1, dtype=torch.float64)], 1)
            # The same ridge objective ‖Zβ − y‖² + λ‖β‖², solved by QR on the stacked system [Z; √λ I] β = [y; 0]
            # (a LayerNorm's outputs lie on a hyperplane, so the last layer's Z alone is rank-deficient).
            ridge = 1e-8 * (design**2).sum(0).mean()
            stacked = torch.cat([design, ridge.sqrt() * torch.eye(design.shape[1], dtype=torch.float64)])
            targets = torch.cat([ys.double().flatten(), torch.zeros(design.shape[1], dtype=torch.float64)])
            expected = torch.linalg.lstsq(stacked, targets.unsqueeze(-1)).solution.squeeze(-1)
            torch.testing.assert_close(fitted.weight[layer, member], expected[:-1], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(predictions[layer, member].flatten(), design @ expected, rtol=1e-6, atol=1e-8)
    assert predictions.shape == (2, 2, 70, 5)
    # In sample, the last layer's probe is at least as good as the model's own read-out (one of its candidates).
    with torch.no_grad():
        own = ((model(xs, ys).double() - ys.double()) ** 2).mean((-2, -1))
    assert (((predictions[-1] - ys.double()) ** 2).mean((-2, -1)) <= own + 1e-9).all()


def test_two_level_covariances_have_the_condition_number_trace_and_their_own_bases() -> None:
    covariances = tasks.two_level_covariances(4, 5, 100.0, generator=torch.Generator().manual_seed(0))
    eigenvalues = torch.linalg.eigvalsh(covariances)
    torch.testing.assert_close(eigenvalues[:, -1] / eigenvalues[:, 0], torch.full((4,), 100.0, dtype=torch.float64))
    torch.testing.assert_close(eigenvalues.sum(-1), torch.full((4,), 5.0, dtype=torch.float64))
    assert (eigenvalues[:, 2:] > 1).all() and (eigenvalues[:, :2] < 0.1).all()  # 3 high, 2 low
    assert not torch.allclose(covariances[0], covariances[1])


def test_tiny_run_shapes_reproducibility_and_summary() -> None:
    config = tiny()
    first = experiment.run(config, progress=False)
    L, S, K, N, G = 2, 2, 7, 9, 9
    assert first.probe_error.shape == (L, S, K) and first.model_error.shape == (S, K)
    assert first.newton_similarity.shape == (L, S, N) and first.gd_similarity.shape == (L, S, G)
    assert first.best_newton.shape == first.best_gd.shape == (L, S)
    assert first.algorithm_similarity.shape == (N - 1, G) and first.algorithm_best_gd.shape == (N - 1,)
    assert first.newton_deviation.shape[0] == first.gd_deviation.shape[0] == 2
    assert first.cg_deviation.shape == (2, 3 + 2) and (first.cg_to_tolerance <= 3).all()  # CG: within d steps
    assert first.quasi_newton_gap.max() < 1e-20  # L-BFGS and BFGS take CG's iterates
    assert first.gd_steps.tolist() == [2**j for j in range(G)] and first.newton_steps.tolist() == list(range(N))
    # Least squares is exact from t = d examples on (noiseless prompts); Newton's last iterate is close to it.
    assert first.least_squares_error[3:].max() < 1e-10
    second = experiment.run(config, progress=False)  # the GPT from the store, the same prompts
    for name, a in first._asdict().items():
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, getattr(second, name), rtol=0, atol=0, msg=name)
    M, F = 1, 3  # one LSTM at quick; gaps 1, 3, 5 below n = 2d = 6
    assert first.ill_gpt_error.shape == (S, K) and first.ill_newton_similarity.shape == (S, N)
    assert first.ill_gd_similarity.shape == (S, G) and first.ill_least_squares_error.shape == (K,)
    assert first.lstm_error.shape == (M, K) and first.similarity_table.shape == (2, 3)
    assert first.forget_gaps.tolist() == [1, 3, 5] and first.forget_gpt.shape == first.forget_gpt_se.shape == (S, F)
    assert first.forget_lstm.shape == (M, F) and first.forget_lstm_z.shape == (M,) and first.forget_gpt_z.shape == (S,)
    assert first.forget_online_gd.shape == first.forget_newton.shape == (F,)
    summary = experiment.summary(first, config)
    assert (summary["d"], summary["layers"], summary["seeds"]) == (3, 2, 2)
    assert summary["newton_iso"] == first.newton_to_tolerance[0].item()
    assert summary["forget_lstm_last"] == first.forget_lstm[:, -1].mean().item()
    chapter = (Path(__file__).resolve().parents[1] / "book" / "12_iterative_newton.md").read_text()
    quoted = set(re.findall(r"\{glue:text\}`iterative_newton_(\w+)", chapter))
    assert quoted and quoted <= set(summary), sorted(quoted - set(summary))


def test_the_algorithm_checks_pass_and_an_untrained_model_fails() -> None:
    config = tiny(train_steps=3)
    checks = experiment.claim_checks(experiment.run(config, progress=False), config)
    by_name = {c.name.split(":")[0] + ":" + c.name.split(":")[1][:20]: c for c in checks.checks}
    algorithm_checks = [c for c in checks.checks if c.name.startswith(("algorithms", "Newton against GD"))]
    assert len(algorithm_checks) == 7 and all(c.passed for c in algorithm_checks), by_name
    assert not checks.passed  # an untrained GPT's layers do not progress
    assert any(not c.passed for c in checks.checks if c.name.startswith(("probes", "layers")))


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        (dict(width=30, n_heads=4), "width"),
        (dict(max_context=5), "max_context"),
        (dict(tolerance=2.0), "tolerance"),
        (dict(condition_number=0.5), "condition_number"),
        (dict(newton_steps=0), "newton_steps"),
        (dict(n_probe=-1), "n_probe"),
    ],
)
def test_bad_parameters_name_themselves(overrides: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        tiny(**overrides)


@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_this_chapter_loads_chapter_10s_gpt(preset: str) -> None:
    from icl import store

    ours = presets.get("iterative_newton", preset, device="cpu").gpt()
    theirs = presets.get("gpt_least_squares", preset, device="cpu").gpt()
    assert ours == theirs and store.config_key("gpt-identity", ours) == store.config_key("gpt-identity", theirs)
