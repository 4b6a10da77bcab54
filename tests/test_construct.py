"""Hand-built weights against the algorithms they claim to run: GD, preconditioned GD, GD++ (float64, atol 1e-10),
token by token where the papers say what each token holds; loading into LinearTransformer; bad input."""

from __future__ import annotations

import pytest
import torch

from icl import baselines, construct, tasks
from icl.models import LinearTransformer, lsa_layer
from icl.tokens import read_out, to_tokens

F64 = torch.float64
TOL = {"rtol": 0.0, "atol": 1e-10}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(n: int = 9, d: int = 3, B: int = 6, seed: int = 0) -> tasks.RegressionBatch:
    covariance = tasks.covariance_from_condition_number(d, 4.0, generator=gen(seed + 100))
    return tasks.sample_regression(B, n, covariance, generator=gen(seed), dtype=F64)


def symmetric(d: int, seed: int) -> torch.Tensor:
    M = torch.randn(d, d, generator=gen(seed), dtype=F64) / d
    return (M + M.T) / 2


def layer_outputs(weights: construct.TransformerWeights, b: tasks.RegressionBatch) -> list[torch.Tensor]:
    """Z after every layer, each (B, d+1, n+1), running the pure weights through lsa_layer."""
    Z = to_tokens(b.X, b.y, b.x_query).unsqueeze(0)  # (1, B, d+1, n+1): one model
    outputs = []
    for P, Q in zip(weights.P, weights.Q, strict=True):
        Z = lsa_layer(Z, P.unsqueeze(0), Q.unsqueeze(0))
        outputs.append(Z.squeeze(0))
    return outputs


def predict(weights: construct.TransformerWeights, b: tasks.RegressionBatch) -> torch.Tensor:
    return read_out(layer_outputs(weights, b)[-1])


def far(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when a and b are NOT within the tests' tolerance (the check has power)."""
    return not torch.allclose(a, b, **TOL)


def at_context(b: tasks.RegressionBatch, rule, *args, **kwargs) -> torch.Tensor:
    """A baseline's prediction at every context covariate x_i instead of the query: (B, n)."""
    n = b.X.shape[-2]
    X, y = b.X.unsqueeze(1).expand(-1, n, -1, -1), b.y.unsqueeze(1).expand(-1, n, -1)  # (B, n, n, d), (B, n, n)
    return rule(X, y, b.X, *args, **kwargs)


def von_oswald_layer(Z: torch.Tensor, step_size: float, gamma: float) -> torch.Tensor:
    """Von Oswald et al.'s GD++ layer written literally, token by token (App. A.10): no 1/N except in P.

    e_j ← e_j + P W_V Σ_{i≤N} e_i e_iᵀ W_Kᵀ W_Q e_j with W_K = W_Q = diag(I, 0), W_V = [[I, 0], [0, −1]]
    (W₀ = 0) and P = [[−γ I, 0], [0, η/N]]. Z: (B, d+1, N+1), tokens as columns, the query last.
    """
    d, N = Z.shape[-2] - 1, Z.shape[-1] - 1
    W_KQ = torch.diag(torch.cat([torch.ones(d, dtype=F64), torch.zeros(1, dtype=F64)]))
    W_V = torch.diag(torch.cat([torch.ones(d, dtype=F64), -torch.ones(1, dtype=F64)]))
    P = torch.diag(torch.cat([-gamma * torch.ones(d, dtype=F64), torch.full((1,), step_size / N, dtype=F64)]))
    out = Z.clone()
    for j in range(N + 1):
        e_j = Z[:, :, j]
        for i in range(N):
            e_i = Z[:, :, i]
            score = (e_i * (e_j @ (W_KQ.T @ W_KQ).T)).sum(-1, keepdim=True)  # e_iᵀ W_Kᵀ W_Q e_j: (B, 1)
            out[:, :, j] += score * (e_i @ (P @ W_V).T)
    return out


# --- GD ---------------------------------------------------------------------------------------------


def test_gd_layer_is_the_canonical_sparse_layer() -> None:
    P, Q = construct.gd_layer(3, 0.4)
    assert P.shape == Q.shape == (4, 4) and P.dtype == Q.dtype == F64
    assert torch.equal(P, torch.diag(torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=F64)))
    assert torch.equal(Q, torch.diag(torch.tensor([-0.4, -0.4, -0.4, 0.0], dtype=F64)))
    assert construct.gd_layer(2, 1.0, dtype=torch.float32).P.dtype == torch.float32


def test_one_gd_layer_is_one_gd_step_token_by_token() -> None:
    b, eta = batch(), 0.37
    weights = construct.gd_transformer(3, [eta])
    (Z,) = layer_outputs(weights, b)
    Z0 = to_tokens(b.X, b.y, b.x_query)
    expected = baselines.gd(b.X, b.y, b.x_query, eta)
    torch.testing.assert_close(read_out(Z), expected, **TOL)
    # Every context label becomes the residual y_i − ⟨w₁, x_i⟩ (Ahn et al. Lemma 1; von Oswald et al. Prop. 1).
    residuals = b.y - at_context(b, baselines.gd, eta)
    torch.testing.assert_close(Z[:, 3, :-1], residuals, **TOL)
    assert torch.equal(Z[:, :3], Z0[:, :3])  # the covariate rows, query included, do not move
    # Power: a 1% larger step, or the opposite sign of Q, is not within tolerance.
    assert far(read_out(Z), baselines.gd(b.X, b.y, b.x_query, 1.01 * eta))
    assert far(read_out(Z), baselines.gd(b.X, b.y, b.x_query, -eta))
    assert far(Z[:, 3, :-1], b.y - at_context(b, baselines.gd, 1.01 * eta))


def test_k_gd_layers_are_k_gd_steps_with_per_layer_step_sizes() -> None:
    b, step_sizes = batch(n=11), [0.3, 0.7, 0.5]
    outputs = layer_outputs(construct.gd_transformer(3, step_sizes), b)
    for k, Z in enumerate(outputs, start=1):
        sizes = step_sizes[:k]
        torch.testing.assert_close(read_out(Z), baselines.gd(b.X, b.y, b.x_query, sizes, n_steps=k), **TOL)
        residuals = b.y - at_context(b, baselines.gd, sizes, n_steps=k)
        torch.testing.assert_close(Z[:, 3, :-1], residuals, **TOL)
    # (Reversing the order would not do: scalar GD steps are polynomials in Ŝ and commute.)
    assert far(read_out(outputs[-1]), baselines.gd(b.X, b.y, b.x_query, [0.5, 0.5, 0.5], n_steps=3))
    assert far(read_out(outputs[-1]), baselines.gd(b.X, b.y, b.x_query, [0.3, 0.7, 0.505], n_steps=3))


def test_k_preconditioned_layers_are_k_preconditioned_steps() -> None:
    b = batch(n=10, d=4)
    A = [symmetric(4, seed) for seed in (1, 2, 3)]
    weights = construct.preconditioned_gd_transformer(A)
    assert weights.P.shape == weights.Q.shape == (3, 5, 5)
    for got, same in zip(weights, construct.preconditioned_gd_transformer(torch.stack(A)), strict=True):
        assert torch.equal(got, same)
    outputs = layer_outputs(weights, b)
    for k, Z in enumerate(outputs, start=1):
        expected = baselines.preconditioned_gd(b.X, b.y, b.x_query, A[:k], n_steps=k)
        torch.testing.assert_close(read_out(Z), expected, **TOL)
        residuals = b.y - at_context(b, baselines.preconditioned_gd, A[:k], n_steps=k)
        torch.testing.assert_close(Z[:, 4, :-1], residuals, **TOL)
        assert torch.equal(Z[:, :4], to_tokens(b.X, b.y, b.x_query)[:, :4])
    wrong = [A[0], A[1], 1.01 * A[2]]
    assert far(read_out(outputs[-1]), baselines.preconditioned_gd(b.X, b.y, b.x_query, wrong, n_steps=3))
    assert far(read_out(outputs[-1]), baselines.preconditioned_gd(b.X, b.y, b.x_query, A[::-1], n_steps=3))


def test_a_non_symmetric_preconditioner_is_applied_transposed() -> None:
    b = batch(d=4)
    A = torch.randn(4, 4, generator=gen(7), dtype=F64) / 4
    prediction = predict(construct.preconditioned_gd_transformer([A]), b)
    torch.testing.assert_close(prediction, baselines.preconditioned_gd(b.X, b.y, b.x_query, A.T), **TOL)
    assert far(prediction, baselines.preconditioned_gd(b.X, b.y, b.x_query, A))  # papers/README §1.6


# --- GD++ -------------------------------------------------------------------------------------------


def test_gd_plus_plus_layer_is_the_eleven_form_with_ab_equal_gamma_n() -> None:
    P, Q = construct.gd_plus_plus_layer(3, 2.0, 0.05, n_context=8)
    b = 0.05 * 8 / 2.0  # a·b = γ n
    torch.testing.assert_close(P, torch.diag(torch.tensor([b, b, b, 1.0], dtype=F64)), rtol=0, atol=0)
    torch.testing.assert_close(Q, torch.diag(torch.tensor([-2.0, -2.0, -2.0, 0.0], dtype=F64)), rtol=0, atol=0)
    assert torch.equal(construct.gd_plus_plus_layer(3, 0.0, 0.0, n_context=8).P, construct.gd_layer(3, 0.0).P)


def test_gd_plus_plus_transformer_is_von_oswalds_layer_token_by_token() -> None:
    b = batch(n=8)
    step_sizes, gammas = [0.9, 1.3, 0.6], [0.02, 0.035, 0.01]
    outputs = layer_outputs(construct.gd_plus_plus_transformer(3, step_sizes, gammas, n_context=8), b)
    Z = to_tokens(b.X, b.y, b.x_query)
    for k, (eta, gamma) in enumerate(zip(step_sizes, gammas, strict=True)):
        Z = von_oswald_layer(Z, eta, gamma)  # every token, context and query, after every layer
        torch.testing.assert_close(outputs[k], Z, **TOL)
        expected = baselines.gd_plus_plus(b.X, b.y, b.x_query, step_sizes[: k + 1], gammas[: k + 1])
        torch.testing.assert_close(read_out(outputs[k]), expected, **TOL)
    # Power: γ off by 1% (in a layer that is not the last), or GD++ replaced by GD, is not within tolerance.
    off = baselines.gd_plus_plus(b.X, b.y, b.x_query, step_sizes, [0.02, 0.035 * 1.01, 0.01])
    assert far(read_out(outputs[-1]), off)
    assert far(read_out(outputs[-1]), baselines.gd(b.X, b.y, b.x_query, step_sizes, n_steps=3))
    assert far(outputs[0], von_oswald_layer(to_tokens(b.X, b.y, b.x_query), 0.9, -0.02))


def test_gd_plus_plus_x_rows_move_by_gamma_x_x_transpose() -> None:
    b, gamma = batch(n=8), 0.03
    (Z,) = layer_outputs(construct.gd_plus_plus_transformer(3, [1.0], [gamma], n_context=8), b)
    gram = b.X.mT @ b.X  # X Xᵀ in von Oswald's columns: Σ_i x_i x_iᵀ, no 1/N
    torch.testing.assert_close(Z[:, :3, :-1].mT, b.X - gamma * b.X @ gram, **TOL)
    torch.testing.assert_close(Z[:, :3, -1], b.x_query - gamma * (gram @ b.x_query.unsqueeze(-1)).squeeze(-1), **TOL)
    assert far(Z[:, :3, :-1].mT, b.X - gamma / 8 * b.X @ gram)  # a 1/N here would be the wrong convention


def test_gd_plus_plus_with_zero_gamma_is_gd() -> None:
    weights = construct.gd_plus_plus_transformer(3, [0.4, 0.8], [0.0, 0.0], n_context=9)
    for got, gd in zip(weights, construct.gd_transformer(3, [0.4, 0.8]), strict=True):
        assert torch.equal(got, gd)


# --- loading into LinearTransformer -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "parameterisations"),
    [("gd", ["full", "sparse", "eleven"]), ("pgd", ["full", "sparse", "eleven"]), ("gd++", ["full", "eleven"])],
)
def test_loaded_models_predict_as_the_pure_weights(kind: str, parameterisations: list[str]) -> None:
    b = batch(n=8, d=4)
    if kind == "gd":
        weights = construct.gd_transformer(4, [0.5, 0.2])
    elif kind == "pgd":
        weights = construct.preconditioned_gd_transformer([symmetric(4, 1), symmetric(4, 2)])
    else:
        weights = construct.gd_plus_plus_transformer(4, [0.8, 1.1], [0.03, 0.02], n_context=8)
    expected = predict(weights, b)
    for parameterisation in parameterisations:
        model = construct.to_transformer(weights, parameterisation=parameterisation)
        assert model.n_layers == 2 and model.parameterisation == parameterisation
        torch.testing.assert_close(model.predict(b.X, b.y, b.x_query), expected, **TOL)
        ensemble = construct.to_transformer(weights, parameterisation=parameterisation, n_models=2)
        stacked = [torch.stack([t, t]) for t in (b.X, b.y, b.x_query)]
        torch.testing.assert_close(ensemble.predict(*stacked), torch.stack([expected, expected]), **TOL)
    # Power: a model holding one wrong entry predicts differently.
    model = construct.to_transformer(weights)
    with torch.no_grad():
        model.Q[0, 0, 0, 0] *= 1.01
    assert far(model.predict(b.X, b.y, b.x_query), expected)


def test_loading_fixes_the_gauge_and_ties_a_looped_model() -> None:
    b = batch(n=8)
    P, Q = construct.gd_plus_plus_layer(3, 0.7, 0.02, n_context=8)
    scaled = construct.LayerWeights(2.0 * P, Q / 2.0)  # the same layer in another gauge (README §1.7)
    model = LinearTransformer(3, 3, parameterisation="eleven", looped=True, generator=gen(), dtype=F64)
    construct.load_weights_(model, scaled)
    torch.testing.assert_close(model.A[0, 0], 0.7 * torch.eye(3, dtype=F64), **TOL)
    torch.testing.assert_close(model.B[0, 0], 0.02 * 8 / 0.7 * torch.eye(3, dtype=F64), **TOL)
    three = construct.gd_plus_plus_transformer(3, [0.7] * 3, [0.02] * 3, n_context=8)
    torch.testing.assert_close(model.predict(b.X, b.y, b.x_query), predict(three, b), **TOL)


def test_loading_rejects_weights_the_model_cannot_hold() -> None:
    gdpp = construct.gd_plus_plus_transformer(3, [0.5], [0.1], n_context=8)
    with pytest.raises(ValueError, match="'sparse' needs P"):
        construct.to_transformer(gdpp, parameterisation="sparse")
    dense = construct.TransformerWeights(*(torch.randn(2, 1, 4, 4, generator=gen(s), dtype=F64)[:, 0] for s in (1, 2)))
    with pytest.raises(ValueError, match="'eleven' needs P"):
        construct.to_transformer(dense, parameterisation="eleven")
    two = construct.gd_transformer(3, [0.1, 0.2])
    with pytest.raises(ValueError, match="weights hold 2 layers"):
        construct.load_weights_(LinearTransformer(3, 3, generator=gen(), dtype=F64), two)
    with pytest.raises(ValueError, match="weights must be P, Q of shape"):
        construct.load_weights_(LinearTransformer(4, 2, generator=gen(), dtype=F64), two)
    with pytest.raises(ValueError, match="parameterisation"):
        construct.to_transformer(two, parameterisation="dense")


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: construct.gd_layer(-1, 0.1), "dim"),
        (lambda: construct.gd_layer(0, 0.1), "dim"),
        (lambda: construct.gd_layer(3, float("nan")), "step_size"),
        (lambda: construct.gd_transformer(-2, [0.1]), "dim"),
        (lambda: construct.gd_transformer(3, []), "step_sizes"),
        (lambda: construct.gd_transformer(3, [0.1, float("inf")]), r"step_sizes\[1\]"),
        (lambda: construct.preconditioned_gd_layer(torch.zeros(3, 4)), "preconditioner"),
        (lambda: construct.preconditioned_gd_layer(torch.zeros(3)), "preconditioner"),
        (lambda: construct.preconditioned_gd_transformer([torch.eye(3), torch.zeros(3, 2)]), r"preconditioners\[1\]"),
        (lambda: construct.preconditioned_gd_transformer([torch.eye(3), torch.eye(2)]), "same shape"),
        (lambda: construct.preconditioned_gd_transformer(torch.eye(3)), "preconditioners"),
        (lambda: construct.preconditioned_gd_transformer([]), "preconditioners"),
        (lambda: construct.gd_plus_plus_layer(-1, 0.1, 0.1, n_context=5), "dim"),
        (lambda: construct.gd_plus_plus_layer(3, 0.1, 0.1, n_context=0), "n_context"),
        (lambda: construct.gd_plus_plus_layer(3, 0.0, 0.1, n_context=5), "step_size"),
        (lambda: construct.gd_plus_plus_layer(3, 0.1, float("nan"), n_context=5), "gamma"),
        (lambda: construct.gd_plus_plus_transformer(3, [0.1, 0.2], [0.1], n_context=5), "gammas"),
    ],
)
def test_bad_input_names_the_parameter(call, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        call()
