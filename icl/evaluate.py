"""Scoring predictors on a shared test set, and distances between matrices.

Shapes: predictions and targets (..., B) over B test prompts; matrices (..., d, d).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

import torch

from icl.tasks import RegressionBatch

if TYPE_CHECKING:
    from icl.models import LinearTransformer

EVAL_CONTEXT_EXAMPLES = 400_000


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


def eval_chunk(n_context: int) -> int:
    """Prompts per evaluation chunk: 20,000 up to n = 20, fewer beyond, so that a chunk holds at most 400,000 context
    examples. Evaluating 20,000 prompts of length 80 at once took chapter 02's kernel to 1.9 GB, near Binder's 2 GB."""
    return max(1, min(20_000, EVAL_CONTEXT_EXAMPLES // n_context))


@torch.no_grad()
def monte_carlo_predictions(
    n_test: int,
    n_context: int,
    sample: Callable[[int], RegressionBatch],
    predictors: Mapping[str, Callable[[RegressionBatch], torch.Tensor]],
    *,
    chunk: int | None = None,
) -> dict[str, torch.Tensor]:
    """Every predictor's predictions, and the targets (key ``"target"``), on ``n_test`` fresh prompts drawn by
    ``sample(size)`` in chunks of ``chunk`` prompts (default :func:`eval_chunk`). Each output (..., n_test) is a tensor
    allocated once and filled chunk by chunk: a list of per-chunk tensors, kept alive between each chunk's large
    temporaries, fragments glibc's heap (chapter 02's evaluation once took its kernel from 0.3 to 1.1 GB that way)."""
    out: dict[str, torch.Tensor] = {}
    chunk = eval_chunk(n_context) if chunk is None else chunk
    for start in range(0, n_test, chunk):
        size = min(chunk, n_test - start)
        batch = sample(size)
        values = {"target": batch.y_query} | {name: predict(batch) for name, predict in predictors.items()}
        for name, value in values.items():
            if name not in out:
                out[name] = torch.empty((*value.shape[:-1], n_test), dtype=value.dtype, device=value.device)
            out[name][..., start : start + size] = value
    return out


def checked_query_weights(model: LinearTransformer, batch: RegressionBatch) -> torch.Tensor:
    """The weights v (ŷ = vᵀx_q) of every member of a one-layer model on each prompt of a batch shared by the members
    (X (B, n, d)): (E, B, d), from :meth:`~icl.models.LinearTransformer.query_weights`, after checking them against
    the model's forward pass on the batch's own queries."""
    E = model.n_models
    weights = model.query_weights(batch.X, batch.y)  # (E, B, d)
    expand = lambda t: t.expand(E, *t.shape)  # noqa: E731
    forward = model.predict(expand(batch.X), expand(batch.y), expand(batch.x_query))
    terms = weights * batch.x_query  # (E, B, d): ŷ is their sum
    # float32 round-off grows with the terms' size, not with their sum, which cancels: allow 1e-4 of Σ|terms| (+1e-4).
    # A chapter 09 prompt at covariate scale c = 4 sums terms of ~10² to ~10⁻¹ and misses a plain atol = rtol = 1e-4
    # on some CPUs; the largest error seen is 0.6 % of this bound, while a wrong forward pass errs by O(ŷ).
    if ((forward - terms.sum(-1)).abs() > 1e-4 * (1 + terms.abs().sum(-1))).any():
        raise RuntimeError("the model's forward pass disagrees with its query weights")
    return weights


def query_averaged_error(weights: torch.Tensor, w: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """E over x_q ~ N(0, Σ) of (vᵀx_q − wᵀx_q)² = (v − w)ᵀ Σ (v − w), per prompt. (..., d) × 2, (d, d) -> (...).

    The Monte Carlo mean of these over prompts estimates the same MSE as the squared errors on sampled queries,
    with the query's share of the variance removed (Rao–Blackwell)."""
    delta = (weights - w).double()
    return ((delta @ covariance.double()) * delta).sum(-1)


def mean_and_se(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of per-prompt values (..., B) and its standard error, each (...)."""
    return values.mean(-1), values.std(-1) / math.sqrt(values.shape[-1])


def downsample_curve(curve: torch.Tensor, points: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    """Average a (steps, ...) curve over consecutive windows; returns (step at each window's end, mean)."""
    steps = curve.shape[0]
    window = max(1, steps // points)
    usable = (steps // window) * window
    means = curve[:usable].reshape(usable // window, window, *curve.shape[1:]).mean(1)
    ends = torch.arange(window, usable + 1, window)
    return ends, means


def whiten(preconditioner: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """The whitened preconditioner Σ^{½} A Σ^{½} (a multiple of I when A is a multiple of Σ⁻¹).
    preconditioner: (..., S, L, d, d), covariance: (S, d, d) -> (..., S, L, d, d)."""
    eigenvalues, vectors = torch.linalg.eigh(covariance)
    half = (vectors * eigenvalues.sqrt().unsqueeze(-2)) @ vectors.mT  # (S, d, d)
    return half.unsqueeze(-3) @ preconditioner @ half.unsqueeze(-3)
