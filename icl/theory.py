"""Closed forms from the papers, in the canonical convention (MSE without ½; papers/README §1).

Shapes: ``covariance`` Σ: (d, d) symmetric positive definite; ``n_context`` n: context length.
Computed in float64.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import torch

from icl.config import finite_float, positive_int
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


def one_step_loss(
    preconditioner: torch.Tensor,
    covariance: torch.Tensor,
    n_context: int,
    *,
    query_covariance: torch.Tensor | None = None,
    noise_variance: float = 0.0,
) -> torch.Tensor:
    """Population MSE of one preconditioned GD step from w = 0, ŷ = x_qᵀ A h with h = (1/n) Σ y_i x_i, on context
    covariates x_i ~ N(0, Σ), w ~ N(0, I_d), y = ⟨w, x⟩ + ε with Var ε = σ² (``noise_variance``, labels of the
    context and of the query alike), and the query x_q ~ N(0, Σ_q) (``query_covariance``; default Σ):

    f(A) = tr(Σ_q [A S Aᵀ − AΣ − ΣAᵀ + I]) + σ² [1 + tr(AᵀΣ_q AΣ) / n],   S = E hhᵀ = (1 + 1/n) Σ² + (tr Σ / n) Σ,

    from the Wishart identity E[Ŝ M Ŝ] = (1 + 1/n) Σ M Σ + (1/n) tr(MΣ) Σ. With Σ_q = Σ and σ = 0 it is
    tr Σ − 2 tr(AΣ²) + (1 + 1/n) tr(AᵀΣAΣ²) + (1/n) tr(AᵀΣAΣ) tr Σ. A covariate shift at test time (Zhang, Frei,
    Bartlett 2023, Sec. 4.2) is ``covariance = query_covariance = Σ_test`` with A trained elsewhere.
    preconditioner: (..., d, d) -> (...).
    """
    covariance, n = _prepare(covariance, n_context)
    query = covariance if query_covariance is None else check_covariance(torch.as_tensor(query_covariance))
    query = query.to(torch.float64)
    noise_variance = finite_float("noise_variance", noise_variance, minimum=0.0)
    A = torch.as_tensor(preconditioner).to(torch.float64)
    eye = torch.eye(covariance.shape[0], dtype=torch.float64, device=covariance.device)
    second = (1 + 1 / n) * covariance @ covariance + torch.trace(covariance) / n * covariance  # S
    trace = lambda M: torch.diagonal(M, dim1=-2, dim2=-1).sum(-1)  # noqa: E731
    error = A @ second @ A.mT - A @ covariance - covariance @ A.mT + eye
    noise = noise_variance * (1 + trace(A.mT @ query @ A @ covariance) / n)
    return trace(query @ error) + noise


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


# --- Error against prompt length (Zhang, Frei, Bartlett 2023, Thm 4.2 and Cor. 4.3) ------------------------------


class PromptLengthError(NamedTuple):
    """R(M, N) = test_term / M + train_term / N², each (...) for M (...) broadcast against N (...); test_term and
    train_term depend on N only."""

    total: torch.Tensor  # R(M, N)
    test_term: torch.Tensor  # the coefficient of 1/M: tr Λ · tr(Γ⁻²Λ²) + tr(Γ⁻²Λ³)
    train_term: torch.Tensor  # the coefficient of 1/N²: tr(Γ⁻²Λ³) + 2 tr Λ · tr(Γ⁻²Λ²) + (tr Λ)² tr(Γ⁻²Λ)
    floor: torch.Tensor  # lim_{M → ∞} R(M, N) = train_term / N²: what longer test prompts never remove


def prompt_length_error(
    covariance: torch.Tensor, test_context: int | torch.Tensor, train_context: int | torch.Tensor
) -> PromptLengthError:
    """MSE of the trained one-layer LSA (preconditioner Γ⁻¹ of training length N) on test prompts of M examples,
    on x ~ N(0, Λ), w ~ N(0, I_d), noiseless (Zhang, Frei, Bartlett 2023, Thm 4.2, averaged over w):

    R(M, N) = (1/M) [tr Λ tr(Γ⁻²Λ²) + tr(Γ⁻²Λ³)] + (1/N²) [tr(Γ⁻²Λ³) + 2 tr Λ tr(Γ⁻²Λ²) + (tr Λ)² tr(Γ⁻²Λ)],

    Γ = (1 + 1/N) Λ + (tr Λ / N) I. The predictor normalises by the test prompt's own 1/M. ``test_context`` M and
    ``train_context`` N are integers or integer tensors of broadcastable shapes (...).

    >>> round(prompt_length_error(torch.eye(5), 100, 20).total.item(), 4)
    0.4438
    """
    lam = check_covariance(torch.as_tensor(covariance)).to(torch.float64)
    M = _context_tensor("test_context", test_context, lam.device)
    N = _context_tensor("train_context", train_context, lam.device)
    M, N = torch.broadcast_tensors(M, N)
    eigenvalues = torch.linalg.eigvalsh(lam)  # Γ is a polynomial in Λ: traces are sums over Λ's eigenvalues
    trace = eigenvalues.sum()
    g = (1 + 1 / N[..., None]) * eigenvalues + trace / N[..., None]  # (..., d): Γ's eigenvalues
    moment = lambda k: (eigenvalues**k / g**2).sum(-1)  # noqa: E731  tr(Γ⁻² Λᵏ)
    test_term = trace * moment(2) + moment(3)
    train_term = moment(3) + 2 * trace * moment(2) + trace**2 * moment(1)
    floor = train_term / N**2
    return PromptLengthError(test_term / M + floor, test_term, train_term, floor)


class PromptLengthBound(NamedTuple):
    """Cor. 4.3's bound ε + δ on R(M, N), each (...)."""

    total: torch.Tensor
    epsilon: torch.Tensor  # (1 + 2d + d²κ) tr Λ / N², which bounds the floor b(N)/N²
    delta: torch.Tensor  # (d + 1) tr Λ / M, which bounds the 1/M term


def prompt_length_bound(
    covariance: torch.Tensor, test_context: int | torch.Tensor, train_context: int | torch.Tensor
) -> PromptLengthBound:
    """Cor. 4.3 (Zhang, Frei, Bartlett 2023): R(M, N) ≤ ε + δ with ε = (1 + 2d + d²κ) tr Λ / N² and
    δ = (d + 1) tr Λ / M, κ = cond(Λ). M and N broadcast as in :func:`prompt_length_error`."""
    lam = check_covariance(torch.as_tensor(covariance)).to(torch.float64)
    M = _context_tensor("test_context", test_context, lam.device)
    N = _context_tensor("train_context", train_context, lam.device)
    M, N = torch.broadcast_tensors(M, N)
    eigenvalues = torch.linalg.eigvalsh(lam)
    d, trace, kappa = lam.shape[0], eigenvalues.sum(), eigenvalues[-1] / eigenvalues[0]
    epsilon = (1 + 2 * d + d**2 * kappa) * trace / N**2
    delta = (d + 1) * trace / M
    return PromptLengthBound(epsilon + delta, epsilon, delta)


def _context_tensor(name: str, value: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    values = torch.as_tensor(value, device=device)
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool or (values < 1).any():
        raise ValueError(f"{name} must be integers >= 1, got {value!r}")
    return values.to(torch.float64)


# --- Distribution shift (Zhang, Frei, Bartlett 2023, Sec. 4.2–4.3) ----------------------------------------------


def least_squares_noise_error(dim: int, n_context: int, noise_variance: float) -> float:
    """MSE of least squares on n > d + 1 noisy Gaussian examples, query and labels alike noisy:
    σ² (1 + d / (n − d − 1)), for any covariance and any w (E (XᵀX)⁻¹ = Σ⁻¹ / (n − d − 1), inverse Wishart)."""
    d, n = positive_int("dim", dim), positive_int("n_context", n_context)
    if n <= d + 1:
        raise ValueError(f"n_context must exceed dim + 1 = {d + 1} for a finite error, got {n}")
    return finite_float("noise_variance", noise_variance, minimum=0.0) * (1 + d / (n - d - 1))


def random_diagonal_limit(dim: int, n_context: int, moments: tuple[float, float, float] = (1.0, 2.0, 6.0)) -> float:
    """The limit uU → a·I of gradient flow when every prompt has its own Λ_τ = diag(λ_τ), λ_τ with i.i.d. entries
    of moments E λ, E λ², E λ³ = ``moments`` (Exp(1): 1, 2, 6) (Zhang, Frei, Bartlett 2023, Thm 4.5: the limit is
    (E[Γ_τ Λ_τ²])⁻¹ E[Λ_τ²], Γ_τ = (1 + 1/N) Λ_τ + (tr Λ_τ / N) I):

    a = m₂ / ((1 + 1/N) m₃ + (m₃ + (d − 1) m₁ m₂) / N).

    >>> round(random_diagonal_limit(5, 20), 4)  # 2N / (6N + 2d + 10) for Exp(1)
    0.2857
    """
    d, n = positive_int("dim", dim), positive_int("n_context", n_context)
    m1, m2, m3 = (finite_float(f"moments[{i}]", m, minimum=0.0, strict=True) for i, m in enumerate(moments))
    return m2 / ((1 + 1 / n) * m3 + (m3 + (d - 1) * m1 * m2) / n)


# --- L steps: exact Wishart moments -------------------------------------------------------------------------------


def _wishart_power_sum_moment(powers: tuple[int, ...], dim: int, n_context: int) -> int:
    """E Π_r tr W^{k_r} for W = X Xᵀ, X a (d, n) matrix of i.i.d. N(0, 1): an exact integer.

    From Stein's identity E[X_ij g(X)] = E[∂g/∂X_ij] applied to tr W^k = Σ_ij X_ij (Xᵀ W^{k−1})_ji,
    with F = Π_{r>1} tr W^{j_r}:

        E[tr W^k F] = (n + k − 1) E[tr W^{k−1} F] + Σ_{m=1}^{k−1} E[tr W^m tr W^{k−1−m} F]
                      + Σ_r 2 j_r E[tr W^{k+j_r−1} F / tr W^{j_r}],

    with tr W⁰ = d. Every term has total power one less, so the recursion ends at the constant 1.
    ``powers`` must be sorted and positive.
    """
    return _moment(powers, dim, n_context, {})


def _moment(powers: tuple[int, ...], d: int, n: int, memo: dict[tuple[int, ...], int]) -> int:
    if not powers:
        return 1
    if powers in memo:
        return memo[powers]

    def term(parts: list[int]) -> int:
        zeros = sum(1 for p in parts if p == 0)
        return d**zeros * _moment(tuple(sorted(p for p in parts if p > 0)), d, n, memo)

    k, rest = powers[-1], list(powers[:-1])  # peel the largest power
    total = (n + k - 1) * term([k - 1, *rest])
    total += sum(term([m, k - 1 - m, *rest]) for m in range(1, k))
    total += sum(2 * j * term([k + j - 1, *rest[:r], *rest[r + 1 :]]) for r, j in enumerate(rest))
    memo[powers] = total
    return total


def wishart_trace_moments(dim: int, n_context: int, max_power: int) -> list[Fraction]:
    """m_k = E tr Ŝ^k for k = 0 … ``max_power``, exactly, where Ŝ = (1/n) Σ_{i≤n} x_i x_iᵀ, x_i ~ N(0, I_d).

    m₀ = d, m₁ = d, m₂ = d (n + d + 1)/n. On whitened data (x ~ N(0, Σ), w ~ N(0, Σ⁻¹)) the loss of
    L steps of GD preconditioned by multiples of Σ⁻¹ depends on these moments only (k ≤ 2L).

    >>> [str(m) for m in wishart_trace_moments(5, 20, 2)]
    ['5', '5', '13/2']
    """
    d, n = positive_int("dim", dim), positive_int("n_context", n_context)
    max_power = positive_int("max_power", max_power, minimum=0)
    memo: dict[tuple[int, ...], int] = {}
    return [Fraction(d)] + [Fraction(_moment((k,), d, n, memo), n**k) for k in range(1, max_power + 1)]


def _polynomial_from_step_sizes(step_sizes: torch.Tensor) -> list[float]:
    """Coefficients c₀ … c_L (c₀ = 1) of p(λ) = Π_ℓ (1 − a_ℓ λ)."""
    coefficients = [1.0]
    for a in step_sizes.tolist():
        coefficients = [c - a * (coefficients[i - 1] if i else 0.0) for i, c in enumerate([*coefficients, 0.0])]
    return coefficients


def multi_step_loss(step_sizes: torch.Tensor, dim: int, n_context: int) -> torch.Tensor:
    """MSE of L steps of GD preconditioned by A_ℓ = a_ℓ Σ⁻¹ from w = 0, on x ~ N(0, Σ), w ~ N(0, Σ⁻¹),
    noiseless: E tr p(Ŝ)² with p(λ) = Π_ℓ (1 − a_ℓ λ) and Ŝ the whitened sample covariance.

    step_sizes: (L,) -> () float64. The order of the steps does not matter (Ahn et al. 2023, Lemma B.4).
    """
    step_sizes = torch.as_tensor(step_sizes, dtype=torch.float64).reshape(-1)
    p = _polynomial_from_step_sizes(step_sizes)
    square = [
        sum(p[i] * p[k - i] for i in range(max(0, k - len(p) + 1), min(k, len(p) - 1) + 1))
        for k in range(2 * len(p) - 1)
    ]
    moments = wishart_trace_moments(dim, n_context, len(square) - 1)
    return torch.tensor(sum(c * float(m) for c, m in zip(square, moments, strict=True)), dtype=torch.float64)


class MultiStepOptimum(NamedTuple):
    """The best L steps of GD preconditioned by multiples of Σ⁻¹ (whitened data)."""

    step_sizes: torch.Tensor  # (L,) a_ℓ, ascending; any order of the layers is optimal
    loss: torch.Tensor  # () the MSE d − gᵀ H⁻¹ g


def optimal_multi_step(dim: int, n_context: int, n_steps: int) -> MultiStepOptimum:
    """The step sizes a_ℓ minimising :func:`multi_step_loss` (Ahn et al. 2023, Thm 3 made computable).

    Write p(λ) = 1 + Σ_{j=1}^{L} c_j λ^j. The loss d + 2 Σ_j c_j m_j + Σ_{jk} c_j c_k m_{j+k} is a
    quadratic in c, minimised by c* = −H⁻¹ g with H_jk = m_{j+k}, g_j = m_j (solved exactly, in
    rationals); the a_ℓ are the reciprocals of the roots of p. For L = 1 this is a = n/(n + d + 1).

    >>> optimum = optimal_multi_step(5, 20, 3)
    >>> [round(a, 3) for a in optimum.step_sizes.tolist()], round(optimum.loss.item(), 3)
    ([0.422, 0.689, 1.714], 0.134)
    """
    L = positive_int("n_steps", n_steps)
    m = wishart_trace_moments(dim, n_context, 2 * L)
    H = [[m[j + k] for k in range(1, L + 1)] for j in range(1, L + 1)]
    g = [m[j] for j in range(1, L + 1)]
    c = _solve_exact(H, [-x for x in g])
    loss = m[0] + sum(ci * gi for ci, gi in zip(c, g, strict=True))  # d − gᵀH⁻¹g, as c = −H⁻¹g
    roots = np.roots([float(x) for x in reversed([Fraction(1), *c])])
    if np.abs(roots.imag).max() > 1e-9 * np.abs(roots).max() or (roots.real <= 0).any():
        raise ArithmeticError(f"the optimal polynomial's roots are not real and positive: {roots}")
    step_sizes = np.sort(1.0 / roots.real)
    return MultiStepOptimum(
        torch.tensor(step_sizes, dtype=torch.float64), torch.tensor(float(loss), dtype=torch.float64)
    )


def _solve_exact(matrix: list[list[Fraction]], rhs: list[Fraction]) -> list[Fraction]:
    """Gaussian elimination in rationals (H is a Hankel moment matrix: positive definite, ill-conditioned)."""
    size = len(rhs)
    rows = [[*row, b] for row, b in zip(matrix, rhs, strict=True)]
    for col in range(size):
        pivot = next(r for r in range(col, size) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(size):
            if r != col and rows[r][col] != 0:
                factor = rows[r][col] / rows[col][col]
                rows[r] = [x - factor * y for x, y in zip(rows[r], rows[col], strict=True)]
    return [rows[i][size] / rows[i][i] for i in range(size)]


def looped_loss_polynomial(dim: int, n_context: int, n_loops: int) -> np.polynomial.Polynomial:
    """The MSE of ``n_loops`` steps of GD with one shared preconditioner a Σ⁻¹ as a polynomial in a:
    E tr (I − a Ŝ)^{2L} = Σ_k C(2L, k) (−a)^k m_k on whitened data (a weight-tied, looped model with u = 0)."""
    L = positive_int("n_loops", n_loops)
    m = wishart_trace_moments(dim, n_context, 2 * L)
    return np.polynomial.Polynomial([float(math.comb(2 * L, k) * (-1) ** k * m[k]) for k in range(2 * L + 1)])


def optimal_looped_step_size(dim: int, n_context: int, n_loops: int) -> MultiStepOptimum:
    """The best shared step a* of :func:`looped_loss_polynomial` (Gatmiry et al. 2024), and its loss.

    The loss is a convex polynomial in a (an expectation of even powers of affine functions), so a*
    is the one real root of its derivative. For L = 1 it is n/(n + d + 1).

    >>> round(optimal_looped_step_size(10, 20, 2).step_sizes[0].item(), 3)
    0.628
    """
    polynomial = looped_loss_polynomial(dim, n_context, n_loops)
    critical = polynomial.deriv().roots()
    real = critical[np.abs(critical.imag) <= 1e-9 * max(1.0, np.abs(critical).max())].real
    best = real[np.argmin(polynomial(real))]
    return MultiStepOptimum(
        torch.full((n_loops,), float(best), dtype=torch.float64),
        torch.tensor(float(polynomial(best)), dtype=torch.float64),
    )


# --- One GD step on covariates with i.i.d. coordinates (von Oswald et al. 2023) -----------------------------------


def _iid_second_trace(dim: int, n_context: int, variance: float, fourth_moment: float) -> float:
    """E tr Ŝ² for x with i.i.d. coordinates of variance σ² and fourth moment μ₄:
    (1/n)(d μ₄ + d(d − 1) σ⁴) + (1 − 1/n) d σ⁴."""
    d, n = positive_int("dim", dim), positive_int("n_context", n_context)
    variance = finite_float("variance", variance, minimum=0.0, strict=True)
    fourth_moment = finite_float("fourth_moment", fourth_moment, minimum=variance**2)
    return (d * fourth_moment + d * (d - 1) * variance**2) / n + (1 - 1 / n) * d * variance**2


def iid_gd_step_loss(step_size: float, dim: int, n_context: int, variance: float, fourth_moment: float) -> float:
    """MSE of one plain GD step w = η h from w = 0 on x with i.i.d. coordinates (variance σ², fourth moment μ₄),
    w ~ N(0, I_d), noiseless: σ² (d − 2η d σ² + η² E tr Ŝ²). Any law of the coordinates, not only Gaussian."""
    step_size = finite_float("step_size", step_size)
    second = _iid_second_trace(dim, n_context, variance, fourth_moment)
    return variance * (dim - 2 * step_size * dim * variance + step_size**2 * second)


def iid_optimal_gd_step_size(dim: int, n_context: int, variance: float, fourth_moment: float) -> float:
    """η* = d σ² / E tr Ŝ², the minimiser of :func:`iid_gd_step_loss`.

    For von Oswald et al.'s x ~ U(−½, ½)^10 (σ² = 1/12, μ₄ = 1/80) and n = 10: η* = 6.06, ½·MSE = 0.2062.

    >>> round(iid_optimal_gd_step_size(10, 10, 1 / 12, 1 / 80), 2)
    6.06
    """
    return dim * variance / _iid_second_trace(dim, n_context, variance, fourth_moment)


class Probability(NamedTuple):
    """A Monte Carlo probability and its standard error √(p(1 − p)/N)."""

    value: float
    standard_error: float


def sample_largest_eigenvalue(dim: int, n_context: int, n_samples: int, *, generator: torch.Generator) -> torch.Tensor:
    """λ_max(Ŝ) for ``n_samples`` whitened sample covariances Ŝ = X Xᵀ/n of n points in d dimensions: (n_samples,).

    Drawn through Bartlett's decomposition, so the cost does not grow with n: the nonzero eigenvalues of
    X Xᵀ (d×d) and Xᵀ X (n×n) agree, and with p = min(d, n), m = max(d, n) the p×p matrix is Wishart_p(m, I) =
    T Tᵀ with T lower triangular, T_ii² ~ χ²_{m−i} (i = 0 … p−1) and T_ij ~ N(0, 1) below the diagonal.
    The draws come from a NumPy generator seeded from ``generator`` (NumPy has χ² variates, torch has none
    that take a generator); float64, on the CPU.
    """
    d, n = positive_int("dim", dim), positive_int("n_context", n_context)
    n_samples = positive_int("n_samples", n_samples)
    p, m = min(d, n), max(d, n)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    sampler = np.random.default_rng(seed)
    largest = []
    rows, cols = np.tril_indices(p, -1)
    for start in range(0, n_samples, 100_000):
        size = min(100_000, n_samples - start)
        T = np.zeros((size, p, p))
        T[:, np.arange(p), np.arange(p)] = np.sqrt(sampler.chisquare(m - np.arange(p), size=(size, p)))
        T[:, rows, cols] = sampler.standard_normal((size, len(rows)))
        T = torch.from_numpy(T)
        largest.append(torch.linalg.eigvalsh(T @ T.mT)[:, -1] / n)
    return torch.cat(largest)


def looped_divergence_probability(
    dim: int, n_context: int, step_size: float, *, n_samples: int, generator: torch.Generator
) -> Probability:
    """P(a · λ_max(Ŝ) > 2) for the whitened sample covariance Ŝ of n points in d dimensions, by Monte Carlo.

    L loops of GD with the shared preconditioner a Σ⁻¹ multiply the whitened error by (I − a Ŝ)^L, so
    looping on at test time diverges on exactly the prompts whose largest |1 − a λ| exceeds 1, i.e.
    a λ_max(Ŝ) > 2 (Gatmiry et al. 2024's test-time looping). λ_max has no simple law, hence sampling:
    ``n_samples`` draws of :func:`sample_largest_eigenvalue` from ``generator``.
    """
    step_size = finite_float("step_size", step_size, minimum=0.0)
    largest = sample_largest_eigenvalue(dim, n_context, n_samples, generator=generator)
    value, standard_error = divergence_shares(largest, torch.tensor([step_size], dtype=torch.float64))
    return Probability(value.item(), standard_error.item())


def divergence_shares(largest: torch.Tensor, step_sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For every step size a, the share of the draws ``largest`` (N,) of λ_max(Ŝ) with a·λ_max > 2 and its binomial
    standard error √(p(1 − p)/N): 2 × (A,), on one set of draws (common random numbers across the step sizes)."""
    shares = (step_sizes.double().cpu()[:, None] * largest.double().cpu() > 2).double().mean(-1)
    return shares, (shares * (1 - shares) / largest.numel()).sqrt()
