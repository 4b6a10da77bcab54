"""The canonical token matrix Z (papers/README §1.1) and its read-out ŷ = −Z[d, n] (§1.4)."""

from __future__ import annotations

import pytest
import torch

from icl import tasks
from icl.tokens import read_out, to_tokens


def prompt(batch: tuple[int, ...] = (3,), n: int = 4, d: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(*batch, n, d, generator=g, dtype=torch.float64)
    y = torch.randn(*batch, n, generator=g, dtype=torch.float64)
    x_query = torch.randn(*batch, d, generator=g, dtype=torch.float64)
    return X, y, x_query


def test_layout_tokens_are_columns_and_query_label_is_zero() -> None:
    X, y, x_query = prompt()
    Z = to_tokens(X, y, x_query)
    assert Z.shape == (3, 3, 5)  # (B, d+1, n+1)
    assert torch.equal(Z[:, :2, :4], X.mT)  # column i < n is (x_i; y_i)
    assert torch.equal(Z[:, 2, :4], y)
    assert torch.equal(Z[:, :2, 4], x_query)  # the last column is (x_q; 0)
    assert torch.equal(Z[:, 2, 4], torch.zeros(3, dtype=torch.float64))


def test_leading_ensemble_axis() -> None:
    X, y, x_query = prompt(batch=(2, 3))
    Z = to_tokens(X, y, x_query)
    assert Z.shape == (2, 3, 3, 5)
    assert torch.equal(Z[1], to_tokens(X[1], y[1], x_query[1]))


def test_tokens_are_stored_row_major() -> None:
    """Z is the transpose of a contiguous row array, the layout lsa_layer computes in."""
    Z = to_tokens(*prompt())
    assert Z.mT.is_contiguous()


def test_read_out_has_the_minus_sign() -> None:
    Z = torch.zeros(2, 3, 5)
    Z[:, 2, 4] = torch.tensor([1.5, -2.0])
    assert torch.equal(read_out(Z), torch.tensor([-1.5, 2.0]))
    assert torch.equal(read_out(to_tokens(*prompt())), torch.zeros(3, dtype=torch.float64))


def test_read_out_gradient_reaches_only_the_prediction_entry() -> None:
    Z = to_tokens(*prompt()).clone().requires_grad_(True)
    read_out(Z).sum().backward()
    expected = torch.zeros_like(Z)
    expected[:, 2, 4] = -1.0
    assert torch.equal(Z.grad, expected)


def test_sampled_prompts_take_the_fast_path_and_match_the_general_one() -> None:
    """sample_regression's views are copied whole; the result equals stacking copies and shares no memory."""
    from icl.tokens import _token_rows_view

    covariance = torch.eye(3).expand(2, 3, 3)
    batch = tasks.sample_regression(4, 5, covariance, generator=torch.Generator().manual_seed(0))
    assert _token_rows_view(batch.X, batch.y, batch.x_query) is not None
    fast = to_tokens(batch.X, batch.y, batch.x_query)
    general = to_tokens(batch.X.clone(), batch.y.clone(), batch.x_query.clone())
    assert _token_rows_view(batch.X.clone(), batch.y.clone(), batch.x_query.clone()) is None
    assert torch.equal(fast, general)
    assert torch.equal(fast[..., -1, -1], torch.zeros(2, 4))
    assert fast.untyped_storage().data_ptr() != batch.X.untyped_storage().data_ptr()
    assert not torch.equal(batch.y_query, torch.zeros_like(batch.y_query))  # the batch keeps its y_query


def test_tokens_carry_gradients_to_each_input() -> None:
    X = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    x_query = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    Z = to_tokens(X, y, x_query)
    (Z * torch.arange(Z.numel(), dtype=torch.float64).reshape(Z.shape)).sum().backward()
    weights = torch.arange(Z.numel(), dtype=torch.float64).reshape(Z.shape)
    torch.testing.assert_close(X.grad, weights[:, :3, :4].mT)
    torch.testing.assert_close(y.grad, weights[:, 3, :4])
    torch.testing.assert_close(x_query.grad, weights[:, :3, 4])


def test_mismatched_prompt_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="to_tokens"):
        to_tokens(torch.zeros(2, 4, 3), torch.zeros(2, 5), torch.zeros(2, 3))
