"""The GPT-2-style softmax transformer: token layout, shapes, causality (no prediction depends on a later token),
ensemble members independent of one another, determinism, its training objective, and bad input."""

from __future__ import annotations

import pytest
import torch

from icl import tasks
from icl.models import SoftmaxTransformer, all_prefix_loss
from icl.train import TrainConfig, train


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small(n_models: int = 2, seed: int = 0, **overrides: object) -> SoftmaxTransformer:
    arguments = dict(width=16, n_layers=2, n_heads=2, max_examples=12, n_models=n_models, generator=gen(seed))
    return SoftmaxTransformer(3, **(arguments | overrides)).double()


def examples(B: int = 5, k: int = 7, d: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    return torch.randn(B, k, d, generator=g, dtype=torch.float64), torch.randn(B, k, generator=g, dtype=torch.float64)


def test_tokens_interleave_examples_and_padded_labels() -> None:
    xs, ys = examples(B=2, k=3)
    tokens = small().tokens(xs, ys)
    assert tokens.shape == (2, 6, 3)
    torch.testing.assert_close(tokens[:, 0::2], xs)
    torch.testing.assert_close(tokens[:, 1::2, 0], ys)
    assert (tokens[:, 1::2, 1:] == 0).all()


def test_shapes_and_shared_inputs() -> None:
    model = small()
    xs, ys = examples()
    out = model(xs, ys)
    assert out.shape == (2, 5, 7)
    torch.testing.assert_close(model(xs.expand(2, *xs.shape), ys.expand(2, *ys.shape)), out)
    assert model.predict(xs[:, :-1], ys[:, :-1], xs[:, -1]).shape == (2, 5)


def test_no_prediction_depends_on_a_later_token() -> None:
    """Changing x_j changes predictions j… only; changing y_j changes predictions j+1… only."""
    model = small()
    xs, ys = examples()
    base = model(xs, ys)
    for j in range(xs.shape[1]):
        moved_x, moved_y = xs.clone(), ys.clone()
        moved_x[:, j] += 1.0
        moved_y[:, j] += 1.0
        after_x, after_y = model(moved_x, ys), model(xs, moved_y)
        torch.testing.assert_close(after_x[..., :j], base[..., :j], rtol=0, atol=0)
        torch.testing.assert_close(after_y[..., : j + 1], base[..., : j + 1], rtol=0, atol=0)
        assert (after_x[..., j] - base[..., j]).abs().max() > 1e-6  # x_j itself is seen
        if j + 1 < xs.shape[1]:
            assert (after_y[..., j + 1] - base[..., j + 1]).abs().max() > 1e-6


def test_predict_ignores_the_query_label_and_equals_the_last_position() -> None:
    model = small()
    xs, ys = examples()
    torch.testing.assert_close(model.predict(xs[:, :-1], ys[:, :-1], xs[:, -1]), model(xs, ys)[..., -1])


def test_members_depend_on_their_own_weights_only() -> None:
    model, xs_ys = small(n_models=3), examples()
    out = model(*xs_ys)
    out[1].sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad[[0, 2]].abs().max() == 0, name  # member 1's output has no gradient elsewhere
    alone = small(n_models=1)
    with torch.no_grad():
        for p, q in zip(alone.parameters(), model.parameters(), strict=True):
            p.copy_(q[1:2])
    torch.testing.assert_close(alone(*xs_ys)[0], out[1].detach(), rtol=1e-12, atol=1e-12)


def test_determinism_and_initialisation() -> None:
    a, b, c = small(seed=4), small(seed=4), small(seed=5)
    xs, ys = examples()
    torch.testing.assert_close(a(xs, ys), b(xs, ys), rtol=0, atol=0)
    assert not torch.allclose(a(xs, ys), c(xs, ys))
    assert a.qkv.std().item() == pytest.approx(0.02, rel=0.3)
    assert a.read_in.abs().max().item() <= 1 / 3**0.5  # nn.Linear's bound, fan-in d = 3
    assert (a.ln1_gain == 1).all() and (a.qkv_bias == 0).all()


def test_all_prefix_loss_averages_every_position_and_training_lowers_it() -> None:
    torch.manual_seed(0)  # unused by the code under test; set so that nothing global could matter
    model = SoftmaxTransformer(3, width=16, n_layers=2, n_heads=2, max_examples=8, n_models=2, generator=gen(0))
    covariance = torch.eye(3).expand(2, 3, 3)
    batch = tasks.sample_regression(7, 5, covariance, generator=gen(2))
    xs = torch.cat([batch.X, batch.x_query.unsqueeze(-2)], -2)
    ys = torch.cat([batch.y, batch.y_query.unsqueeze(-1)], -1)
    expected = ((model(xs, ys) - ys) ** 2).mean((-2, -1))
    torch.testing.assert_close(all_prefix_loss(model, batch), expected)
    # Training: in-context regression sits on a plateau (loss ≈ d) for ~1000 steps at this size, so the test learns a
    # task the weights alone can hold, one fixed w for every prompt, and checks that every parameter gets a gradient.
    fixed = torch.tensor([1.0, -2.0, 0.5])

    def sample(g: torch.Generator) -> tasks.RegressionBatch:
        x = torch.randn(2, 64, 6, 3, generator=g)
        y = x @ fixed
        return tasks.RegressionBatch(x[..., :5, :], y[..., :5], x[..., 5, :], y[..., 5], fixed.expand(2, 64, 3))

    all_prefix_loss(model, sample(gen(4))).sum().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in model.parameters())
    model.zero_grad()
    result = train(
        model,
        sample,
        TrainConfig(steps=150, learning_rate=3e-3),
        generator=gen(3),
        progress=False,
        objective=all_prefix_loss,
    )
    assert (result.losses[-20:].mean(0) < 0.2 * result.losses[:20].mean(0)).all(), result.losses[[0, -1]]


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"width": 0}, "width"),
        ({"n_heads": 3}, "n_heads"),
        ({"max_examples": -1}, "max_examples"),
        ({"n_layers": 0}, "n_layers"),
        ({"init_std": -0.1}, "init_std"),
    ],
)
def test_bad_arguments_name_the_parameter(overrides: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        small(**overrides)


def test_bad_inputs_are_rejected() -> None:
    model = small()
    xs, ys = examples(k=13)
    with pytest.raises(ValueError, match="max_examples"):
        model(xs, ys)
    xs, ys = examples()
    with pytest.raises(ValueError, match="xs must be"):
        model(xs[..., :2], ys)
    with pytest.raises(ValueError, match="members"):
        model(xs.expand(3, *xs.shape), ys.expand(3, *ys.shape))
