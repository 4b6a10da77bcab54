"""Closed forms against the papers' numbers, against Monte Carlo, and against their own optimality.

Monte Carlo: 2·10⁵ prompts in float64, tolerance k = 4 standard errors of the samples' own MSE; the
rival value (the loss of a 10 %-perturbed preconditioner) must fall outside that band.
"""

from __future__ import annotations

import doctest
import math

import pytest
import torch

from icl import baselines, evaluate, tasks, theory

F64 = torch.float64
AHN_SPECTRUM = torch.tensor([1.0, 1.0, 0.25, 0.0625, 1.0], dtype=F64)  # papers/README §1.8
K_SE = 4.0


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rotated(seed: int = 0) -> torch.Tensor:
    return tasks.covariance_from_spectrum(AHN_SPECTRUM, generator=gen(seed))


def test_isotropic_numbers() -> None:
    """Σ = I_5, n = 20: Γ* = n/(n + d + 1) I = 0.7692 I and f* = 1.1538."""
    gamma = theory.optimal_preconditioner(torch.eye(5), 20)
    assert gamma.dtype == F64
    torch.testing.assert_close(gamma, 20 / 26 * torch.eye(5, dtype=F64), rtol=1e-14, atol=1e-15)
    assert round(gamma[0, 0].item(), 4) == 0.7692
    assert round(theory.optimal_one_step_loss(torch.eye(5), 20).item(), 4) == 1.1538


def test_ahn_covariance_numbers() -> None:
    """Eigenvalues (1, 1, 1/4, 1/16, 1), n = 20: f* = 0.6818, eig Γ* = (0.8226 ×3, 2.3358, 4.3243)."""
    expected = torch.tensor([0.8226, 0.8226, 0.8226, 2.3358, 4.3243], dtype=F64)
    for covariance in (torch.diag(AHN_SPECTRUM), rotated(1)):
        assert round(theory.optimal_one_step_loss(covariance, 20).item(), 4) == 0.6818
        eigenvalues = torch.linalg.eigvalsh(theory.optimal_preconditioner(covariance, 20))
        torch.testing.assert_close(eigenvalues, expected, rtol=0, atol=5e-5)
    diagonal = torch.diagonal(theory.optimal_preconditioner(torch.diag(AHN_SPECTRUM), 20))
    torch.testing.assert_close(
        diagonal, torch.tensor([0.8226, 0.8226, 2.3358, 4.3243, 0.8226], dtype=F64), rtol=0, atol=5e-5
    )


def test_optimal_preconditioner_tends_to_the_inverse_covariance() -> None:
    covariance = rotated(2)
    inverse = torch.linalg.inv(covariance)
    errors = [
        evaluate.relative_error(theory.optimal_preconditioner(covariance, n), inverse).item() for n in (10, 100, 10**6)
    ]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4 and errors[0] > 0.2


def monte_carlo_one_step(A: torch.Tensor, covariance: torch.Tensor, n: int, seed: int) -> evaluate.LossEstimate:
    """MSE of ŷ = x_qᵀ A h over 4 × 50,000 fresh float64 prompts."""
    g = gen(seed)
    errors = []
    for _ in range(4):
        b = tasks.sample_regression(50_000, n, covariance, generator=g, dtype=F64)
        errors.append(baselines.preconditioned_gd(b.X, b.y, b.x_query, A) - b.y_query)
    errors = torch.cat(errors)
    return evaluate.mse(errors, torch.zeros_like(errors))


def test_one_step_loss_equals_monte_carlo_for_a_non_symmetric_preconditioner() -> None:
    n, covariance = 20, rotated(3)
    A = theory.optimal_preconditioner(covariance, n) + 0.3 * torch.randn(5, 5, generator=gen(4), dtype=F64)
    assert evaluate.asymmetry(A) > 0.1
    estimate = monte_carlo_one_step(A, covariance, n, seed=5)
    predicted = theory.one_step_loss(A, covariance, n).item()
    band = K_SE * estimate.standard_error.item()
    assert abs(estimate.mean.item() - predicted) <= band, (estimate, predicted)
    rival = theory.one_step_loss(1.1 * A, covariance, n).item()
    assert abs(estimate.mean.item() - rival) > band, (estimate, rival)


# --- Distribution shift (ZFB Sec. 4.2–4.3) -----------------------------------------------------------------------


def test_covariate_shift_is_the_paper_notes_formula() -> None:
    """With A = Γ⁻¹ from training (N, Λ) and test covariates x ~ N(0, Λ_t): tr[(Γ⁻¹Λ_t − I)ᵀ Λ_t (Γ⁻¹Λ_t − I)]
    + (1/M)[tr Λ_t tr(Λ_t Γ⁻¹ Λ_t Γ⁻¹) + tr(Λ_t Γ⁻¹ Λ_t Γ⁻¹ Λ_t)], an independent expression."""
    lam, shifted, N, M = rotated(1), rotated(2) * 1.7, 10, 15
    G = theory.optimal_preconditioner(lam, N)
    eye = torch.eye(5, dtype=F64)
    bias = G @ shifted - eye
    expected = (
        torch.trace(bias.T @ shifted @ bias)
        + (
            torch.trace(shifted) * torch.trace(shifted @ G @ shifted @ G)
            + torch.trace(shifted @ G @ shifted @ G @ shifted)
        )
        / M
    )
    torch.testing.assert_close(theory.one_step_loss(G, shifted, M), expected, rtol=1e-12, atol=0)


def test_covariate_scaling_limit() -> None:
    """x scaled by c at test time, N, M → ∞: ŷ → c²⟨w, x_q⟩, error (c² − 1)² c² tr Λ."""
    lam = torch.diag(torch.tensor([2.0, 1.0, 0.5], dtype=F64))
    for c in (0.25, 0.5, 2.0, 4.0):
        error = theory.one_step_loss(theory.optimal_preconditioner(lam, 10**9), c**2 * lam, 10**9).item()
        assert error == pytest.approx((c**2 - 1) ** 2 * c**2 * 3.5, rel=1e-6)


def test_shifted_one_step_loss_equals_monte_carlo_with_noise_and_a_query_shift() -> None:
    lam, query, n, sigma = rotated(3), rotated(4) * 0.6, 12, 0.7
    A = theory.optimal_preconditioner(lam, n) + 0.2 * torch.randn(5, 5, generator=gen(5), dtype=F64)
    g, errors = gen(6), []
    for _ in range(4):
        b = tasks.sample_regression(50_000, n, lam, generator=g, dtype=F64, noise_std=sigma)
        x_query = tasks.sample_regression(50_000, 1, query, generator=g, dtype=F64).x_query
        y_query = (b.w * x_query).sum(-1) + sigma * torch.randn(50_000, generator=g, dtype=F64)
        errors.append(baselines.preconditioned_gd(b.X, b.y, x_query, A) - y_query)
    estimate = evaluate.mse(torch.cat(errors), torch.zeros(200_000, dtype=F64))
    predicted = theory.one_step_loss(A, lam, n, query_covariance=query, noise_variance=sigma**2).item()
    band = K_SE * estimate.standard_error.item()
    assert abs(estimate.mean.item() - predicted) <= band, (estimate, predicted)
    without_noise = theory.one_step_loss(A, lam, n, query_covariance=query).item()
    assert abs(estimate.mean.item() - without_noise) > band


def test_least_squares_noise_error_equals_monte_carlo() -> None:
    lam, n, sigma = rotated(7), 20, 0.5
    b = tasks.sample_regression(200_000, n, lam, generator=gen(8), dtype=F64, noise_std=sigma)
    errors = baselines.least_squares(b.X, b.y, b.x_query) - b.y_query
    estimate = evaluate.mse(errors, torch.zeros_like(errors))
    predicted = theory.least_squares_noise_error(5, n, sigma**2)
    assert predicted == pytest.approx(0.25 * (1 + 5 / 14))
    assert abs(estimate.mean.item() - predicted) <= K_SE * estimate.standard_error.item(), (estimate, predicted)
    with pytest.raises(ValueError, match="n_context"):
        theory.least_squares_noise_error(5, 6, 1.0)


def test_random_diagonal_limit_equals_its_expectations() -> None:
    """(E[Γ_τ Λ_τ²])⁻¹ E[Λ_τ²] by Monte Carlo over Exp(1) spectra against the closed form."""
    d, N = 5, 20
    lam = torch.empty(2_000_000, d, dtype=F64).exponential_(generator=gen(9))
    gamma = (1 + 1 / N) * lam + lam.sum(-1, keepdim=True) / N
    estimate = (lam**2).mean(0) / (gamma * lam**2).mean(0)  # the matrices are diagonal
    assert (estimate - theory.random_diagonal_limit(d, N)).abs().max() < 0.003
    assert theory.random_diagonal_limit(d, N) == pytest.approx(2 * N / (6 * N + 2 * d + 10))


# --- R(M, N): error against prompt length (ZFB Thm 4.2) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("spectrum", "train", "test", "target"),
    [
        ((1.0,) * 5, 20, 20, 1.1538),
        ((1.0,) * 5, 20, 100, 0.4438),
        ((1.0, 1.0, 0.25, 0.0625, 1.0), 10, 40, 0.5783),
        ((3.0, 1.0, 0.5), 5, 5, 1.8571),
    ],
)
def test_prompt_length_error_paper_note_numbers(spectrum: tuple[float, ...], train: int, test: int, target: float):
    lam = torch.diag(torch.tensor(spectrum, dtype=F64))
    assert round(theory.prompt_length_error(lam, test, train).total.item(), 4) == target


def test_prompt_length_error_is_the_one_step_loss_of_gamma_inverse_at_the_test_length() -> None:
    """Two derivations: Thm 4.2's decomposition, and the Wishart formula of one_step_loss with n = M."""
    lam = rotated(7)
    for train in (3, 10, 80):
        for test in (1, 5, 40, 1000):
            expected = theory.one_step_loss(theory.optimal_preconditioner(lam, train), lam, test)
            torch.testing.assert_close(theory.prompt_length_error(lam, test, train).total, expected, rtol=1e-12, atol=0)


def test_prompt_length_error_isotropic_form_floor_and_broadcasting() -> None:
    d, tests, trains = 5, torch.tensor([2, 7, 50, 300]), torch.tensor([5, 20, 80])
    r = theory.prompt_length_error(torch.eye(d), tests[:, None], trains)
    assert r.total.shape == r.floor.shape == (4, 3)
    gamma = 1 + (d + 1) / trains.double()
    expected = d * (d + 1) / (tests[:, None] * gamma**2) + d * (d + 1) ** 2 / (trains**2 * gamma**2)
    torch.testing.assert_close(r.total, expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(r.floor[0], d * (d + 1) ** 2 / (trains**2 * gamma**2), rtol=1e-13, atol=0)
    # R(N, N) is the training optimum of the one-layer model
    same = theory.prompt_length_error(torch.eye(d), trains, trains).total
    torch.testing.assert_close(same, d * (d + 1) / (trains.double() + d + 1), rtol=1e-13, atol=0)


def test_prompt_length_error_equals_monte_carlo() -> None:
    lam, train, test = torch.diag(torch.tensor([2.0, 1.0, 1.0, 0.5, 0.25], dtype=F64)), 10, 40
    estimate = monte_carlo_one_step(theory.optimal_preconditioner(lam, train), lam, test, seed=11)
    predicted = theory.prompt_length_error(lam, test, train).total.item()
    band = K_SE * estimate.standard_error.item()
    assert abs(estimate.mean.item() - predicted) <= band, (estimate, predicted)
    # the rival: a model that keeps its training normaliser 1/N at test time predicts M/N times too much
    rival = theory.one_step_loss(test / train * theory.optimal_preconditioner(lam, train), lam, test).item()
    assert abs(estimate.mean.item() - rival) > band, (estimate, rival)


def test_corollary_4_3_bounds_the_error() -> None:
    lam = rotated(2)
    tests, trains = torch.tensor([5, 20, 200])[:, None], torch.tensor([5, 20, 80])
    bound, exact = theory.prompt_length_bound(lam, tests, trains), theory.prompt_length_error(lam, tests, trains)
    assert bound.total.shape == (3, 3)
    assert (exact.total <= bound.total).all() and (exact.floor <= bound.epsilon).all()
    assert (exact.test_term / tests <= bound.delta).all()
    # for Λ = I the bound's parts exceed R's by exactly γ² = (1 + (d + 1)/N)²
    iso, iso_bound = (
        theory.prompt_length_error(torch.eye(5), 7, trains),
        theory.prompt_length_bound(torch.eye(5), 7, trains),
    )
    torch.testing.assert_close(iso_bound.epsilon / iso.floor, (1 + 6 / trains.double()) ** 2, rtol=1e-13, atol=0)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_prompt_length_error_rejects_bad_lengths(bad: object) -> None:
    with pytest.raises(ValueError, match="test_context"):
        theory.prompt_length_error(torch.eye(3), bad, 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="train_context"):
        theory.prompt_length_error(torch.eye(3), 5, bad)  # type: ignore[arg-type]


def test_one_step_loss_of_zero_is_the_trace_and_of_batches() -> None:
    covariance = rotated(6)
    assert abs(theory.one_step_loss(torch.zeros(5, 5), covariance, 7).item() - torch.trace(covariance).item()) < 1e-12
    A = torch.randn(3, 5, 5, generator=gen(7), dtype=F64)
    batched = theory.one_step_loss(A, covariance, 7)
    assert batched.shape == (3,)
    for i in range(3):
        torch.testing.assert_close(batched[i], theory.one_step_loss(A[i], covariance, 7), rtol=1e-14, atol=0)


@pytest.mark.parametrize("n", [5, 20, 80])
def test_gamma_star_minimises_the_one_step_loss(n: int) -> None:
    covariance = rotated(8)
    gamma = theory.optimal_preconditioner(covariance, n).requires_grad_(True)
    loss = theory.one_step_loss(gamma, covariance, n)
    (gradient,) = torch.autograd.grad(loss, gamma)
    assert gradient.abs().max() < 1e-12
    torch.testing.assert_close(loss.detach(), theory.optimal_one_step_loss(covariance, n), rtol=1e-12, atol=0)
    g = gen(9)
    for _ in range(20):
        direction = torch.randn(5, 5, generator=g, dtype=F64)
        perturbed = theory.one_step_loss(gamma.detach() + 1e-3 * direction, covariance, n)
        assert perturbed > loss.detach()
    # Σ⁻¹, the naive answer, is strictly worse.
    assert theory.one_step_loss(torch.linalg.inv(covariance), covariance, n) > loss.detach() + 1e-3


def test_optimal_gd_step_size_minimises_the_loss_along_the_identity() -> None:
    covariance, n = rotated(10), 20
    eye = torch.eye(5, dtype=F64)
    step = theory.optimal_gd_step_size(covariance, n).item()
    grid = torch.linspace(0.01, 3.0, 30_000, dtype=F64)  # spacing 1e-4
    losses = theory.one_step_loss(grid[:, None, None] * eye, covariance, n)
    best = grid[losses.argmin()].item()
    assert abs(step - best) <= 1e-4
    assert theory.one_step_loss(step * eye, covariance, n) <= losses.min() + 1e-12
    # Plain GD is worse than the best preconditioner, and η* I is not Γ*.
    assert theory.one_step_loss(step * eye, covariance, n) > theory.optimal_one_step_loss(covariance, n) + 1e-3
    isotropic = theory.optimal_gd_step_size(torch.eye(5), 20).item()
    assert abs(isotropic - 20 / 26) < 1e-14  # on Σ = I, plain GD is the optimum


@pytest.mark.parametrize(
    "function", [theory.optimal_preconditioner, theory.optimal_one_step_loss, theory.optimal_gd_step_size]
)
def test_bad_input_names_the_parameter(function) -> None:
    with pytest.raises(ValueError, match="n_context"):
        function(torch.eye(3), 0)
    with pytest.raises(ValueError, match="n_context"):
        function(torch.eye(3), 2.5)
    with pytest.raises(ValueError, match="covariance"):
        function(torch.tensor([[1.0, 2.0], [2.0, 1.0]]), 5)
    with pytest.raises(ValueError, match="covariance"):
        function(torch.tensor([[1.0, 0.5], [0.0, 1.0]]), 5)


def test_one_step_loss_checks_its_covariance() -> None:
    with pytest.raises(ValueError, match="covariance"):
        theory.one_step_loss(torch.eye(2), -torch.eye(2), 5)


def test_docstring_examples() -> None:
    result = doctest.testmod(theory, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# --- L steps ------------------------------------------------------------------------------------------------------


def test_wishart_moments_match_known_closed_forms() -> None:
    """E tr W = nd, E tr W² = nd(n + d + 1), E tr W³ = nd(n² + d² + 3nd + 3n + 3d + 4) for W = XXᵀ."""
    for d, n in ((1, 1), (5, 20), (10, 3), (7, 7)):
        m = theory.wishart_trace_moments(d, n, 3)
        assert m[0] == d and m[1] == d
        assert m[2] * n**2 == n * d * (n + d + 1)
        assert m[3] * n**3 == n * d * (n * n + d * d + 3 * n * d + 3 * n + 3 * d + 4)


def test_wishart_moments_in_one_dimension_are_chi_square_moments() -> None:
    """d = 1: W ~ χ²_n, E W^k = n(n + 2)…(n + 2k − 2)."""
    n = 6
    m = theory.wishart_trace_moments(1, n, 8)
    for k in range(1, 9):
        assert m[k] * n**k == math.prod(n + 2 * i for i in range(k))


def test_wishart_moments_equal_monte_carlo() -> None:
    """d = 5, n = 20, k ≤ 8, 10⁵ float64 samples: within 4 standard errors at every k."""
    d, n, samples = 5, 20, 100_000
    X = torch.randn(samples, d, n, generator=gen(20), dtype=F64)
    eigenvalues = torch.linalg.eigvalsh(X @ X.mT / n)
    exact = theory.wishart_trace_moments(d, n, 8)
    for k in range(1, 9):
        traces = (eigenvalues**k).sum(-1)
        se = traces.std().item() / samples**0.5
        assert abs(traces.mean().item() - float(exact[k])) <= K_SE * se, k


@pytest.mark.parametrize(
    ("n_steps", "step_sizes", "loss"),
    [
        (1, [0.769], 1.154),
        (2, [0.515, 1.249], 0.361),
        (3, [0.422, 0.689, 1.714], 0.134),
        (4, [0.362, 0.521, 0.889], 0.055),  # the largest, 2.139, is checked to ±0.002 below
    ],
)
def test_optimal_multi_step_matches_the_papers_numbers(n_steps: int, step_sizes: list[float], loss: float) -> None:
    """Ahn et al. 2023, Thm 3 at d = 5, n = 20 (paper note's table; Fig. 2 shows ≈ 0.43, 0.69, 1.72 at L = 3)."""
    optimum = theory.optimal_multi_step(5, 20, n_steps)
    assert optimum.step_sizes.shape == (n_steps,)
    torch.testing.assert_close(
        optimum.step_sizes[: len(step_sizes)], torch.tensor(step_sizes, dtype=F64), atol=1e-3, rtol=0
    )
    assert abs(optimum.loss.item() - loss) < 1e-3
    if n_steps == 4:
        assert abs(optimum.step_sizes[3].item() - 2.14) < 2e-3
    assert abs(optimum.loss.item() - theory.multi_step_loss(optimum.step_sizes, 5, 20).item()) < 1e-10


def test_one_optimal_step_is_the_one_layer_optimum() -> None:
    for d, n in ((5, 20), (10, 7), (3, 100)):
        optimum = theory.optimal_multi_step(d, n, 1)
        assert abs(optimum.step_sizes.item() - n / (n + d + 1)) < 1e-12
        torch.testing.assert_close(optimum.loss, theory.optimal_one_step_loss(torch.eye(d), n), rtol=1e-12, atol=0)


def test_optimal_multi_step_is_a_minimum_and_order_free() -> None:
    optimum = theory.optimal_multi_step(5, 20, 3)
    steps = optimum.step_sizes
    assert abs(theory.multi_step_loss(steps.flip(0), 5, 20).item() - optimum.loss.item()) < 1e-12
    g = gen(21)
    for _ in range(30):
        perturbed = steps + 1e-3 * torch.randn(3, generator=g, dtype=F64)
        assert theory.multi_step_loss(perturbed, 5, 20) > optimum.loss
    assert theory.multi_step_loss(torch.zeros(3), 5, 20).item() == 5.0  # no step: the zero predictor, E y² = d


def test_multi_step_loss_equals_monte_carlo_on_a_rotated_covariance() -> None:
    """L = 3 steps preconditioned by a_ℓ Σ⁻¹ on x ~ N(0, Σ), w ~ N(0, Σ⁻¹): the whitened closed form holds."""
    covariance, n = rotated(22), 20
    steps = theory.optimal_multi_step(5, n, 3).step_sizes
    inverse = torch.linalg.inv(covariance)
    g = gen(23)
    errors = []
    for _ in range(4):
        b = tasks.sample_regression(50_000, n, covariance, generator=g, dtype=F64, task_prior="inverse_covariance")
        errors.append(
            baselines.preconditioned_gd(b.X, b.y, b.x_query, [a * inverse for a in steps], n_steps=3) - b.y_query
        )
    errors = torch.cat(errors)
    estimate = evaluate.mse(errors, torch.zeros_like(errors))
    band = K_SE * estimate.standard_error.item()
    assert abs(estimate.mean.item() - theory.multi_step_loss(steps, 5, n).item()) <= band, estimate
    assert abs(estimate.mean.item() - theory.multi_step_loss(1.1 * steps, 5, n).item()) > band


def test_looped_step_size() -> None:
    """L = 1 gives n/(n + d + 1); the looped loss is the multi-step loss with equal steps, and its minimum."""
    assert abs(theory.optimal_looped_step_size(10, 20, 1).step_sizes.item() - 20 / 31) < 1e-12
    for L in (2, 3, 5):
        looped = theory.optimal_looped_step_size(10, 20, L)
        a = looped.step_sizes[0].item()
        assert torch.all(looped.step_sizes == a)
        assert abs(theory.multi_step_loss(looped.step_sizes, 10, 20).item() - looped.loss.item()) < 1e-9
        for delta in (-1e-3, 1e-3):
            assert theory.multi_step_loss(torch.full((L,), a + delta), 10, 20) > looped.loss
        assert theory.optimal_multi_step(10, 20, L).loss < looped.loss  # untied steps do better


def test_multi_step_bad_input_names_the_parameter() -> None:
    with pytest.raises(ValueError, match="n_steps"):
        theory.optimal_multi_step(5, 20, 0)
    with pytest.raises(ValueError, match="dim"):
        theory.wishart_trace_moments(-1, 20, 2)
    with pytest.raises(ValueError, match="n_loops"):
        theory.optimal_looped_step_size(5, 20, 1.5)


# --- One GD step, i.i.d. coordinates ------------------------------------------------------------------------------


def test_iid_gd_step_reduces_to_the_gaussian_formula() -> None:
    """Gaussian coordinates (μ₄ = 3σ⁴) and Σ = σ² I: the general closed forms agree."""
    for variance, d, n in ((1.0, 5, 20), (0.3, 10, 7)):
        covariance = variance * torch.eye(d, dtype=F64)
        step = theory.iid_optimal_gd_step_size(d, n, variance, 3 * variance**2)
        assert abs(step - theory.optimal_gd_step_size(covariance, n).item()) < 1e-12
        expected = theory.one_step_loss(step * torch.eye(d, dtype=F64), covariance, n).item()
        assert abs(theory.iid_gd_step_loss(step, d, n, variance, 3 * variance**2) - expected) < 1e-12


def test_iid_gd_step_equals_monte_carlo_on_uniform_covariates() -> None:
    """von Oswald's x ~ U(−½, ½)^10, n = 10: η* = 6.06 and ½·MSE = 0.2062; Monte Carlo within 4 s.e."""
    d = n = 10
    variance, fourth = 1 / 12, 1 / 80
    step = theory.iid_optimal_gd_step_size(d, n, variance, fourth)
    loss = theory.iid_gd_step_loss(step, d, n, variance, fourth)
    assert round(step, 2) == 6.06 and round(loss / 2, 4) == 0.2062
    g = gen(30)
    b = tasks.sample_regression(
        200_000, n, torch.eye(d, dtype=F64) / 12, generator=g, covariate_law="uniform", dtype=F64
    )
    estimate = evaluate.mse(baselines.gd(b.X, b.y, b.x_query, step), b.y_query)
    band = K_SE * estimate.standard_error.item()
    assert abs(estimate.mean.item() - loss) <= band, estimate
    # Power: the Gaussian formula with the same variance (μ₄ = 3σ⁴ instead of 9σ⁴/5) is outside the band.
    assert abs(estimate.mean.item() - theory.iid_gd_step_loss(step, d, n, variance, 3 * variance**2)) > band


def test_looped_divergence_probability_is_the_fraction_of_prompts_that_diverge() -> None:
    """d = 10, n = 20, a* (L = 2) = 0.628: a few per cent of prompts (the paper note: 3.4 %); looping 60 times
    on those prompts blows the error up, and on the others shrinks it."""
    d, n = 10, 20
    a = theory.optimal_looped_step_size(d, n, 2).step_sizes[0].item()
    estimate = theory.looped_divergence_probability(d, n, a, n_samples=40_000, generator=gen(40))
    assert 0.025 < estimate.value < 0.045 and estimate.standard_error < 0.002
    X = torch.randn(5000, d, n, generator=gen(41), dtype=F64)
    eigenvalues = torch.linalg.eigvalsh(X @ X.mT / n)
    predicted = a * eigenvalues[:, -1] > 2
    growth = ((1 - a * eigenvalues) ** 120).sum(-1)  # ‖(I − aŜ)^60 w‖² / ‖w‖² summed over eigen-directions, E w_i² = 1
    assert (growth[~predicted] <= d).all()  # every factor |1 − aλ| ≤ 1: the error cannot grow
    assert growth[predicted].median() > 100 * d  # typically blown up after 60 loops
    assert abs(predicted.double().mean().item() - estimate.value) < 4 * (estimate.standard_error + 0.0026)
    assert theory.looped_divergence_probability(d, n, 0.1, n_samples=1000, generator=gen(42)).value == 0.0
    with pytest.raises(ValueError, match="n_samples"):
        theory.looped_divergence_probability(d, n, a, n_samples=0, generator=gen(43))


@pytest.mark.parametrize(("d", "n"), [(10, 20), (6, 4)])
def test_largest_eigenvalue_by_bartlett_has_the_law_of_direct_sampling(d: int, n: int) -> None:
    """Two-sample Kolmogorov–Smirnov against λ_max of X Xᵀ/n from Gaussian X (n ≥ d and n < d): at 20,000 draws
    each, the statistic exceeds 0.0195 with probability 0.1 %."""
    bartlett = theory.sample_largest_eigenvalue(d, n, 20_000, generator=gen(50)).sort().values
    X = torch.randn(20_000, d, n, generator=gen(51), dtype=F64)
    direct = torch.linalg.eigvalsh(X @ X.mT / n)[:, -1].sort().values
    grid = torch.cat([bartlett, direct])
    cdf = lambda sample: torch.searchsorted(sample, grid, right=True) / sample.numel()  # noqa: E731
    assert (cdf(bartlett) - cdf(direct)).abs().max() < 0.0195
    shifted = direct * 1.02  # power: a 2 % error in scale is caught
    assert (cdf(bartlett) - cdf(shifted.sort().values)).abs().max() > 0.0195


def test_largest_eigenvalue_sampler_is_reproducible_and_checks_its_input() -> None:
    a = theory.sample_largest_eigenvalue(4, 8, 1000, generator=gen(52))
    assert torch.equal(a, theory.sample_largest_eigenvalue(4, 8, 1000, generator=gen(52)))
    assert a.shape == (1000,) and a.dtype == F64 and (a > 0).all()
    with pytest.raises(ValueError, match="n_context"):
        theory.sample_largest_eigenvalue(4, 0, 10, generator=gen(53))


def test_looped_optimum_against_the_looped_model_by_monte_carlo() -> None:
    """The looped sparse model with A = a*·I (d = 10, n = 20, L = 3) on 10⁵ fresh prompts has the exact MSE of
    :func:`icl.theory.optimal_looped_step_size` within K_SE standard errors; at 0.8·a* it has the polynomial's value,
    which the test tells apart from the optimum."""
    from icl.models import LinearTransformer

    d, n, L = 10, 20, 3
    optimum = theory.optimal_looped_step_size(d, n, L)
    model = LinearTransformer(d, L, parameterisation="sparse", looped=True, generator=gen(60), dtype=F64)
    batch = tasks.sample_regression(100_000, n, torch.eye(d, dtype=F64), generator=gen(61), dtype=F64)
    for scale in (1.0, 0.8):
        with torch.no_grad():
            model.A.copy_(scale * optimum.step_sizes[0] * torch.eye(d, dtype=F64).reshape(model.A.shape))
        squared = (model.predict(batch.X, batch.y, batch.x_query) - batch.y_query) ** 2
        mean, se = squared.mean().item(), squared.std().item() / squared.numel() ** 0.5
        assert abs(mean - theory.looped_loss_polynomial(d, n, L)(scale * optimum.step_sizes[0].item())) <= K_SE * se
        assert (abs(mean - optimum.loss.item()) <= K_SE * se) == (scale == 1.0)  # power: 0.8·a* is told apart


def test_divergence_shares_count_the_draws_for_every_step_size() -> None:
    largest = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)
    shares, se = theory.divergence_shares(largest, torch.tensor([0.4, 0.6, 1.0], dtype=F64))
    torch.testing.assert_close(shares, torch.tensor([0.0, 0.25, 0.5], dtype=F64))  # a·λ > 2: λ > 5, 3.33, 2
    torch.testing.assert_close(se, (shares * (1 - shares) / 4).sqrt())
