"""Matrix sensing and GD / ScaledGD / PrecGD (icl.matrix_sensing) against closed forms and autograd."""

from __future__ import annotations

import pytest
import torch

from icl import matrix_sensing as ms


def problem(noise_std: float = 0.0, m: int = 60, seed: int = 0) -> ms.SensingProblem:
    return ms.sample_problem(3, 6, m, (1.0, 0.3), noise_std=noise_std, generator=torch.Generator().manual_seed(seed))


def test_the_problem_has_its_shapes_and_rank() -> None:
    p = problem()
    assert p.sensing.shape == (3, 60, 6, 6) and p.measurements.shape == (3, 60) and p.factor.shape == (3, 6, 2)
    torch.testing.assert_close(p.sensing, p.sensing.mT)  # symmetric
    eigenvalues = torch.linalg.eigvalsh(p.truth)  # ascending
    torch.testing.assert_close(eigenvalues[:, -2:], torch.tensor([0.09, 1.0], dtype=torch.float64).expand(3, 2))
    torch.testing.assert_close(eigenvalues[:, :-2], torch.zeros(3, 4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(p.measurements, ms.measure(p.sensing, p.truth))  # noiseless


def test_the_loss_is_the_squared_distance_in_expectation() -> None:
    """E f(X) = ‖XXᵀ − M*‖²_F + σ² over the sensing matrices and the noise: one instance with many measurements,
    within 5 standard errors."""
    p = ms.sample_problem(1, 5, 200_000, (1.0,), noise_std=0.3, generator=torch.Generator().manual_seed(1))
    X = torch.randn(1, 5, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    residual = ms.measure(p.sensing, X @ X.mT) - p.measurements
    expected = torch.linalg.matrix_norm(X @ X.mT - p.truth).pow(2) + 0.09
    loss, _ = ms.loss_and_gradient(p, X)
    standard_error = residual.pow(2).std() / 200_000**0.5
    assert abs(loss.item() - expected.item()) < 5 * standard_error.item()


def test_the_gradient_is_autograds() -> None:
    p = problem(noise_std=0.1)
    X = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64, requires_grad=True)
    loss, gradient = ms.loss_and_gradient(p, X.detach())
    (reference,) = torch.autograd.grad((ms.measure(p.sensing, X @ X.mT) - p.measurements).pow(2).mean(-1).sum(), X)
    torch.testing.assert_close(gradient, reference)


def test_each_method_takes_its_own_step() -> None:
    """One step from X: GD is X − α∇f; ScaledGD X − α∇f (XᵀX)⁻¹ (XᵀX invertible here); PrecGD with η is
    X − α∇f (XᵀX + ηI)⁻¹, and with η = √f uses the loss's root."""
    p = problem()
    X = ms.initial_factor(p, 3, scale=0.1, generator=torch.Generator().manual_seed(4))
    loss, gradient = ms.loss_and_gradient(p, X)
    gram, eye = X.mT @ X, torch.eye(3, dtype=torch.float64)
    after = {
        "gd": X - 0.1 * gradient,
        "scaled_gd": X - 0.1 * gradient @ torch.linalg.inv(gram),
        "prec_gd": X - 0.1 * gradient @ torch.linalg.inv(gram + loss.sqrt()[:, None, None] * eye),
    }
    for method, expected in after.items():
        run = ms.solve(p, X, method, step_size=0.1, steps=1)
        torch.testing.assert_close(run.relative_error[1], ms.relative_error(p, expected), msg=method)
    fixed = ms.solve(p, X, "prec_gd", step_size=0.1, steps=1, damping=0.5)
    expected = X - 0.1 * gradient @ torch.linalg.inv(gram + 0.5 * eye)
    torch.testing.assert_close(fixed.relative_error[1], ms.relative_error(p, expected))
    assert torch.equal(fixed.damping[0], torch.full((3,), 0.5))
    torch.testing.assert_close(ms.solve(p, X, "prec_gd", step_size=0.1, steps=1).damping[0], loss.sqrt())


def test_precgd_converges_linearly_where_gd_does_not() -> None:
    """The chapter's claim on a small problem: over-parameterised (r = 4 > r* = 2), PrecGD reaches 1e-10 within 300
    iterations and GD does not."""
    p = ms.sample_problem(2, 8, 160, (1.0, 0.3), generator=torch.Generator().manual_seed(5))
    X = ms.initial_factor(p, 4, scale=0.02, generator=torch.Generator().manual_seed(6))
    prec = ms.solve(p, X, "prec_gd", step_size=0.1, steps=300).relative_error
    gd = ms.solve(p, X, "gd", step_size=0.1, steps=300).relative_error
    assert prec[-1].max() < 1e-10 < gd[-1].min()


def test_first_below_and_the_loglog_slope() -> None:
    k = torch.arange(3001, dtype=torch.float64).clamp(min=1)  # the value at iteration k is k^-a (k ≥ 1)
    values = torch.stack([1 / k, k.pow(-0.5)], dim=1)
    torch.testing.assert_close(ms.loglog_slope(values, 500, 3000), torch.tensor([-1.0, -0.5], dtype=torch.float64))
    assert ms.first_below(values, 1e-3).tolist() == [1001, -1]  # 1/k < 1e-3 first at k = 1001


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: ms.sample_problem(0, 5, 10, (1.0,), generator=torch.Generator()), "n_instances"),
        (lambda: ms.sample_problem(1, -5, 10, (1.0,), generator=torch.Generator()), "dim"),
        (lambda: ms.sample_problem(1, 2, 10, (1.0, 1.0, 1.0), generator=torch.Generator()), "singular_values"),
        (lambda: ms.sample_problem(1, 5, 10, (1.0,), noise_std=-1.0, generator=torch.Generator()), "noise_std"),
        (
            lambda: ms.solve(problem(), torch.zeros(3, 6, 2, dtype=torch.float64), "adam", step_size=0.1, steps=1),
            "method",
        ),
        (
            lambda: ms.solve(
                problem(), torch.zeros(3, 6, 2, dtype=torch.float64), "gd", step_size=0.1, steps=1, damping=1.0
            ),
            "damping",
        ),
        (
            lambda: ms.solve(problem(), torch.zeros(3, 6, 2, dtype=torch.float64), "gd", step_size=-0.1, steps=1),
            "step_size",
        ),
    ],
)
def test_bad_input_is_named(call, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        call()


def test_a_diverging_step_size_is_reported() -> None:
    p = problem()
    X = ms.initial_factor(p, 2, scale=0.02, generator=torch.Generator().manual_seed(7))
    with pytest.raises(FloatingPointError, match="step_size"):
        ms.solve(p, X, "gd", step_size=1e3, steps=50)
