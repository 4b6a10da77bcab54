"""The shared GPT: one store entry per configuration, so a second chapter asking for the same model loads the same
weights; the two training distributions; bad configurations named before any work."""

from __future__ import annotations

import pytest
import torch

from icl import gpt

TINY = dict(dim=3, train_examples=5, max_examples=9, width=16, n_layers=1, n_heads=2, n_seeds=2, train_steps=8)


def test_a_second_request_loads_the_same_weights(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICL_STORE", str(tmp_path))
    config = gpt.GPTConfig(**TINY, batch_size=8, curriculum_start_dim=1, curriculum_every=2)
    first, training = gpt.trained(config, progress=False)
    assert training.losses.shape == (8, 2)
    second, again = gpt.trained(config, progress=False)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(training.losses, again.losses, rtol=0, atol=0)
    assert len(list((tmp_path / "results").glob("*.pt"))) == 1 and not list((tmp_path / "checkpoints").iterdir())
    xs, ys = torch.randn(5, 7, 3), torch.randn(5, 7)
    assert gpt.predictions(first, xs, ys).shape == (2, 5, 7)


def test_the_training_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    fixed = gpt.sample_training(gpt.GPTConfig(**TINY, batch_size=4000), g)
    assert fixed.X.shape == (2, 4000, 4, 3)
    torch.testing.assert_close(fixed.X.var((0, 1, 2)), torch.ones(3), atol=0.05, rtol=0)
    random = gpt.sample_training(gpt.GPTConfig(**TINY, batch_size=4000, covariance="random_diagonal"), g)
    per_prompt = random.X.square().mean(-2)  # (E, B, d): each prompt's own scale λ, Exp(1)-distributed
    assert per_prompt.std() > 0.5  # not a shared covariance


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        (dict(width=15), "width"),
        (dict(max_examples=4), "max_examples"),
        (dict(covariance="skewed"), "covariance"),
        (dict(n_seeds=0), "n_seeds"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(curriculum_start_dim=0), "curriculum_start_dim"),
        (dict(device=0), "device"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_configurations_name_the_field(overrides: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        gpt.GPTConfig(**(TINY | overrides))
