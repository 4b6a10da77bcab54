"""The LSTM baseline: shapes, causality (a label reaches only later predictions), independent members, seeded init."""

from __future__ import annotations

import pytest
import torch

from icl.models import LSTMRegressor


def model(seed: int = 0, **kwargs) -> LSTMRegressor:
    return LSTMRegressor(3, width=8, n_layers=2, n_models=2, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_shapes_and_causality() -> None:
    lstm = model()
    g = torch.Generator().manual_seed(1)
    xs, ys = torch.randn(4, 6, 3, generator=g), torch.randn(4, 6, generator=g)
    with torch.no_grad():
        out = lstm(xs, ys)
        assert out.shape == (2, 4, 6)
        changed = ys.clone()
        changed[:, 3] += 5.0  # y_3 may move the predictions at positions 4, 5 only
        after = lstm(xs, changed)
    torch.testing.assert_close(after[..., :4], out[..., :4], rtol=0, atol=0)
    assert (after[..., 4:] - out[..., 4:]).abs().max() > 1e-4
    assert lstm.predict(xs[:, :5], ys[:, :5], xs[:, 5]).shape == (2, 4)


def test_members_are_independent_and_the_start_is_seeded() -> None:
    a, b = model(0), model(0)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(next(model(1).parameters()), next(a.parameters()))
    g = torch.Generator().manual_seed(2)
    xs, ys = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, generator=g)
    with torch.no_grad():
        before = a(xs, ys)
        for parameter in a.members[1].parameters():
            parameter.add_(1.0)
        after = a(xs, ys)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)
    assert not torch.allclose(after[1], before[1])


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="width"):
        LSTMRegressor(3, width=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="xs must be"):
        model()(torch.randn(2, 5, 4), torch.randn(2, 5))
