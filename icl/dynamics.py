"""Exact gradient flow of one linear self-attention layer on the population loss (Zhang, Frei and Bartlett 2023).

From their balanced start (Assumption 3.3), only two blocks of the layer move: U = W^{KQ}_{11} (d × d) and
u = W^{PV}_{22} (a scalar); the prediction is ŷ = u · ((1/N) Σ_i y_i x_i)ᵀ U x_q, so the preconditioner of the
book's convention is A = u U. On x ~ N(0, Λ), w ~ N(0, I_d), noiseless, the population loss is (their Lemma 5.2,
on their ½·MSE scale)

    L(U, u) = ½ tr Λ + tr[½ u² Γ Λ U Λ Uᵀ − u Λ² Uᵀ],    Γ = (1 + 1/N) Λ + (tr Λ / N) I_d,

and gradient flow dU/dt = −∂L/∂U, du/dt = −∂L/∂u conserves u² − ‖U‖²_F. Its limit (Thm 4.1) is A = Γ⁻¹ with
u = ‖Γ⁻¹‖_F^{½}. Nothing here samples: the flow is integrated by the classical Runge–Kutta method (RK4) in
float64. Times are on ZFB's scale (the flow of ½·MSE); the same path under the flow of the MSE takes half as long.

Shapes: ``covariance`` Λ (d, d) symmetric positive definite and commuting with Γ by construction; ``U`` (..., d, d),
``u`` (...).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from tqdm import tqdm

from icl.config import finite_float, positive_int
from icl.tasks import check_covariance
from icl.theory import optimal_preconditioner


class FlowState(NamedTuple):
    """U: (..., d, d) = W^{KQ}_{11}; u: (...) = W^{PV}_{22}. The preconditioner is u U."""

    U: torch.Tensor
    u: torch.Tensor


class FlowPath(NamedTuple):
    """The flow recorded at ``times`` (T,): U (T, ..., d, d), u (T, ...), and along it the relative error
    ‖uU − Γ⁻¹‖_F / ‖Γ⁻¹‖_F, the excess loss L − L* (½·MSE, computed without cancellation) and the
    balance u² − ‖U‖²_F, each (T, ...)."""

    times: torch.Tensor
    U: torch.Tensor
    u: torch.Tensor
    relative_error: torch.Tensor
    excess_loss: torch.Tensor
    balance: torch.Tensor


def gamma(covariance: torch.Tensor, n_context: int) -> torch.Tensor:
    """Γ = (1 + 1/N) Λ + (tr Λ / N) I_d, the inverse of the optimal preconditioner. (d, d) -> (d, d)."""
    return torch.linalg.inv(optimal_preconditioner(covariance, n_context))


def limit(covariance: torch.Tensor, n_context: int, balance: torch.Tensor | float = 0.0) -> FlowState:
    """The flow's limit (Thm 4.1): uU = Γ⁻¹ with the start's u² − ‖U‖²_F = ``balance`` kept, so u² is the positive
    root of u² − ‖Γ⁻¹‖²_F / u² = balance; from a balanced start u = ‖Γ⁻¹‖_F^{½} and U = ‖Γ⁻¹‖_F^{−½} Γ⁻¹.
    ``balance`` (...) gives U (..., d, d) and u (...)."""
    optimum = optimal_preconditioner(covariance, n_context)
    norm = torch.linalg.matrix_norm(optimum)
    b = torch.as_tensor(balance, dtype=torch.float64, device=optimum.device)
    u = ((b + torch.sqrt(b**2 + 4 * norm**2)) / 2).sqrt()
    return FlowState(optimum / u[..., None, None], u)


def convergence_bound(covariance: torch.Tensor, n_context: int, scale: float) -> float:
    """σ² ‖Γ‖_op √d: Thm 4.1 guarantees convergence to the global minimum when it is below 2."""
    g = gamma(covariance, n_context)
    return float(scale**2 * torch.linalg.matrix_norm(g, ord=2) * g.shape[0] ** 0.5)


def loss(state: FlowState, covariance: torch.Tensor, n_context: int) -> torch.Tensor:
    """L(U, u) on ZFB's ½·MSE scale. -> (...)."""
    lam = check_covariance(torch.as_tensor(covariance)).to(torch.float64)
    g = gamma(lam, n_context)
    U, u = state
    weight = u[..., None, None]
    quadratic = 0.5 * weight**2 * g @ lam @ U @ lam @ U.mT
    linear = weight * lam @ lam @ U.mT
    return 0.5 * torch.trace(lam) + torch.diagonal(quadratic - linear, dim1=-2, dim2=-1).sum(-1)


def excess_loss(preconditioner: torch.Tensor, covariance: torch.Tensor, n_context: int) -> torch.Tensor:
    """L − L* for the predictor with preconditioner A (½·MSE): ½ tr[ΓΛ (A − Γ⁻¹) Λ (A − Γ⁻¹)ᵀ], the loss's exact
    quadratic expansion around its minimum, so that tiny excesses are not lost to cancellation. (..., d, d) -> (...)."""
    lam = check_covariance(torch.as_tensor(covariance)).to(torch.float64)
    delta = torch.as_tensor(preconditioner, dtype=torch.float64) - optimal_preconditioner(lam, n_context)
    weighted = gamma(lam, n_context) @ lam @ delta @ lam @ delta.mT
    return 0.5 * torch.diagonal(weighted, dim1=-2, dim2=-1).sum(-1)


def velocity(state: FlowState, covariance: torch.Tensor, n_context: int) -> FlowState:
    """(dU/dt, du/dt) = −∇L: (−u² ΓΛ U Λ + u Λ², −u tr(ΓΛ U Λ Uᵀ) + tr(Λ² Uᵀ)) (ZFB's eq. 5.4)."""
    lam = torch.as_tensor(covariance, dtype=torch.float64)
    g_lam = gamma(lam, n_context) @ lam
    return _velocity(state, g_lam, lam)


def _velocity(state: FlowState, g_lam: torch.Tensor, lam: torch.Tensor) -> FlowState:
    U, u = state
    curvature = g_lam @ U @ lam
    square = lam @ lam
    dU = -(u**2)[..., None, None] * curvature + u[..., None, None] * square
    du = -u * (curvature * U).sum((-2, -1)) + (square * U).sum((-2, -1))
    return FlowState(dU, du)


def gradient_flow(
    covariance: torch.Tensor,
    n_context: int,
    start: FlowState,
    *,
    time: float,
    step: float,
    n_records: int = 200,
    progress: bool = False,
) -> FlowPath:
    """Integrate the flow from ``start`` for ``time`` (ZFB's time, ½·MSE) with RK4 steps of ``step``, recording
    ``n_records`` + 1 evenly spaced states (the start included). A batch of starts (U (B, d, d), u (B,)) flows
    side by side; the path's arrays then carry B after T. float64; deterministic."""
    lam = check_covariance(torch.as_tensor(covariance)).to(torch.float64)
    time = finite_float("time", time, minimum=0.0, strict=True)
    step = finite_float("step", step, minimum=0.0, strict=True)
    n_records = positive_int("n_records", n_records)
    n_steps = max(n_records, round(time / step))
    n_steps += -n_steps % n_records  # whole steps between records
    h = time / n_steps
    g_lam = gamma(lam, n_context) @ lam
    state = FlowState(start.U.to(torch.float64).clone(), start.u.to(torch.float64).clone())
    records = [state]
    for index in tqdm(range(1, n_steps + 1), desc=f"gradient flow, N = {n_context}", disable=not progress):
        k1 = _velocity(state, g_lam, lam)
        k2 = _velocity(FlowState(state.U + h / 2 * k1.U, state.u + h / 2 * k1.u), g_lam, lam)
        k3 = _velocity(FlowState(state.U + h / 2 * k2.U, state.u + h / 2 * k2.u), g_lam, lam)
        k4 = _velocity(FlowState(state.U + h * k3.U, state.u + h * k3.u), g_lam, lam)
        state = FlowState(
            state.U + h / 6 * (k1.U + 2 * k2.U + 2 * k3.U + k4.U),
            state.u + h / 6 * (k1.u + 2 * k2.u + 2 * k3.u + k4.u),
        )
        if index % (n_steps // n_records) == 0:
            records.append(state)
    U = torch.stack([r.U for r in records])
    u = torch.stack([r.u for r in records])
    optimum = optimal_preconditioner(lam, n_context)
    A = u[..., None, None] * U
    return FlowPath(
        times=torch.linspace(0.0, time, len(records), dtype=torch.float64),
        U=U,
        u=u,
        relative_error=torch.linalg.matrix_norm(A - optimum) / torch.linalg.matrix_norm(optimum),
        excess_loss=excess_loss(A, lam, n_context),
        balance=u**2 - torch.linalg.matrix_norm(U) ** 2,
    )
