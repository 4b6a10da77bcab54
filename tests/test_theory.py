"""Closed forms against the papers' numbers, against Monte Carlo, and against their own optimality.

Monte Carlo: 2·10⁵ prompts in float64, tolerance k = 4 standard errors of the samples' own MSE; the
rival value (the loss of a 10 %-perturbed preconditioner) must fall outside that band.
"""

from __future__ import annotations

import doctest

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
