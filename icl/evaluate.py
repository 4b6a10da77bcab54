"""Scoring predictors on a shared test set, and distances between matrices.

Shapes: predictions and targets (..., B) over B test prompts; matrices (..., d, d).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class LossEstimate(NamedTuple):
    """A Monte Carlo MSE and its standard error, each (...): one per model."""

    mean: torch.Tensor
    standard_error: torch.Tensor


def mse(predictions: torch.Tensor, targets: torch.Tensor) -> LossEstimate:
    """Mean squared error over the last axis (prompts) with its standard error std/√B, in float64."""
    squared = (predictions.double() - targets.double()) ** 2
    count = squared.shape[-1]
    return LossEstimate(squared.mean(-1), squared.std(-1) / count**0.5)


def relative_error(matrix: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """‖M − R‖_F / ‖R‖_F. (..., d, d) -> (...)."""
    return torch.linalg.matrix_norm(matrix - reference) / torch.linalg.matrix_norm(reference)


def symmetric_part(matrix: torch.Tensor) -> torch.Tensor:
    """(M + Mᵀ)/2. (..., d, d) -> (..., d, d)."""
    return (matrix + matrix.mT) / 2


def asymmetry(matrix: torch.Tensor) -> torch.Tensor:
    """‖M − Mᵀ‖_F / ‖M‖_F, reported beside every learned preconditioner (papers/README §1.6). -> (...)."""
    return torch.linalg.matrix_norm(matrix - matrix.mT) / torch.linalg.matrix_norm(matrix)


def distance_to_identity(matrix: torch.Tensor) -> torch.Tensor:
    """Dist(M, I) = min_α ‖M − αI‖_F / ‖M‖_F = ‖M − (tr M / d) I‖_F / ‖M‖_F (papers/README §3). -> (...)."""
    d = matrix.shape[-1]
    scale = torch.diagonal(matrix, dim1=-2, dim2=-1).mean(-1)[..., None, None]
    eye = torch.eye(d, dtype=matrix.dtype, device=matrix.device)
    return torch.linalg.matrix_norm(matrix - scale * eye) / torch.linalg.matrix_norm(matrix)
