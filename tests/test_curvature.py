"""Curvature metrics on quadratics, whose Hessian is known: f_e(θ) = ½ θᵀ A_e θ + b_eᵀ θ has ∇f = A_e θ + b_e and
∇²f = A_e, for each member e of an ensemble."""

from __future__ import annotations

import pytest
import torch

from icl import curvature
from icl.models import LinearTransformer

E, P = 3, 6


def quadratic(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    eigenvalues = torch.stack([torch.linspace(1.0, 10.0 * (e + 1), P, dtype=torch.float64) for e in range(E)])
    rotations = torch.linalg.qr(torch.randn(E, P, P, generator=generator, dtype=torch.float64)).Q
    A = rotations @ torch.diag_embed(eigenvalues) @ rotations.mT
    b = torch.randn(E, P, generator=generator, dtype=torch.float64)
    theta = torch.nn.Parameter(torch.randn(E, 2, 3, generator=generator, dtype=torch.float64))  # P = 6 per member

    def losses() -> torch.Tensor:
        flat = theta.reshape(E, P)
        return 0.5 * torch.einsum("ep,epq,eq->e", flat, A, flat) + (b * flat).sum(1)

    return losses, theta, A, b, eigenvalues


def test_gradients_and_hessians_of_a_quadratic() -> None:
    losses, theta, A, b, _ = quadratic()
    flat = theta.detach().reshape(E, P)
    torch.testing.assert_close(curvature.member_gradients(losses, [theta]), (A @ flat.unsqueeze(-1)).squeeze(-1) + b)
    torch.testing.assert_close(curvature.member_hessians(losses, [theta]), A)


def test_directional_smoothness_is_the_rayleigh_quotient() -> None:
    losses, theta, A, _, eigenvalues = quadratic()
    u = torch.randn(E, 2, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    flat = u.reshape(E, P)
    expected = torch.einsum("ep,epq,eq->e", flat, A, flat) / (flat * flat).sum(1)
    torch.testing.assert_close(curvature.directional_smoothness(losses, [theta], [u]), expected)
    along_top = torch.linalg.eigh(A).eigenvectors[..., -1].reshape(E, 2, 3)  # the top eigenvector: λ_max
    torch.testing.assert_close(curvature.directional_smoothness(losses, [theta], [along_top]), eigenvalues[:, -1])


def test_robust_condition_numbers() -> None:
    assert curvature.robust_condition_number(torch.tensor([1.0, -2.0, 3.0, -8.0])).item() == 4.0  # 8 / 2 (lower)
    losses, theta, A, _, eigenvalues = quadratic()
    by_eigenvalues, by_diagonal = curvature.hessian_condition_numbers(curvature.member_hessians(losses, [theta]))
    torch.testing.assert_close(by_eigenvalues, eigenvalues[:, -1] / eigenvalues[:, P // 2 - 1])
    diagonal = torch.diagonal(A, dim1=-2, dim2=-1).abs()
    torch.testing.assert_close(by_diagonal, diagonal.amax(-1) / diagonal.median(-1).values)


@pytest.mark.parametrize("attention", ["linear", "softmax"])
def test_the_transformers_hessian_is_symmetric_and_matches_finite_differences(attention: str) -> None:
    """On the eleven-form transformer (the model of Ahn et al. 2024), the Hessian from Hessian-vector products is
    symmetric and agrees with central differences of the gradient."""
    from icl import tasks
    from icl.tokens import read_out, to_tokens

    generator = torch.Generator().manual_seed(0)
    model = LinearTransformer(
        2,
        2,
        parameterisation="eleven",
        n_models=2,
        init_std=0.3,
        generator=generator,
        dtype=torch.float64,
        attention=attention,
        twice_differentiable=True,
    )
    batch = tasks.sample_regression(50, 5, torch.eye(2), generator=generator, dtype=torch.float64)

    def losses() -> torch.Tensor:
        X, y, q = (t.expand(2, *t.shape) for t in (batch.X, batch.y, batch.x_query))
        return ((read_out(model(to_tokens(X, y, q))) - batch.y_query) ** 2).mean(-1)

    params = list(model.parameters())
    hessians = curvature.member_hessians(losses, params)
    assert hessians.shape == (2, 16, 16)
    torch.testing.assert_close(hessians, hessians.mT, rtol=1e-8, atol=1e-10)
    step, k = 1e-5, 3  # coordinate 3 of the flattened parameters of every member
    flat = [p.detach().view(2, -1) for p in params]  # views: editing them moves the parameters
    owner, index = (0, k) if k < flat[0].shape[1] else (1, k - flat[0].shape[1])
    flat[owner][:, index] += step
    up = curvature.member_gradients(losses, params)
    flat[owner][:, index] -= 2 * step
    down = curvature.member_gradients(losses, params)
    flat[owner][:, index] += step
    torch.testing.assert_close(hessians[:, :, k], (up - down) / (2 * step), rtol=1e-5, atol=1e-7)


def test_gradient_and_smoothness_come_together() -> None:
    losses, theta, A, b, _ = quadratic()
    u = torch.randn(E, 2, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    gradient, smoothness = curvature.gradient_and_smoothness(losses, [theta], [u])
    torch.testing.assert_close(gradient, curvature.member_gradients(losses, [theta]))
    torch.testing.assert_close(smoothness, curvature.directional_smoothness(losses, [theta], [u]))
