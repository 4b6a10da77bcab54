"""How alike two in-context learners are, by their errors along a sequence (Fu, Chen, Jia and Sharan 2023).

A learner's *residual vector* on one sequence of examples holds its error ŷ_t − y_t at each position t, each
prediction made from the t examples before it. SimE(A, B) is the cosine between A's and B's residual vectors,
averaged over sequences: 1 when the two err alike up to a common scale. The *best match* of a learner among the
iterates of an algorithm is the number of steps k* whose iterate has the highest SimE with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def residual_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The cosine between residual vectors along the last axis (positions), per sequence: (..., B, T) -> (..., B).
    The two inputs broadcast against each other; a residual vector of zeros has cosine 0 with everything."""
    a, b = torch.broadcast_tensors(a, b)
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(norms > 0, (a * b).sum(-1) / norms.clamp(min=torch.finfo(a.dtype).tiny), 0.0)


def similarity_matrix(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """SimE of every row learner with every column learner: rows (R, B, T), columns (C, B, T) -> (R, C), each entry
    the mean over the B sequences of :func:`residual_cosine`."""
    if rows.shape[1:] != columns.shape[1:]:
        raise ValueError(
            f"rows and columns must hold residuals of the same (sequences, positions), got {tuple(rows.shape)} "
            f"and {tuple(columns.shape)}"
        )
    return residual_cosine(rows[:, None], columns[None]).mean(-1)


def best_match(similarity: torch.Tensor, steps: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of a (R, K) similarity against an algorithm's iterates after ``steps`` (K step counts): the step
    count k* with the highest SimE, and that SimE. -> (R,) long, (R,) float."""
    if similarity.shape[-1] != len(steps):
        raise ValueError(f"similarity has {similarity.shape[-1]} columns for {len(steps)} step counts")
    best, index = similarity.max(-1)
    return torch.as_tensor(list(steps), dtype=torch.long, device=similarity.device)[index], best


def line_fit(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    """Least-squares line y ≈ a + b x through points (N,), N >= 2: intercept a, slope b and R² (the share of y's
    variance the line explains; 1 when y is constant and the line hits every point)."""
    x, y = x.double(), y.double()
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(
            f"line_fit needs two 1-d tensors of the same length >= 2, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    design = torch.stack([torch.ones_like(x), x], -1)
    coefficients = torch.linalg.lstsq(design, y.unsqueeze(-1)).solution.squeeze(-1)
    residual = y - design @ coefficients
    spread = ((y - y.mean()) ** 2).sum()
    r2 = 1.0 - (residual**2).sum().item() / spread.item() if spread > 0 else float(residual.abs().max() < 1e-12)
    return coefficients[0].item(), coefficients[1].item(), r2
