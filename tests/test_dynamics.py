"""The exact gradient flow of Zhang, Frei and Bartlett's reduced objective (icl.dynamics)."""

from __future__ import annotations

import pytest
import torch

from icl import dynamics, tasks, theory
from icl.models import LinearTransformer
from icl.tokens import read_out, to_tokens

LAMBDA = torch.diag(torch.tensor([2.0, 1.0, 1.0, 0.5, 0.25], dtype=torch.float64))


def _state(seed: int = 0, d: int = 5) -> dynamics.FlowState:
    """A balanced start of scale ½: U = ½ GGᵀ/‖GGᵀ‖_F (G Gaussian), u = ½, so u² − ‖U‖²_F = 0. (The experiments start
    from the model's own initialisation, icl.models.add_balanced_initialisation_.)"""
    G = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    gram = G @ G.mT
    return dynamics.FlowState(0.5 * gram / torch.linalg.matrix_norm(gram), torch.tensor(0.5, dtype=torch.float64))


def test_velocity_is_minus_the_gradient_of_the_loss() -> None:
    U = torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    u = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    dynamics.loss(dynamics.FlowState(U, u), LAMBDA, 20).backward()
    velocity = dynamics.velocity(dynamics.FlowState(U.detach(), u.detach()), LAMBDA, 20)
    torch.testing.assert_close(velocity.U, -U.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(velocity.u, -u.grad, rtol=1e-12, atol=1e-12)


def test_reduced_loss_is_the_models_population_loss() -> None:
    """L(U, u) equals ½·MSE of the book's one-layer model with u = P[d, d], U = −Q[:d, :d], Monte Carlo."""
    d, n = 3, 10
    lam = torch.diag(torch.tensor([1.5, 1.0, 0.5], dtype=torch.float64))
    U = torch.tensor([[0.6, 0.1, 0.0], [0.1, 0.5, 0.05], [0.0, 0.05, 0.9]], dtype=torch.float64)
    u = torch.tensor(0.8, dtype=torch.float64)
    model = LinearTransformer(
        d,
        1,
        parameterisation="full",
        n_models=1,
        init_std=1e-9,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    with torch.no_grad():
        model.P.zero_()
        model.Q.zero_()
        model.P[0, 0, d, d] = u
        model.Q[0, 0, :d, :d] = -U
    batch = tasks.sample_regression(
        200_000, n, lam.unsqueeze(0), generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    errors = (read_out(model(to_tokens(batch.X, batch.y, batch.x_query))) - batch.y_query) ** 2 / 2
    expected = dynamics.loss(dynamics.FlowState(U, u), lam, n).item()
    assert errors.mean().item() == pytest.approx(expected, abs=4 * errors.std().item() / errors.numel() ** 0.5)


def test_excess_loss_is_the_loss_above_its_minimum() -> None:
    U, u = _state(3)
    state = dynamics.FlowState(U, u)
    minimum = theory.optimal_one_step_loss(LAMBDA, 20) / 2
    direct = dynamics.loss(state, LAMBDA, 20) - minimum
    torch.testing.assert_close(dynamics.excess_loss(u * U, LAMBDA, 20), direct, rtol=1e-10, atol=1e-12)
    assert dynamics.excess_loss(theory.optimal_preconditioner(LAMBDA, 20), LAMBDA, 20).item() == 0.0


def test_flow_reaches_the_limit_and_conserves_balance() -> None:
    start = _state()
    path = dynamics.gradient_flow(LAMBDA, 20, start, time=120.0, step=0.02, n_records=40)
    limit = dynamics.limit(LAMBDA, 20)
    assert path.relative_error[0] > 0.5 and path.relative_error[-1] < 1e-5
    torch.testing.assert_close(path.u[-1], limit.u, rtol=1e-5, atol=0)
    torch.testing.assert_close(path.U[-1], limit.U, rtol=1e-4, atol=1e-5)
    assert (path.balance - path.balance[0]).abs().max() < 1e-6  # RK4: O(h⁴), 1.6e-7 at h = 0.02
    assert torch.all(path.excess_loss[1:] <= path.excess_loss[:-1])  # a gradient flow never climbs
    assert path.times[-1].item() == 120.0 and len(path.times) == 41


def test_an_unbalanced_start_reaches_the_limit_its_balance_predicts() -> None:
    U, u = _state(2)
    start = dynamics.FlowState(1.2 * U, u)  # u² − ‖U‖²_F = 0.25 − 0.36 < 0
    path = dynamics.gradient_flow(LAMBDA, 20, start, time=150.0, step=0.02, n_records=10)
    limit = dynamics.limit(LAMBDA, 20, path.balance[0])
    assert path.balance[0].item() == pytest.approx(0.25 - 0.36, rel=1e-9)
    torch.testing.assert_close(path.u[-1], limit.u, rtol=1e-6, atol=0)
    torch.testing.assert_close(path.U[-1], limit.U, rtol=1e-5, atol=1e-7)
    assert abs(limit.u.item() - dynamics.limit(LAMBDA, 20).u.item()) > 1e-3  # the balance matters


def test_flow_of_a_batch_equals_each_flow_alone() -> None:
    starts = [_state(seed) for seed in range(3)]
    batch = dynamics.FlowState(torch.stack([s.U for s in starts]), torch.stack([s.u for s in starts]))
    together = dynamics.gradient_flow(LAMBDA, 5, batch, time=3.0, step=0.01, n_records=3)
    for index, start in enumerate(starts):
        alone = dynamics.gradient_flow(LAMBDA, 5, start, time=3.0, step=0.01, n_records=3)
        torch.testing.assert_close(together.U[:, index], alone.U, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(together.relative_error[:, index], alone.relative_error, rtol=1e-12, atol=1e-14)


def test_isotropic_limit_and_convergence_bound() -> None:
    d, n = 5, 20
    limit = dynamics.limit(torch.eye(d, dtype=torch.float64), n)
    torch.testing.assert_close(limit.u * limit.U, n / (n + d + 1) * torch.eye(d, dtype=torch.float64))
    assert limit.u.item() == pytest.approx(1.3115, abs=1e-4)  # the paper note's table
    assert dynamics.convergence_bound(torch.eye(d), n, 0.5) == pytest.approx(0.727, abs=1e-3)
    assert dynamics.convergence_bound(LAMBDA, n, 0.5) == pytest.approx(1.307, abs=1e-3)


@pytest.mark.parametrize(("name", "kwargs"), [("time", {"time": -1.0}), ("step", {"step": 0.0})])
def test_bad_input_names_the_parameter(name: str, kwargs: dict) -> None:
    arguments = {"time": 1.0, "step": 0.01} | kwargs
    with pytest.raises(ValueError, match=name):
        dynamics.gradient_flow(LAMBDA, 20, _state(), **arguments)
