"""The classical in-context regressors against references: pinv, closed forms, and each other."""

from __future__ import annotations

import pytest
import torch

from icl import baselines, tasks

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(n: int = 12, d: int = 4, B: int = 8, seed: int = 0, noise_std: float = 0.0) -> tasks.RegressionBatch:
    covariance = tasks.covariance_from_condition_number(d, 4.0, generator=gen(seed + 50))
    return tasks.sample_regression(B, n, covariance, generator=gen(seed), noise_std=noise_std, dtype=F64)


def moments(b: tasks.RegressionBatch) -> tuple[torch.Tensor, torch.Tensor]:
    n = b.X.shape[-2]
    return b.X.mT @ b.X / n, torch.einsum("bnd,bn->bd", b.X, b.y) / n


def pinv_prediction(b: tasks.RegressionBatch) -> torch.Tensor:
    w = (torch.linalg.pinv(b.X) @ b.y.unsqueeze(-1)).squeeze(-1)
    return (w * b.x_query).sum(-1)


def test_zero_predicts_zero_with_the_right_shape() -> None:
    b = batch()
    assert torch.equal(baselines.zero(b.X, b.y, b.x_query), torch.zeros(8, dtype=F64))
    stacked = torch.zeros(2, 5, 3)
    assert baselines.zero(stacked, stacked[..., 0], stacked[:, :, 0]).shape == (2,)


@pytest.mark.parametrize("n", [4, 12])
def test_least_squares_recovers_w_without_noise(n: int) -> None:
    b = batch(n=n)
    # The normal equations square the condition number; n = d is the worst case.
    torch.testing.assert_close(baselines.least_squares(b.X, b.y, b.x_query), b.y_query, rtol=0, atol=1e-8)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_least_squares_is_min_norm_below_d(n: int) -> None:
    b = batch(n=n)
    prediction = baselines.least_squares(b.X, b.y, b.x_query)
    torch.testing.assert_close(prediction, pinv_prediction(b), rtol=0, atol=1e-10)
    assert (prediction - b.y_query).abs().max() > 1e-3  # under-determined: w is not recovered


def test_least_squares_with_noise_matches_pinv() -> None:
    b = batch(n=20, noise_std=0.5)
    torch.testing.assert_close(baselines.least_squares(b.X, b.y, b.x_query), pinv_prediction(b), rtol=0, atol=1e-10)


def test_least_squares_handles_an_ensemble_axis() -> None:
    b = batch()
    stacked = [torch.stack([t, 2 * t]) for t in (b.X, b.y, b.x_query)]
    prediction = baselines.least_squares(*stacked)
    assert prediction.shape == (2, 8)
    torch.testing.assert_close(prediction[1], 2 * prediction[0], rtol=1e-10, atol=1e-10)


def test_ridge_is_the_closed_form_and_tends_to_least_squares() -> None:
    b = batch(n=15, noise_std=0.3)
    S, h = moments(b)
    lam = 0.7
    w = torch.linalg.solve(S + lam * torch.eye(4, dtype=F64), h.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(baselines.ridge(b.X, b.y, b.x_query, lam), (w * b.x_query).sum(-1), rtol=0, atol=1e-12)
    least = baselines.least_squares(b.X, b.y, b.x_query)
    gaps = [(baselines.ridge(b.X, b.y, b.x_query, lam) - least).abs().max().item() for lam in (1.0, 1e-2, 1e-4, 1e-8)]
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:], strict=False))
    assert gaps[0] > 1e-2 and gaps[-1] < 1e-6


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_ridge_rejects_non_positive_regularisation(bad: float) -> None:
    b = batch()
    with pytest.raises(ValueError, match="regularisation"):
        baselines.ridge(b.X, b.y, b.x_query, bad)


def test_one_step_with_the_inverse_second_moment_is_least_squares() -> None:
    b = batch(n=12)
    S, _ = moments(b)
    prediction = baselines.preconditioned_gd(b.X, b.y, b.x_query, torch.linalg.inv(S))
    torch.testing.assert_close(prediction, baselines.least_squares(b.X, b.y, b.x_query), rtol=0, atol=1e-10)


def test_one_step_is_x_query_a_h() -> None:
    b = batch()
    _, h = moments(b)
    A = torch.randn(4, 4, generator=gen(1), dtype=F64)
    expected = torch.einsum("bd,de,be->b", b.x_query, A, h)  # x_qᵀ A h: A itself, not Aᵀ
    torch.testing.assert_close(baselines.preconditioned_gd(b.X, b.y, b.x_query, A), expected, rtol=0, atol=1e-12)


def test_two_steps_follow_the_recursion() -> None:
    b = batch()
    S, h = moments(b)
    A0, A1 = (torch.randn(4, 4, generator=gen(s), dtype=F64) / 4 for s in (2, 3))
    w1 = h @ A0.T
    w2 = w1 - (torch.einsum("bde,be->bd", S, w1) - h) @ A1.T
    prediction = baselines.preconditioned_gd(b.X, b.y, b.x_query, [A0, A1], n_steps=2)
    torch.testing.assert_close(prediction, (w2 * b.x_query).sum(-1), rtol=0, atol=1e-12)


def test_many_small_gd_steps_approach_least_squares() -> None:
    b = batch(n=30)
    S, _ = moments(b)
    step_size = 1 / torch.linalg.eigvalsh(S)[:, -1].max().item()  # stable for every prompt
    least = baselines.least_squares(b.X, b.y, b.x_query)
    gaps = [(baselines.gd(b.X, b.y, b.x_query, step_size, n_steps=k) - least).abs().max().item() for k in (5, 50, 1000)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[0] > 1e-2 and gaps[2] < 1e-6


def test_gd_equals_preconditioned_gd_with_a_scaled_identity() -> None:
    b = batch()
    eye = torch.eye(4, dtype=F64)
    torch.testing.assert_close(
        baselines.gd(b.X, b.y, b.x_query, 0.3, n_steps=3),
        baselines.preconditioned_gd(b.X, b.y, b.x_query, 0.3 * eye, n_steps=3),
        rtol=0,
        atol=1e-14,
    )
    torch.testing.assert_close(
        baselines.gd(b.X, b.y, b.x_query, [0.1, 0.5], n_steps=2),
        baselines.preconditioned_gd(b.X, b.y, b.x_query, [0.1 * eye, 0.5 * eye], n_steps=2),
        rtol=0,
        atol=1e-14,
    )


def test_batched_preconditioners_per_model() -> None:
    b = batch()
    stacked = [torch.stack([t, t]) for t in (b.X, b.y, b.x_query)]
    A = torch.stack([torch.eye(4, dtype=F64), 2 * torch.eye(4, dtype=F64)]).unsqueeze(1)  # (E, 1, d, d)
    prediction = baselines.preconditioned_gd(*stacked, A)
    torch.testing.assert_close(prediction[1], 2 * prediction[0], rtol=1e-12, atol=0)


def test_baselines_keep_the_input_dtype_and_shape() -> None:
    b = batch()
    X, y, x_query = (t.float() for t in (b.X, b.y, b.x_query))
    for prediction in (
        baselines.least_squares(X, y, x_query),
        baselines.ridge(X, y, x_query, 0.1),
        baselines.preconditioned_gd(X, y, x_query, torch.eye(4, dtype=F64)),
        baselines.gd(X, y, x_query, 0.1),
    ):
        assert prediction.shape == (8,) and prediction.dtype == torch.float32


def test_wrong_number_of_preconditioners() -> None:
    b = batch()
    eye = torch.eye(4, dtype=F64)
    with pytest.raises(ValueError, match="got 2 preconditioners for n_steps=3"):
        baselines.preconditioned_gd(b.X, b.y, b.x_query, [eye, eye], n_steps=3)
    with pytest.raises(ValueError, match="n_steps"):
        baselines.preconditioned_gd(b.X, b.y, b.x_query, eye, n_steps=0)
    with pytest.raises(ValueError, match="n_steps"):
        baselines.gd(b.X, b.y, b.x_query, [0.1, 0.2, 0.3], n_steps=2)
    with pytest.raises(ValueError, match="step_size"):
        baselines.gd(b.X, b.y, b.x_query, float("nan"))


# --- GD++ --------------------------------------------------------------------------------------------


def gd_plus_plus_preconditioners(
    b: tasks.RegressionBatch, step_sizes: list[float], gammas: list[float]
) -> list[torch.Tensor]:
    """A_k = η_k T_kᵀ T_k with x^(k) = T_k x: GD++ as preconditioned GD on the original covariates. (B, d, d) each."""
    d = b.X.shape[-1]
    T = torch.eye(d, dtype=F64).expand(b.X.shape[0], d, d)
    gram = b.X.mT @ b.X  # Σ_i x_i x_iᵀ
    preconditioners = []
    for eta, gamma in zip(step_sizes, gammas, strict=True):
        preconditioners.append(eta * T.mT @ T)
        T = T - gamma * T @ gram @ T.mT @ T  # x ← (I − γ Σ_i x_i^(k) x_i^(k)ᵀ) x with x^(k) = T x
    return preconditioners


def test_gd_plus_plus_is_preconditioned_gd_with_a_data_dependent_preconditioner() -> None:
    b = batch(n=10)
    step_sizes, gammas = [0.8, 1.2, 0.5], [0.01, 0.02, 0.015]
    A = gd_plus_plus_preconditioners(b, step_sizes, gammas)
    expected = baselines.preconditioned_gd(b.X, b.y, b.x_query, A, n_steps=3)
    prediction = baselines.gd_plus_plus(b.X, b.y, b.x_query, step_sizes, gammas)
    torch.testing.assert_close(prediction, expected, rtol=0, atol=1e-10)
    wrong = gd_plus_plus_preconditioners(b, step_sizes, [0.0101, 0.02, 0.015])  # γ₁ off by 1%
    assert not torch.allclose(
        prediction, baselines.preconditioned_gd(b.X, b.y, b.x_query, wrong, n_steps=3), atol=1e-10
    )


def test_gd_plus_plus_without_gamma_is_gd_and_the_last_gamma_is_inert() -> None:
    b = batch()
    step_sizes = [0.3, 0.6]
    plain = baselines.gd(b.X, b.y, b.x_query, step_sizes, n_steps=2)
    torch.testing.assert_close(
        baselines.gd_plus_plus(b.X, b.y, b.x_query, step_sizes, [0.0, 0.0]), plain, rtol=0, atol=1e-12
    )
    torch.testing.assert_close(
        baselines.gd_plus_plus(b.X, b.y, b.x_query, step_sizes, [0.0, 5.0]), plain, rtol=0, atol=1e-12
    )
    assert (baselines.gd_plus_plus(b.X, b.y, b.x_query, step_sizes, [0.01, 0.0]) - plain).abs().max() > 1e-3


def test_gd_plus_plus_keeps_dtype_shape_and_ensemble_axis() -> None:
    b = batch()
    X, y, x_query = (t.float() for t in (b.X, b.y, b.x_query))
    prediction = baselines.gd_plus_plus(X, y, x_query, [0.1], [0.01])
    assert prediction.shape == (8,) and prediction.dtype == torch.float32
    stacked = [torch.stack([t, t]) for t in (b.X, b.y, b.x_query)]
    twice = baselines.gd_plus_plus(*stacked, [0.2, 0.4], [0.01, 0.0])
    assert twice.shape == (2, 8)
    torch.testing.assert_close(twice[1], baselines.gd_plus_plus(b.X, b.y, b.x_query, [0.2, 0.4], [0.01, 0.0]))


def test_gd_plus_plus_bad_input() -> None:
    b = batch()
    with pytest.raises(ValueError, match="gammas"):
        baselines.gd_plus_plus(b.X, b.y, b.x_query, [0.1, 0.2], [0.01])
    with pytest.raises(ValueError, match="step_sizes"):
        baselines.gd_plus_plus(b.X, b.y, b.x_query, [], [])
    with pytest.raises(ValueError, match=r"step_sizes\[1\]"):
        baselines.gd_plus_plus(b.X, b.y, b.x_query, [0.1, float("nan")], [0.0, 0.0])
    with pytest.raises(ValueError, match=r"gammas\[0\]"):
        baselines.gd_plus_plus(b.X, b.y, b.x_query, [0.1], [float("inf")])


# --- iterative solvers at every prefix (Fu et al. 2023) -------------------------------------------------------------


def sequence(
    k: int = 9, d: int = 4, B: int = 6, seed: int = 3, kappa: float = 4.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """xs (B, k, d), ys (B, k): noiseless examples of one w per sequence."""
    b = batch(n=k, d=d, B=B, seed=seed)
    return b.X, b.y


def pseudo_inverse_solution(S: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return (torch.linalg.pinv(S, hermitian=True) @ h.unsqueeze(-1)).squeeze(-1)


def test_prefix_moments_are_those_of_the_examples_before_each_position() -> None:
    xs, ys = sequence()
    S, h = baselines.prefix_moments(xs, ys)
    assert S.shape == (6, 9, 4, 4) and h.shape == (6, 9, 4)
    assert torch.equal(S[:, 0], torch.zeros(6, 4, 4, dtype=F64)) and torch.equal(h[:, 0], torch.zeros(6, 4, dtype=F64))
    for t in range(1, 9):
        torch.testing.assert_close(S[:, t], xs[:, :t].mT @ xs[:, :t] / t)
        torch.testing.assert_close(h[:, t], torch.einsum("btd,bt->bd", xs[:, :t], ys[:, :t]) / t)


def test_least_squares_weights_are_numpys_minimum_norm_lstsq_at_every_prefix() -> None:
    import numpy as np

    xs, ys = sequence(k=9, d=4)
    S, h = baselines.prefix_moments(xs, ys)
    w = baselines.least_squares_weights(S, h)  # (B, k, d): fewer examples than d at t < 4
    for b in range(xs.shape[0]):
        for t in range(1, 9):
            expected = np.linalg.lstsq(xs[b, :t].numpy(), ys[b, :t].numpy(), rcond=None)[0]
            np.testing.assert_allclose(w[b, t].numpy(), expected, rtol=0, atol=1e-9)
    assert torch.equal(w[:, 0], torch.zeros(6, 4, dtype=F64))


@pytest.mark.parametrize("step_size", [0.3, None])
def test_gd_weights_follow_their_closed_form(step_size: float | None) -> None:
    xs, ys = sequence()
    S, h = baselines.prefix_moments(xs, ys)
    steps = [0, 1, 2, 7, 30]
    w = baselines.gd_weights(S, h, steps, step_size)
    assert w.shape == (len(steps), 6, 9, 4)
    eigenvalues, vectors = torch.linalg.eigh(S)
    eta = 1 / eigenvalues[..., -1:].clamp(min=1e-300) if step_size is None else step_size
    eta = torch.where(eigenvalues[..., -1:] > 0, eta, 0.0) if step_size is None else eta
    projected = (vectors.mT @ pseudo_inverse_solution(S, h).unsqueeze(-1)).squeeze(-1)
    for i, k in enumerate(steps):  # w_k = (I − (I − ηŜ)^k) Ŝ⁺ h, eigen-direction by eigen-direction
        expected = (vectors @ ((1 - (1 - eta * eigenvalues) ** k) * projected).unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(w[i], expected, rtol=0, atol=1e-10)


def test_newton_weights_follow_their_closed_form_and_the_corrected_first_step() -> None:
    xs, ys = sequence()
    S, h = baselines.prefix_moments(xs, ys)
    steps = list(range(21))
    w = baselines.newton_weights(S, h, steps)
    alpha = 1 / torch.linalg.matrix_norm(S[:, 1:] @ S[:, 1:]).clamp(min=1e-300)[..., None, None]
    eigenvalues, vectors = torch.linalg.eigh(S[:, 1:])
    projected = (vectors.mT @ pseudo_inverse_solution(S[:, 1:], h[:, 1:]).unsqueeze(-1)).squeeze(-1)
    for k in steps:  # ŵ_k = (I − (I − αŜ²)^{2^k}) Ŝ⁺ h
        factor = 1 - (1 - alpha[..., 0] * eigenvalues**2) ** (2**k)
        expected = (vectors @ (factor * projected).unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(w[k, :, 1:], expected, rtol=0, atol=1e-10)
    assert torch.equal(w[:, :, 0], torch.zeros_like(w[:, :, 0]))  # no examples: M = 0
    # M₁ = 2αŜ − α²Ŝ³ (the paper prints 4α²Ŝ³): one step from M₀ = αŜ.
    first = 2 * alpha * S[:, 1:] - alpha**2 * S[:, 1:] @ S[:, 1:] @ S[:, 1:]
    torch.testing.assert_close(w[1, :, 1:], (first @ h[:, 1:].unsqueeze(-1)).squeeze(-1), rtol=0, atol=1e-12)
    # From t = 2d examples on (κ(Ŝ) in the tens) twenty steps reach least squares; at t = d, κ(Ŝ)² can exceed 2²⁰.
    torch.testing.assert_close(w[-1, :, 8:], baselines.least_squares_weights(S, h)[:, 8:], rtol=0, atol=1e-9)


def test_conjugate_gradients_reach_least_squares_within_rank_steps_and_first_step_is_a_line_search() -> None:
    xs, ys = sequence(k=9, d=4)
    S, h = baselines.prefix_moments(xs, ys)
    w = baselines.conjugate_gradient_weights(S, h, [0, 1, 4, 6])
    torch.testing.assert_close(w[2], baselines.least_squares_weights(S, h), rtol=0, atol=1e-9)
    torch.testing.assert_close(w[3], w[2], rtol=0, atol=1e-9)  # finished prompts stay put
    step = (h * h).sum(-1, keepdim=True) / (h * (S @ h.unsqueeze(-1)).squeeze(-1)).sum(-1, keepdim=True)
    torch.testing.assert_close(w[1, :, 1:], step[:, 1:] * h[:, 1:])  # exact line search along −∇R(0) = h
    assert torch.isfinite(w).all()


def test_online_gd_fits_each_example_in_turn() -> None:
    xs, ys = sequence(k=9, d=4)
    w = baselines.online_gd_weights(xs, ys)  # (B, k, d): the weights before each example
    assert torch.equal(w[:, 0], torch.zeros(6, 4, dtype=F64))
    fitted = (w[:, 1:] * xs[:, :-1]).sum(-1)  # after example i, x_iᵀw = y_i exactly (η_i = 1/‖x_i‖²)
    torch.testing.assert_close(fitted, ys[:, :-1], rtol=0, atol=1e-10)


def test_iterative_newton_on_a_prompt_is_the_prefix_solver_at_the_full_context() -> None:
    b = batch(n=12, d=4)
    S, h = moments(b)
    expected = (baselines.newton_weights(S, h, [3])[0] * b.x_query).sum(-1)
    torch.testing.assert_close(baselines.iterative_newton(b.X, b.y, b.x_query, 3), expected)
    torch.testing.assert_close(baselines.iterative_newton(b.X, b.y, b.x_query, 25), pinv_prediction(b))


@pytest.mark.parametrize("steps", [[], [2, 1], [-1], [1.5]])
def test_bad_step_counts_are_named(steps: list) -> None:
    xs, ys = sequence()
    S, h = baselines.prefix_moments(xs, ys)
    with pytest.raises(ValueError, match="steps"):
        baselines.newton_weights(S, h, steps)


@pytest.mark.parametrize("memory", [1, 2, 5, None])
def test_lbfgs_with_exact_line_searches_takes_the_conjugate_gradient_iterates(memory: int | None) -> None:
    """Nocedal (1980): on a strictly convex quadratic, BFGS and L-BFGS of any memory from H₀ = I with exact line
    searches generate conjugate gradients' iterates; from t = 1 example on (rank-deficient Ŝ included, where both
    stay in its range and end at the minimum-norm solution)."""
    xs, ys = sequence(k=12, d=5)
    S, h = baselines.prefix_moments(xs, ys)
    steps = [0, 1, 2, 3, 4, 5, 8]
    expected = baselines.conjugate_gradient_weights(S, h, steps)
    w = baselines.lbfgs_weights(S, h, steps, memory=memory)
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-8)
    torch.testing.assert_close(w[-1], baselines.least_squares_weights(S, h), rtol=0, atol=1e-8)


def test_lbfgs_is_not_gradient_descent_and_refuses_a_bad_memory() -> None:
    xs, ys = sequence(k=12, d=5)
    S, h = baselines.prefix_moments(xs, ys)
    lbfgs, gd = baselines.lbfgs_weights(S, h, [2]), baselines.gd_weights(S, h, [2])
    assert (lbfgs - gd)[..., 6:, :].abs().amax() > 1e-3  # a different method, not a renamed one
    with pytest.raises(ValueError, match="memory"):
        baselines.lbfgs_weights(S, h, [1], memory=0)
