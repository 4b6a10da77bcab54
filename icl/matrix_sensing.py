"""Symmetric matrix sensing and three first-order methods on its Burer–Monteiro factorisation: gradient descent,
ScaledGD and PrecGD (Zhang, Fattahi and Zhang 2021; the paper note ``papers/precgd2021_matrix_factorization.md``).

The problem, batched over ``S`` independent instances (seeds): a rank-r* ground truth M* = Z* Z*ᵀ (n × n), m
symmetric Gaussian sensing matrices A_i = (G_i + G_iᵀ)/2 with G_i iid N(0, 1), measurements
b_i = ⟨A_i, M*⟩ + σ ε_i, and the loss of a factor X (n × r, r ≥ r*)

    f(X) = (1/m) Σ_i (⟨A_i, XXᵀ⟩ − b_i)²,   ∇f(X) = (4/m) Σ_i (⟨A_i, XXᵀ⟩ − b_i) A_i X,

so that E f = ‖XXᵀ − M*‖²_F + σ² over the sensing matrices and the noise. Each method steps X ← X − α ∇f(X) R⁻¹
with its own right preconditioner R (r × r): the identity (GD), XᵀX (ScaledGD, pseudo-inverse) or XᵀX + η I
(PrecGD), with the damping η = √f(X) or a fixed value. Everything is float64; pure functions of explicit generators.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from icl.config import finite_float, positive_int

METHODS: tuple[str, ...] = ("gd", "scaled_gd", "prec_gd")


class SensingProblem(NamedTuple):
    """S instances. sensing: (S, m, n, n) symmetric A_i; measurements: (S, m) b; truth: (S, n, n) M*;
    factor: (S, n, r*) Z* with M* = Z* Z*ᵀ."""

    sensing: torch.Tensor
    measurements: torch.Tensor
    truth: torch.Tensor
    factor: torch.Tensor


def sample_problem(
    n_instances: int,
    dim: int,
    n_measurements: int,
    singular_values: tuple[float, ...],
    *,
    noise_std: float = 0.0,
    generator: torch.Generator,
) -> SensingProblem:
    """S instances of symmetric Gaussian sensing of M* = Z* Z*ᵀ with Z* = U diag(singular_values), U a uniformly
    random orthonormal n × r* matrix (r* = len(singular_values)), and measurement noise of std ``noise_std``."""
    S = positive_int("n_instances", n_instances)
    n = positive_int("dim", dim)
    m = positive_int("n_measurements", n_measurements)
    values = tuple(
        finite_float(f"singular_values[{i}]", v, minimum=0.0, strict=True) for i, v in enumerate(singular_values)
    )
    if not values or len(values) > n:
        raise ValueError(f"singular_values must hold between 1 and dim = {n} values, got {singular_values}")
    noise_std = finite_float("noise_std", noise_std, minimum=0.0)
    options = dict(generator=generator, dtype=torch.float64, device=generator.device)
    basis, _ = torch.linalg.qr(torch.randn(S, n, len(values), **options))
    factor = basis * torch.tensor(values, dtype=torch.float64, device=generator.device)
    truth = factor @ factor.mT
    gaussian = torch.randn(S, m, n, n, **options)
    sensing = (gaussian + gaussian.mT) / 2
    measurements = measure(sensing, truth) + noise_std * torch.randn(S, m, **options)
    return SensingProblem(sensing, measurements, truth, factor)


def measure(sensing: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """⟨A_i, M⟩ for every sensing matrix: (S, m, n, n), (S, n, n) -> (S, m)."""
    return torch.einsum("smij,sij->sm", sensing, matrix)


def loss_and_gradient(problem: SensingProblem, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f(X) and ∇f(X) for each instance: X (S, n, r) -> (S,), (S, n, r)."""
    residual = measure(problem.sensing, X @ X.mT) - problem.measurements  # (S, m)
    m = residual.shape[-1]
    weighted = torch.einsum("sm,smij->sij", residual, problem.sensing)  # Σ_i r_i A_i
    return residual.pow(2).mean(-1), (4 / m) * weighted @ X


def relative_error(problem: SensingProblem, X: torch.Tensor) -> torch.Tensor:
    """‖XXᵀ − M*‖_F / ‖M*‖_F: (S, n, r) -> (S,)."""
    truth = problem.truth
    return torch.linalg.matrix_norm(X @ X.mT - truth) / torch.linalg.matrix_norm(truth)


def initial_factor(problem: SensingProblem, rank: int, *, scale: float, generator: torch.Generator) -> torch.Tensor:
    """A start near the solution, as the local theory asks: [Z*, 0] (padded to ``rank`` columns) plus iid
    N(0, scale²) entries: (S, n, rank)."""
    S, n, r_star = problem.factor.shape
    rank = positive_int("rank", rank, minimum=r_star)
    padded = torch.nn.functional.pad(problem.factor, (0, rank - r_star))
    noise = torch.randn(S, n, rank, generator=generator, dtype=torch.float64, device=generator.device)
    return padded + finite_float("scale", scale, minimum=0.0) * noise


class Trajectory(NamedTuple):
    """A run of ``steps`` iterations, recorded before the first and after every one: relative_error (steps + 1, S);
    damping (steps + 1, S), the η each step used (the value at the last point is the next one's; 0 outside PrecGD)."""

    relative_error: torch.Tensor
    damping: torch.Tensor


def solve(
    problem: SensingProblem,
    start: torch.Tensor,
    method: str,
    *,
    step_size: float,
    steps: int,
    damping: float | None = None,
) -> Trajectory:
    """Run ``method`` from ``start`` (S, n, r) for ``steps`` iterations at ``step_size``:

    - ``"gd"``: X ← X − α ∇f(X);
    - ``"scaled_gd"``: X ← X − α ∇f(X) (XᵀX)⁺ (pseudo-inverse: over-parameterised, XᵀX becomes singular);
    - ``"prec_gd"``: X ← X − α ∇f(X) (XᵀX + η I)⁻¹ with η = √f(X) (``damping=None``) or the fixed ``damping``.

    The relative error is floored at the float64 round-off it can reach (about 1e-16), never 0 on a log scale."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if damping is not None and method != "prec_gd":
        raise ValueError(f"damping is PrecGD's; method {method!r} takes none")
    alpha = finite_float("step_size", step_size, minimum=0.0, strict=True)
    steps = positive_int("steps", steps, minimum=0)
    if damping is not None:
        damping = finite_float("damping", damping, minimum=0.0)
    X = start.clone()
    eye = torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
    errors, dampings = [], []
    for _ in range(steps + 1):
        loss, gradient = loss_and_gradient(problem, X)
        eta = loss.sqrt() if damping is None else torch.full_like(loss, damping)
        errors.append(relative_error(problem, X))
        dampings.append(eta if method == "prec_gd" else torch.zeros_like(loss))
        if len(errors) > steps:
            break
        gram = X.mT @ X
        if method == "gd":
            direction = gradient
        elif method == "scaled_gd":
            direction = gradient @ torch.linalg.pinv(gram, hermitian=True)
        else:
            direction = torch.linalg.solve(gram + eta[:, None, None] * eye, gradient.mT).mT  # R symmetric
        X = X - alpha * direction
        if not bool(torch.isfinite(X).all()):
            raise FloatingPointError(f"{method} diverged at step size {alpha}: lower step_size")
    stack = lambda values: torch.stack(values).clamp(min=torch.finfo(torch.float64).tiny)  # noqa: E731
    return Trajectory(stack(errors), torch.stack(dampings))


def first_below(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """The first iteration at which each column of ``values`` (T, S) is below ``threshold``, or −1 if never: (S,)."""
    below = values < threshold
    first = below.double().argmax(0)
    return torch.where(below.any(0), first, torch.full_like(first, -1))


def loglog_slope(values: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """The least-squares slope of log values against log iteration over iterations [start, stop]: (T, S) -> (S,).
    −1 is a 1/k rate; a linear (geometric) rate has no fixed slope: it steepens without end."""
    k = torch.arange(start, stop + 1, dtype=torch.float64, device=values.device).log()
    y = values[start : stop + 1].log()
    k, y = k - k.mean(), y - y.mean(0)
    return (k[:, None] * y).sum(0) / k.pow(2).sum()


def statistical_error(rank: int, noise_std: float, problem: SensingProblem) -> torch.Tensor:
    """The scale of the best achievable relative error with noisy measurements: σ √(n r / m) / ‖M*‖_F, the minimax
    rate's order for rank-r sensing of an n × n matrix (constants aside); only a guide line. -> (S,)."""
    _, m, n, _ = problem.sensing.shape
    return noise_std * math.sqrt(n * rank / m) / torch.linalg.matrix_norm(problem.truth)
