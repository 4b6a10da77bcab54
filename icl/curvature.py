"""The curvature of an ensemble's training loss: per-member gradients, Hessians, robust condition numbers and
directional smoothness (Ahn, Cheng, Song, Yun, Jadbabaie and Sra 2024, the paper note's §4).

Every function takes ``losses``: a callable returning the (E,) losses of the E members of an ensemble on a fixed batch,
and ``params``: the ensemble's parameters, each (E, ...). Members are independent (member e's loss depends on its
own slices only), so one backward pass of the summed losses gives every member's gradient, and one Hessian-vector
product of the summed losses gives every member's product at once. ``P`` is the number of parameters per member.
The model must be differentiable twice (``LinearTransformer(..., twice_differentiable=True)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Losses = Callable[[], torch.Tensor]


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-member tensors (E, ...) as one (E, P) matrix."""
    return torch.cat([t.reshape(t.shape[0], -1) for t in tensors], dim=1)


def member_gradients(losses: Losses, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Each member's gradient of its own loss: (E, P)."""
    return _flat(torch.autograd.grad(losses().sum(), list(params)))


def member_hessians(losses: Losses, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Each member's Hessian of its own loss: (E, P, P), one Hessian-vector product per parameter coordinate."""
    params = list(params)
    gradient = _flat(torch.autograd.grad(losses().sum(), params, create_graph=True))  # (E, P)
    rows = [
        _flat(torch.autograd.grad(gradient[:, k].sum(), params, retain_graph=True)) for k in range(gradient.shape[1])
    ]
    return torch.stack(rows, dim=1)  # row k: ∂g_k/∂θ, member by member


def directional_smoothness(
    losses: Losses, params: Sequence[torch.Tensor], direction: Sequence[torch.Tensor]
) -> torch.Tensor:
    """uᵀ ∇²f u / ‖u‖² for each member along its own ``direction`` u (tensors shaped like ``params``): (E,). Ahn et al.
    take u = x_{t+1} − x_t, the step just taken: the curvature the optimiser met."""
    return gradient_and_smoothness(losses, params, direction)[1]


def gradient_and_smoothness(
    losses: Losses, params: Sequence[torch.Tensor], direction: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each member's gradient (E, P) and its :func:`directional_smoothness` (E,), from one gradient and one
    Hessian-vector product."""
    params = list(params)
    gradient = torch.autograd.grad(losses().sum(), params, create_graph=True)
    along = sum((g * u).sum() for g, u in zip(gradient, direction, strict=True))  # Σ_e g_eᵀ u_e
    curvature = _flat(torch.autograd.grad(along, params))  # (E, P): H_e u_e
    u = _flat(direction)
    return _flat(gradient).detach(), (u * curvature).sum(1) / (u * u).sum(1)


def robust_condition_number(values: torch.Tensor) -> torch.Tensor:
    """max |v| / median |v| over the last axis (the median of an even count is the lower middle value, as
    ``torch.median`` and Ahn et al.'s code take it): (..., P) -> (...)."""
    magnitudes = values.abs()
    return magnitudes.amax(-1) / magnitudes.median(-1).values


def hessian_condition_numbers(hessians: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The robust condition number R_med of each Hessian (E, P, P) in both versions of the paper note: of the
    eigenvalues' magnitudes (the paper's λ_max/λ_median), and of the diagonal's (their code's). -> (E,), (E,)."""
    symmetric = (hessians + hessians.mT) / 2
    eigenvalues = torch.linalg.eigvalsh(symmetric.double())
    return robust_condition_number(eigenvalues), robust_condition_number(torch.diagonal(hessians, dim1=-2, dim2=-1))
