"""Classical in-context regressors, batched and pure, with the models' call signature.

Every baseline maps a prompt (X: (..., n, d), y: (..., n), x_query: (..., d)) to ŷ: (...).
The in-context least-squares objective is R(w) = (1/2n) Σ_i (⟨w, x_i⟩ − y_i)², whose gradient is
∇R(w) = Ŝ w − h with Ŝ = (1/n) Σ x_i x_iᵀ and h = (1/n) Σ y_i x_i (papers/README §1.6).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from icl.config import finite_float, positive_int


def _moments(X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ŝ: (..., d, d) and h: (..., d) of the context."""
    n = X.shape[-2]
    return X.mT @ X / n, (X.mT @ y.unsqueeze(-1)).squeeze(-1) / n


def zero(X: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
    """The zero estimator, ŷ = 0: the level any learner must beat. -> (...)."""
    return torch.zeros_like(x_query[..., 0])


def least_squares(X: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least squares, ŵ = X⁺ y, by the normal equations (not CUDA lstsq, which assumes full rank).

    n >= d solves (XᵀX) ŵ = Xᵀy; n < d solves (XXᵀ) α = y and takes ŵ = Xᵀα.
    """
    n, d = X.shape[-2:]
    if n >= d:
        w = torch.linalg.solve(X.mT @ X, (X.mT @ y.unsqueeze(-1))).squeeze(-1)
    else:
        alpha = torch.linalg.solve(X @ X.mT, y.unsqueeze(-1))
        w = (X.mT @ alpha).squeeze(-1)
    return (w * x_query).sum(-1)


def ridge(X: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor, regularisation: float) -> torch.Tensor:
    """Ridge regression ŵ = (Ŝ + λ I)⁻¹ h with λ = ``regularisation`` > 0."""
    regularisation = finite_float("regularisation", regularisation, minimum=0.0, strict=True)
    second_moment, h = _moments(X, y)
    eye = torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
    w = torch.linalg.solve(second_moment + regularisation * eye, h.unsqueeze(-1)).squeeze(-1)
    return (w * x_query).sum(-1)


def preconditioned_gd(
    X: torch.Tensor,
    y: torch.Tensor,
    x_query: torch.Tensor,
    preconditioner: torch.Tensor | Sequence[torch.Tensor],
    n_steps: int = 1,
) -> torch.Tensor:
    """``n_steps`` steps of preconditioned GD from w₀ = 0: w ← w − A_ℓ ∇R(w) (Ahn et al. 2023, Lemma 1).

    preconditioner: one A (d, d) or (..., d, d) used at every step, or a sequence of ``n_steps`` of them.
    """
    n_steps = positive_int("n_steps", n_steps)
    if isinstance(preconditioner, torch.Tensor):
        preconditioners = [preconditioner] * n_steps
    else:
        preconditioners = list(preconditioner)
        if len(preconditioners) != n_steps:
            raise ValueError(f"got {len(preconditioners)} preconditioners for n_steps={n_steps}")
    second_moment, h = _moments(X, y)
    w = torch.zeros_like(h)
    for A in preconditioners:
        gradient = (second_moment @ w.unsqueeze(-1)).squeeze(-1) - h
        w = w - (A.to(X.dtype) @ gradient.unsqueeze(-1)).squeeze(-1)
    return (w * x_query).sum(-1)


def gd(
    X: torch.Tensor,
    y: torch.Tensor,
    x_query: torch.Tensor,
    step_size: float | Sequence[float],
    n_steps: int = 1,
) -> torch.Tensor:
    """``n_steps`` steps of plain GD from w₀ = 0 with step size η (a float, or one per step)."""
    n_steps = positive_int("n_steps", n_steps)
    sizes = [step_size] * n_steps if isinstance(step_size, (int, float)) else list(step_size)
    eye = torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
    steps = [finite_float("step_size", s) * eye for s in sizes]
    return preconditioned_gd(X, y, x_query, steps, n_steps=n_steps)
