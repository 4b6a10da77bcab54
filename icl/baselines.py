"""Classical in-context regressors, batched and pure, with the models' call signature.

Every baseline maps a prompt (X: (..., n, d), y: (..., n), x_query: (..., d)) to ŷ: (...).
The in-context least-squares objective is R(w) = (1/2n) Σ_i (⟨w, x_i⟩ − y_i)², whose gradient is
∇R(w) = Ŝ w − h with Ŝ = (1/n) Σ x_i x_iᵀ and h = (1/n) Σ y_i x_i (papers/README §1.6).
Two fitters tune a baseline's scalar parameters on validation prompts: :func:`best_shared_step_size` (exact, for
predictors polynomial in the step size) and :func:`minimise_scalar` (a grid refined by golden sections).

The iterative solvers Fu et al. (2023) compare a transformer's layers with work on the moments of every prefix of a
sequence of examples at once (:func:`prefix_moments`): least squares, k steps of GD, of iterative Newton, of
conjugate gradients and of L-BFGS (BFGS with unlimited memory), each returning the weights ŵ after every requested
number of steps; online GD runs along the sequence itself. Nothing loops over prompts or prefixes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from icl.config import finite_float, positive_int


def context_moments(X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ŝ: (..., d, d) and h: (..., d) of the context."""
    n = X.shape[-2]
    return X.mT @ X / n, (X.mT @ y.unsqueeze(-1)).squeeze(-1) / n


def zero(X: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
    """The zero estimator, ŷ = 0: the level any learner must beat. -> (...)."""
    return torch.zeros_like(x_query[..., 0])


def least_squares(X: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least squares, ŵ = X⁺ y = Ŝ⁺ h (:func:`least_squares_weights`; whatever n against d, unlike CUDA's
    lstsq, which assumes full rank). -> (...)."""
    return (least_squares_weights(*context_moments(X, y)) * x_query).sum(-1)


def nearest_neighbours(X: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor, neighbours: int = 3) -> torch.Tensor:
    """The mean label of the ``neighbours`` context inputs nearest to the query (all of them if fewer), Garg et al.'s
    k-NN baseline. -> (...)."""
    distances = (X - x_query.unsqueeze(-2)).square().sum(-1)  # (..., n)
    nearest = distances.topk(min(positive_int("neighbours", neighbours), X.shape[-2]), dim=-1, largest=False).indices
    return y.gather(-1, nearest).mean(-1)


def prefix_errors(
    predict: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], xs: torch.Tensor, ys: torch.Tensor
) -> torch.Tensor:
    """Squared errors of ``predict`` at every position of a sequence of examples, each fit on the examples before it
    (the zero estimator at position 0, with none): xs (B, K, d), ys (B, K) -> (B, K)."""
    columns = [ys[:, 0] ** 2]
    for k in range(1, xs.shape[-2]):
        columns.append((predict(xs[:, :k], ys[:, :k], xs[:, k]) - ys[:, k]) ** 2)
    return torch.stack(columns, dim=-1)


def ridge(X: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor, regularisation: float) -> torch.Tensor:
    """Ridge regression ŵ = (Ŝ + λ I)⁻¹ h with λ = ``regularisation`` > 0."""
    regularisation = finite_float("regularisation", regularisation, minimum=0.0, strict=True)
    second_moment, h = context_moments(X, y)
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
    second_moment, h = context_moments(X, y)
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


def gd_plus_plus(
    X: torch.Tensor,
    y: torch.Tensor,
    x_query: torch.Tensor,
    step_sizes: Sequence[float],
    gammas: Sequence[float],
) -> torch.Tensor:
    """K steps of von Oswald et al.'s GD++ (2023, App. A.10) from w = 0: what K (11)-form layers with
    P_k = [[b_k I, 0], [0, 1]], Q_k = −diag(η_k I, 0), a·b = γ n, compute (:mod:`icl.construct`).

    Step k (k = 1 … K) starts from the current covariates x^(k) (x^(1) = x, context and query) and the
    current labels r^(k) (r^(1) = y; the query's slot q^(1) = 0), and updates all of them at once:

    - labels: one GD step of size η_k on the current covariates, r_j ← r_j − η_k ⟨h_k, x_j^(k)⟩ and
      q ← q − η_k ⟨h_k, x_q^(k)⟩, with h_k = (1/n) Σ_i r_i x_i^(k);
    - covariates: x ← x − γ_k Σ_i x_i^(k) x_i^(k)ᵀ x for context and query (von Oswald's γ: no 1/n).

    ŷ = −q after K steps, so γ_K has no effect. Equivalently, preconditioned GD on the original x with
    the data-dependent A_k = η_k T_kᵀ T_k, where x^(k) = T_k x. X: (..., n, d), y: (..., n),
    x_query: (..., d); step_sizes, gammas: K numbers each -> (...).
    """
    etas = [finite_float(f"step_sizes[{k}]", eta) for k, eta in enumerate(step_sizes)]
    gammas = [finite_float(f"gammas[{k}]", gamma) for k, gamma in enumerate(gammas)]
    if not etas:
        raise ValueError("step_sizes must hold at least one step size")
    if len(gammas) != len(etas):
        raise ValueError(f"gammas must hold one value per step: got {len(gammas)} gammas for {len(etas)} step_sizes")
    n = X.shape[-2]
    labels, query_label = y, torch.zeros_like(x_query[..., 0])
    for eta, gamma in zip(etas, gammas, strict=True):
        h = (X.mT @ labels.unsqueeze(-1)).squeeze(-1) / n  # (..., d), on the current covariates
        labels = labels - eta * (X @ h.unsqueeze(-1)).squeeze(-1)
        query_label = query_label - eta * (x_query * h).sum(-1)
        gram = X.mT @ X  # (..., d, d): Σ_i x_i x_iᵀ, no 1/n (von Oswald's γ); symmetric
        X, x_query = X - gamma * X @ gram, x_query - gamma * (gram @ x_query.unsqueeze(-1)).squeeze(-1)
    return -query_label


def best_shared_step_size(
    predict: Callable[[float], torch.Tensor], targets: torch.Tensor, n_steps: int, *, scale: float = 1.0
) -> tuple[float, float]:
    """The step η minimising the MSE of ``n_steps`` GD-like steps that all use η, and that MSE.

    K steps of one size η from w = 0 (GD, preconditioned GD, GD++) predict ŷ(η) = Σ_{k=1}^{K} c_k η^k
    exactly: the residuals after k steps are polynomials of degree k in η. K evaluations at
    η = scale·(1 … K) give the c_k (one Vandermonde solve per prompt), a further evaluation checks the form,
    and the MSE is a polynomial of degree 2K whose real critical points are compared.
    ``predict(η)``: (B,) predictions on fixed prompts with targets (B,).
    """
    n_steps = positive_int("n_steps", n_steps)
    points = torch.tensor([scale * (k + 1) for k in range(n_steps)], dtype=torch.float64)
    # On the CPU, in float64: the (K, K) Vandermonde system lives there whatever the predictor's device.
    values = torch.stack([predict(p.item()).double().cpu() for p in points])  # (K, B)
    vandermonde = points[:, None] ** torch.arange(1, n_steps + 1, dtype=torch.float64)  # (K, K)
    coefficients = torch.linalg.solve(vandermonde, values)  # (K, B): c_1 … c_K per prompt
    check_at = scale * (n_steps + 0.5)
    expected = (check_at ** torch.arange(1, n_steps + 1, dtype=torch.float64))[:, None].mul(coefficients).sum(0)
    checked = predict(check_at).double().cpu()
    if not torch.allclose(checked, expected, rtol=1e-6, atol=1e-8 * expected.abs().max().item()):
        raise ValueError(f"the predictor is not a polynomial of degree {n_steps} in its step size")
    y = targets.double().cpu()
    # MSE(η) = E (Σ_k c_k η^k − y)², coefficients by powers of η: E y², −2 E c_k y, Σ_{j+k} E c_j c_k.
    polynomial = [0.0] * (2 * n_steps + 1)
    polynomial[0] = (y * y).mean().item()
    for k in range(n_steps):
        polynomial[k + 1] -= 2 * (coefficients[k] * y).mean().item()
        for j in range(n_steps):
            polynomial[j + k + 2] += (coefficients[j] * coefficients[k]).mean().item()
    loss = np.polynomial.Polynomial(polynomial)
    roots = loss.deriv().roots()
    real = roots[np.abs(roots.imag) <= 1e-9 * max(1.0, np.abs(roots).max())].real
    best = real[np.argmin(loss(real))]
    return float(best), float(loss(best))


def minimise_scalar(
    loss: Callable[[float], float], low: float, high: float, *, grid: int = 41, iterations: int = 40
) -> float:
    """The minimiser of ``loss`` on [low, high]: the best point of a grid, refined by golden-section search
    between its two neighbours (the grid guards against a local minimum elsewhere).

    For a baseline's parameter that :func:`best_shared_step_size` cannot fit exactly, because the predictor is not
    polynomial in it (GD++'s γ: fit η exactly for each γ, then search γ with this)."""
    points = [low + (high - low) * i / (grid - 1) for i in range(grid)]
    best = min(range(grid), key=lambda i: loss(points[i]))
    a, b = points[max(best - 1, 0)], points[min(best + 1, grid - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    return (a + b) / 2


# --- iterative solvers at every prefix (Fu et al. 2023) ------------------------------------------------------------


def prefix_moments(xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ŝ_t and h_t of the first t examples, for every position t = 0 … k − 1 of a sequence (position t predicts
    example t from the t before it; at t = 0 both are 0): xs (..., k, d), ys (..., k) -> (..., k, d, d), (..., k, d)."""
    outer = xs.unsqueeze(-1) * xs.unsqueeze(-2)  # (..., k, d, d)
    weighted = ys.unsqueeze(-1) * xs  # (..., k, d)
    counts = torch.arange(xs.shape[-2], dtype=xs.dtype, device=xs.device).clamp(min=1)
    S = torch.cat([torch.zeros_like(outer[..., :1, :, :]), outer.cumsum(-3)[..., :-1, :, :]], -3)
    h = torch.cat([torch.zeros_like(weighted[..., :1, :]), weighted.cumsum(-2)[..., :-1, :]], -2)
    return S / counts[:, None, None], h / counts[:, None]


def _steps(steps: Sequence[int]) -> list[int]:
    """Validated step counts: non-negative integers, in increasing order."""
    counts = [positive_int("steps", k, minimum=0) for k in steps]
    if not counts or counts != sorted(set(counts)):
        raise ValueError(f"steps must be a non-empty increasing sequence of step counts, got {list(steps)}")
    return counts


def least_squares_weights(second_moment: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The minimum-norm least-squares weights Ŝ⁺ h (pseudo-inverse by eigendecomposition; eigenvalues below
    d · ε · λ_max count as 0): (..., d, d), (..., d) -> (..., d)."""
    eigenvalues, vectors = torch.linalg.eigh(second_moment)
    floor = second_moment.shape[-1] * torch.finfo(eigenvalues.dtype).eps * eigenvalues.abs().amax(-1, keepdim=True)
    inverse = torch.where(eigenvalues > floor, 1 / eigenvalues.clamp(min=torch.finfo(eigenvalues.dtype).tiny), 0.0)
    return (vectors @ (inverse * (vectors.mT @ h.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1)).squeeze(-1)


def gd_weights(
    second_moment: torch.Tensor, h: torch.Tensor, steps: Sequence[int], step_size: float | None = None
) -> torch.Tensor:
    """GD on R(w) from w₀ = 0, w ← w − η(Ŝw − h), after each number of ``steps``: -> (len(steps), ..., d).

    ``step_size`` η is one number for every prompt, or None for η = 1/λ_max(Ŝ) per prompt (the largest step
    whose error shrinks monotonically in every direction; 0 where Ŝ = 0)."""
    counts = _steps(steps)
    if step_size is None:
        largest = torch.linalg.eigvalsh(second_moment)[..., -1]
        eta = torch.where(largest > 0, 1 / largest.clamp(min=torch.finfo(largest.dtype).tiny), 0.0).unsqueeze(-1)
    else:
        eta = finite_float("step_size", step_size, minimum=0.0, strict=True)
    w, out = torch.zeros_like(h), []
    for k in range(counts[-1] + 1):
        if k in counts:
            out.append(w)
        w = w - eta * ((second_moment @ w.unsqueeze(-1)).squeeze(-1) - h)
    return torch.stack(out)


def newton_weights(second_moment: torch.Tensor, h: torch.Tensor, steps: Sequence[int]) -> torch.Tensor:
    """Iterative Newton (Schulz's iteration for Ŝ⁺, Fu et al. 2023): M₀ = αŜ with α = 1/‖ŜŜᵀ‖_F,
    M_{k+1} = 2M_k − M_k Ŝ M_k, ŵ_k = M_k h, after each number of ``steps`` (0 is M₀): -> (len(steps), ..., d).

    The error I − M_kŜ squares at every step, so ŵ_k = (I − (I − αŜ²)^{2^k}) Ŝ⁺ h; it converges because
    αλ² ≤ 1 for every eigenvalue λ (‖Ŝ²‖_F ≥ λ_max²). The scale of Ŝ cancels: (1/n)-normalised moments give
    the same ŵ_k as XᵀX and Xᵀy. Where Ŝ = 0 (no examples), M = 0."""
    counts = _steps(steps)
    norm = torch.linalg.matrix_norm(second_moment @ second_moment.mT)
    alpha = torch.where(norm > 0, 1 / norm.clamp(min=torch.finfo(norm.dtype).tiny), 0.0)[..., None, None]
    M, out = alpha * second_moment, []
    for k in range(counts[-1] + 1):
        if k in counts:
            out.append((M @ h.unsqueeze(-1)).squeeze(-1))
        M = 2 * M - M @ second_moment @ M
    return torch.stack(out)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Inner products over the last axis, kept: (..., d), (..., d) -> (..., 1)."""
    return (a * b).sum(-1, keepdim=True)


def _rounding_floor(h: torch.Tensor) -> torch.Tensor:
    """The squared residual (or gradient) norm below which a solver from w = 0 stands still: 100 ε relative to h,
    rounding error. (..., d) -> (..., 1)."""
    return (100 * torch.finfo(h.dtype).eps) ** 2 * _dot(h, h)


def conjugate_gradient_weights(second_moment: torch.Tensor, h: torch.Tensor, steps: Sequence[int]) -> torch.Tensor:
    """Conjugate gradients on Ŝw = h from w₀ = 0, after each number of ``steps``: -> (len(steps), ..., d). In exact
    arithmetic it reaches the minimum-norm solution in at most rank(Ŝ) steps; a prompt whose residual has fallen to
    rounding error (100 ε relative to h) stays where it is."""
    counts = _steps(steps)
    w = torch.zeros_like(h)
    residual = h.clone()
    direction = residual.clone()
    out = []
    tiny, converged = torch.finfo(h.dtype).tiny, _rounding_floor(h)
    for k in range(counts[-1] + 1):
        if k in counts:
            out.append(w)
        rr = _dot(residual, residual)
        product = (second_moment @ direction.unsqueeze(-1)).squeeze(-1)
        curvature = _dot(direction, product)
        active = (curvature > 0) & (rr > converged)
        step = torch.where(active, rr / curvature.clamp(min=tiny), 0.0)
        w = w + step * direction
        residual = residual - step * product
        beta = torch.where(active, _dot(residual, residual) / rr.clamp(min=tiny), 0.0)
        direction = residual + beta * direction
    return torch.stack(out)


def lbfgs_weights(
    second_moment: torch.Tensor, h: torch.Tensor, steps: Sequence[int], memory: int | None = 5
) -> torch.Tensor:
    """L-BFGS on R(w) from w₀ = 0 with H₀ = I, the last ``memory`` curvature pairs (None: all of them, which is
    BFGS) and the exact line search of a quadratic, after each number of ``steps``: -> (len(steps), ..., d).

    On a strictly convex quadratic with exact line searches, BFGS and L-BFGS of any memory from H₀ = I take the
    conjugate-gradient iterates (Nocedal 1980), so in exact arithmetic this equals
    :func:`conjugate_gradient_weights`; ``tests/test_baselines.py`` checks it. A prompt whose gradient has fallen to
    rounding error (100 ε relative to h) stays where it is."""
    counts = _steps(steps)
    if memory is not None:
        memory = positive_int("memory", memory)
    tiny, converged = torch.finfo(h.dtype).tiny, _rounding_floor(h)
    w, gradient = torch.zeros_like(h), -h  # ∇R(w) = Ŝw − h
    pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (s, y, 1/yᵀs), oldest first
    out = []
    for k in range(counts[-1] + 1):
        if k in counts:
            out.append(w)
        q, alphas = gradient, []
        for s, y, rho in reversed(pairs):  # the two-loop recursion: direction = −H_k ∇R
            a = rho * _dot(s, q)
            q = q - a * y
            alphas.append(a)
        for (s, y, rho), a in zip(pairs, reversed(alphas), strict=True):
            q = q + (a - rho * _dot(y, q)) * s
        direction = -q
        product = (second_moment @ direction.unsqueeze(-1)).squeeze(-1)
        curvature = _dot(direction, product)
        active = (curvature > 0) & (_dot(gradient, gradient) > converged)
        step = torch.where(active, -_dot(gradient, direction) / curvature.clamp(min=tiny), 0.0)
        s, y = step * direction, step * product  # y = Ŝs: the change of the gradient
        ys = _dot(y, s)
        pairs.append((s, y, torch.where(ys > 0, 1 / ys.clamp(min=tiny), 0.0)))
        if memory is not None and len(pairs) > memory:
            pairs.pop(0)
        w, gradient = w + s, gradient + y
    return torch.stack(out)


def online_gd_weights(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Online GD along the sequence with Fu et al.'s step η_i = 1/‖x_i‖² (each example fitted exactly in turn, the
    Kaczmarz method), from w = 0: the weights before each example, xs (..., k, d), ys (..., k) -> (..., k, d)."""
    w, out = torch.zeros_like(xs[..., 0, :]), []
    for i in range(xs.shape[-2]):
        out.append(w)
        x = xs[..., i, :]
        w = w - ((w * x).sum(-1) - ys[..., i]).unsqueeze(-1) * x / (x * x).sum(-1, keepdim=True)
    return torch.stack(out, -2)


def iterative_newton(X: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor, n_steps: int) -> torch.Tensor:
    """ŷ after ``n_steps`` steps of iterative Newton on the context (:func:`newton_weights`). -> (...)."""
    second_moment, h = context_moments(X, y)
    return (newton_weights(second_moment, h, [n_steps])[0] * x_query).sum(-1)
