"""Closed forms from the papers, in the canonical convention (MSE without ½; papers/README §1).

Shapes: ``covariance`` Σ: (d, d) symmetric positive definite; ``n_context`` n: context length.
Computed in float64.
"""

from __future__ import annotations

import torch

from icl.config import positive_int
from icl.tasks import check_covariance


def _prepare(covariance: torch.Tensor, n_context: int) -> tuple[torch.Tensor, int]:
    covariance = check_covariance(torch.as_tensor(covariance)).to(torch.float64)
    return covariance, positive_int("n_context", n_context)


def optimal_preconditioner(covariance: torch.Tensor, n_context: int) -> torch.Tensor:
    """Γ* = ((1 + 1/n) Σ + (tr Σ / n) I)⁻¹: the preconditioner of the globally optimal one-layer LSA
    on x ~ N(0, Σ), w ~ N(0, I_d), noiseless (Ahn et al. 2023, Thm 1; Zhang, Frei, Bartlett 2023, Thm 4.1).

    (d, d) -> (d, d). For Σ = I_d it is n/(n + d + 1) · I_d; as n → ∞ it tends to Σ⁻¹.

    >>> round(optimal_preconditioner(torch.eye(5), 20)[0, 0].item(), 4)
    0.7692
    """
    covariance, n = _prepare(covariance, n_context)
    eye = torch.eye(covariance.shape[0], dtype=torch.float64, device=covariance.device)
    gamma = (1 + 1 / n) * covariance + torch.trace(covariance) / n * eye
    return torch.linalg.inv(gamma)


def one_step_loss(preconditioner: torch.Tensor, covariance: torch.Tensor, n_context: int) -> torch.Tensor:
    """Population MSE of one preconditioned GD step from w = 0, ŷ = x_qᵀ A (1/n) Σ y_i x_i, on
    x ~ N(0, Σ), w ~ N(0, I_d), noiseless:

    f(A) = tr Σ − 2 tr(AΣ²) + (1 + 1/n) tr(AᵀΣAΣ²) + (1/n) tr(AᵀΣAΣ) tr Σ,

    from the Wishart identity E[Ŝ M Ŝ] = (1 + 1/n) Σ M Σ + (1/n) tr(MΣ) Σ. preconditioner: (..., d, d) -> (...).
    """
    covariance, n = _prepare(covariance, n_context)
    A = torch.as_tensor(preconditioner).to(torch.float64)
    s2 = covariance @ covariance
    quadratic = A.mT @ covariance @ A  # AᵀΣA
    trace = lambda M: torch.diagonal(M, dim1=-2, dim2=-1).sum(-1)  # noqa: E731
    return (
        torch.trace(covariance)
        - 2 * trace(A @ s2)
        + (1 + 1 / n) * trace(quadratic @ s2)
        + trace(quadratic @ covariance) * torch.trace(covariance) / n
    )


def optimal_one_step_loss(covariance: torch.Tensor, n_context: int) -> torch.Tensor:
    """f* = tr Σ − tr(Σ Γ* Σ), the minimum of :func:`one_step_loss` (Ahn et al. 2023, Thm 1). -> ()."""
    covariance, n = _prepare(covariance, n_context)
    return torch.trace(covariance) - torch.trace(covariance @ optimal_preconditioner(covariance, n) @ covariance)


def optimal_gd_step_size(covariance: torch.Tensor, n_context: int) -> torch.Tensor:
    """η* = tr Σ² / ((1 + 1/n) tr Σ³ + (1/n) tr Σ² tr Σ): the best single plain GD step (A = η I) from w = 0.

    Minimises the quadratic :func:`one_step_loss` (η I). -> ().
    """
    covariance, n = _prepare(covariance, n_context)
    s2 = covariance @ covariance
    curvature = (1 + 1 / n) * torch.trace(s2 @ covariance) + torch.trace(s2) * torch.trace(covariance) / n
    return torch.trace(s2) / curvature
