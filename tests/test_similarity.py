"""SimE and the best match (Fu et al. 2023): the cosine of residual vectors, and what it can tell apart."""

from __future__ import annotations

import pytest
import torch

from icl import similarity

F64 = torch.float64


def test_cosine_is_one_for_scaled_residuals_and_zero_for_orthogonal_ones() -> None:
    a = torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(similarity.residual_cosine(a, 3 * a), torch.ones(2, dtype=F64))
    torch.testing.assert_close(similarity.residual_cosine(a, -a), -torch.ones(2, dtype=F64))
    orthogonal = torch.tensor([[2.0, -1.0, 0.0], [0.0, 1.0, 0.0]], dtype=F64)
    torch.testing.assert_close(similarity.residual_cosine(a, orthogonal), torch.zeros(2, dtype=F64))
    assert similarity.residual_cosine(a, torch.zeros_like(a)).tolist() == [0.0, 0.0]  # a learner with no error


def test_similarity_matrix_averages_over_sequences() -> None:
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 50, 7, generator=generator, dtype=F64)
    columns = torch.randn(4, 50, 7, generator=generator, dtype=F64)
    matrix = similarity.similarity_matrix(rows, columns)
    assert matrix.shape == (3, 4)
    expected = torch.nn.functional.cosine_similarity(rows[1], columns[2], dim=-1).mean()
    torch.testing.assert_close(matrix[1, 2], expected)
    with pytest.raises(ValueError, match="same"):
        similarity.similarity_matrix(rows, columns[:, :, :5])


def test_best_match_returns_the_step_count_not_the_index() -> None:
    matrix = torch.tensor([[0.1, 0.9, 0.2], [0.5, 0.4, 0.8]], dtype=F64)
    steps, best = similarity.best_match(matrix, [1, 4, 16])
    assert steps.tolist() == [4, 16] and best.tolist() == [0.9, 0.8]
    with pytest.raises(ValueError, match="step counts"):
        similarity.best_match(matrix, [1, 2])


def test_line_fit_recovers_a_line_and_scores_a_curve_lower() -> None:
    x = torch.arange(6, dtype=F64)
    intercept, slope, r2 = similarity.line_fit(x, 2.0 + 3.0 * x)
    assert intercept == pytest.approx(2.0) and slope == pytest.approx(3.0) and r2 == pytest.approx(1.0)
    assert similarity.line_fit(x, 2.0**x)[2] < 0.9  # an exponential is far from a line over 6 points
    assert similarity.line_fit(x, torch.full_like(x, 4.0))[2] == 1.0
    with pytest.raises(ValueError, match="line_fit"):
        similarity.line_fit(x[:1], x[:1])
