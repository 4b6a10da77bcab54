"""Monte Carlo losses and the matrix distances of papers/README §3, against numpy and by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icl import evaluate, tasks
from icl.models import LinearTransformer

F64 = torch.float64


def test_mse_and_standard_error_match_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    predictions = torch.randn(3, 500, generator=g)
    targets = torch.randn(3, 500, generator=g)
    estimate = evaluate.mse(predictions, targets)
    squared = (predictions.double().numpy() - targets.double().numpy()) ** 2
    assert estimate.mean.dtype == F64 and estimate.mean.shape == (3,)
    np.testing.assert_allclose(estimate.mean.numpy(), squared.mean(-1), rtol=1e-12)
    np.testing.assert_allclose(estimate.standard_error.numpy(), squared.std(-1, ddof=1) / np.sqrt(500), rtol=1e-12)


def test_mse_by_hand() -> None:
    estimate = evaluate.mse(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 1.0, 1.0, 1.0]))
    assert estimate.mean.item() == 14 / 4  # 0 + 1 + 4 + 9
    assert abs(estimate.standard_error.item() - np.std([0, 1, 4, 9], ddof=1) / 2) < 1e-12


def test_distance_to_identity_of_ahns_inverse_covariance() -> None:
    """papers/README §3: Dist(Σ⁻¹, I) = 0.784 for eigenvalues (1, 1, 4, 16, 1)."""
    inverse = torch.diag(torch.tensor([1.0, 1.0, 4.0, 16.0, 1.0], dtype=F64))
    assert round(evaluate.distance_to_identity(inverse).item(), 3) == 0.784
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(1), dtype=F64))
    rotated = rotation @ inverse @ rotation.T
    torch.testing.assert_close(evaluate.distance_to_identity(rotated), evaluate.distance_to_identity(inverse))


def test_distance_to_identity_is_zero_on_multiples_and_scale_free() -> None:
    eye = torch.eye(4, dtype=F64)
    assert evaluate.distance_to_identity(3.5 * eye).item() == 0.0
    M = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    torch.testing.assert_close(evaluate.distance_to_identity(7 * M), evaluate.distance_to_identity(M))
    assert evaluate.distance_to_identity(M).shape == (2,)
    # The minimising α is tr M / d: no other multiple of I does better.
    alpha = torch.diagonal(M[0]).mean()
    for other in (alpha + 0.1, alpha - 0.1):
        worse = torch.linalg.matrix_norm(M[0] - other * eye) / torch.linalg.matrix_norm(M[0])
        assert worse > evaluate.distance_to_identity(M[0])


def test_relative_error() -> None:
    reference = torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=F64)
    matrix = reference + torch.tensor([[0.0, 0.5], [0.0, 0.0]], dtype=F64)
    assert abs(evaluate.relative_error(matrix, reference).item() - 0.5 / 5.0) < 1e-15
    assert evaluate.relative_error(reference, reference).item() == 0.0


def test_asymmetry_and_symmetric_part() -> None:
    symmetric = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=F64)
    antisymmetric = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64)
    assert evaluate.asymmetry(symmetric).item() == 0.0
    assert abs(evaluate.asymmetry(antisymmetric).item() - 2.0) < 1e-15  # ‖M − Mᵀ‖ = 2‖M‖
    torch.testing.assert_close(evaluate.symmetric_part(symmetric + antisymmetric), symmetric, rtol=0, atol=0)
    M = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    part = evaluate.symmetric_part(M)
    assert torch.equal(part, part.mT) and evaluate.asymmetry(M).shape == (3,)


def test_checked_query_weights_accepts_the_forward_pass_and_rejects_a_wrong_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generator = torch.Generator().manual_seed(0)
    model = LinearTransformer(4, 1, parameterisation="full", n_models=3, init_std=0.3, generator=generator)
    batch = tasks.sample_regression(200, 12, 16.0 * torch.eye(4), generator=generator)  # large terms, as at c = 4
    weights = evaluate.checked_query_weights(model, batch)
    assert weights.shape == (3, 200, 4)
    forward = model.predict

    def off_by_a_little(*args: torch.Tensor) -> torch.Tensor:
        prediction = forward(*args)
        return prediction + 0.01 * (1 + prediction.abs()) * (torch.arange(prediction.numel()) == 7).reshape_as(
            prediction
        )

    monkeypatch.setattr(model, "predict", off_by_a_little)
    with pytest.raises(RuntimeError, match="forward pass disagrees with its query weights"):
        evaluate.checked_query_weights(model, batch)
