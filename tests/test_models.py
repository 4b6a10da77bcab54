"""Linear self-attention: the fast layer against the literal formula and autograd, the sparse and
(11)-form models against preconditioned GD, weight tying, invariances, ensembles and bad input."""

from __future__ import annotations

import pytest
import torch

from icl import baselines, tasks
from icl.models import LinearTransformer, add_balanced_initialisation_, lsa_layer
from icl.tokens import read_out, to_tokens
from icl.train import TrainConfig, train

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def naive_layer(Z: torch.Tensor, P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """Z + (1/n) P Z M Zᵀ Q Z literally, M = diag(I_n, 0). Z: (E, B, d+1, n+1), P, Q: (E, d+1, d+1)."""
    n = Z.shape[-1] - 1
    M = torch.diag(torch.cat([torch.ones(n, dtype=Z.dtype), torch.zeros(1, dtype=Z.dtype)]))
    P, Q = P.unsqueeze(1), Q.unsqueeze(1)
    return Z + P @ Z @ M @ Z.mT @ Q @ Z / n


def prompts(E: int = 2, B: int = 6, n: int = 7, d: int = 3, seed: int = 0, dtype=F64) -> tasks.RegressionBatch:
    covariance = tasks.covariance_from_condition_number(d, 4.0, generator=gen(seed + 100))
    family = covariance.expand(E, d, d) if E else covariance
    return tasks.sample_regression(B, n, family, generator=gen(seed), dtype=dtype)


def symmetric(E: int, d: int, seed: int, L: int | None = None) -> torch.Tensor:
    shape = (E, d, d) if L is None else (E, L, d, d)
    M = torch.randn(shape, generator=gen(seed), dtype=F64) / d
    return (M + M.mT) / 2


def set_(parameter: torch.nn.Parameter, value: torch.Tensor) -> None:
    with torch.no_grad():
        parameter.copy_(value.reshape(parameter.shape))


# --- the layer -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["rows", "canonical"])
def test_lsa_layer_equals_the_literal_formula(layout: str) -> None:
    E, B, n, d = 2, 4, 6, 3
    if layout == "rows":  # to_tokens' layout: the transpose of contiguous token rows
        Z = torch.randn(E, B, n + 1, d + 1, generator=gen(1), dtype=F64).mT
    else:  # a contiguous (E, B, d+1, n+1) array
        Z = torch.randn(E, B, d + 1, n + 1, generator=gen(1), dtype=F64)
    P = torch.randn(E, d + 1, d + 1, generator=gen(2), dtype=F64)
    Q = torch.randn(E, d + 1, d + 1, generator=gen(3), dtype=F64)
    out = lsa_layer(Z, P, Q)
    assert out.shape == Z.shape and out.dtype == F64
    torch.testing.assert_close(out, naive_layer(Z, P, Q), rtol=0, atol=1e-12)


def test_lsa_layer_mask_keeps_the_query_out_of_keys_and_values() -> None:
    """Changing the query column changes no context column, and a zero query token stays zero-updated."""
    E, B, n, d = 1, 3, 5, 2
    Z = torch.randn(E, B, d + 1, n + 1, generator=gen(0), dtype=F64)
    P = torch.randn(E, d + 1, d + 1, generator=gen(1), dtype=F64)
    Q = torch.randn(E, d + 1, d + 1, generator=gen(2), dtype=F64)
    other = Z.clone()
    other[..., -1] = 100 * torch.randn(E, B, d + 1, generator=gen(3), dtype=F64)
    torch.testing.assert_close(lsa_layer(other, P, Q)[..., :n], lsa_layer(Z, P, Q)[..., :n], rtol=0, atol=1e-13)
    assert not torch.allclose(lsa_layer(other, P, Q)[..., n], lsa_layer(Z, P, Q)[..., n])


@pytest.mark.parametrize("layout", ["rows", "canonical"])
def test_lsa_layer_gradcheck(layout: str) -> None:
    E, B, n, d = 2, 3, 4, 2
    if layout == "rows":
        Z = torch.randn(E, B, n + 1, d + 1, generator=gen(4), dtype=F64).mT
    else:
        Z = torch.randn(E, B, d + 1, n + 1, generator=gen(4), dtype=F64)
    Z.requires_grad_(True)
    P = torch.randn(E, d + 1, d + 1, generator=gen(5), dtype=F64, requires_grad=True)
    Q = torch.randn(E, d + 1, d + 1, generator=gen(6), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lsa_layer, (Z, P, Q), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_lsa_layer_gradient_equals_autograd_of_the_literal_formula() -> None:
    """Non-contiguous weights (a layer sliced out of a stack), as the model passes them."""
    E, L, B, n, d = 2, 3, 4, 5, 3
    Z = torch.randn(E, B, n + 1, d + 1, generator=gen(7), dtype=F64).mT.requires_grad_(True)
    P = torch.randn(E, L, d + 1, d + 1, generator=gen(8), dtype=F64, requires_grad=True)
    Q = torch.randn(E, L, d + 1, d + 1, generator=gen(9), dtype=F64, requires_grad=True)
    weight = torch.randn(E, B, d + 1, n + 1, generator=gen(10), dtype=F64)
    fast = torch.autograd.grad((lsa_layer(Z, P[:, 1], Q[:, 1]) * weight).sum(), (Z, P, Q))
    slow = torch.autograd.grad((naive_layer(Z, P[:, 1], Q[:, 1]) * weight).sum(), (Z, P, Q))
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_lsa_layer_weight_gradients_when_the_tokens_are_data() -> None:
    """Z without requires_grad (the first layer's input): ∂/∂P and ∂/∂Q still equal the literal formula's."""
    E, B, n, d = 2, 4, 5, 3
    Z = torch.randn(E, B, n + 1, d + 1, generator=gen(11), dtype=F64).mT
    P = torch.randn(E, d + 1, d + 1, generator=gen(12), dtype=F64, requires_grad=True)
    Q = torch.randn(E, d + 1, d + 1, generator=gen(13), dtype=F64, requires_grad=True)
    weight = torch.randn(E, B, d + 1, n + 1, generator=gen(14), dtype=F64)
    fast = torch.autograd.grad((lsa_layer(Z, P, Q) * weight).sum(), (P, Q))
    slow = torch.autograd.grad((naive_layer(Z, P, Q) * weight).sum(), (P, Q))
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # Through two layers, the second layer's input does need its gradient.
    fast = torch.autograd.grad((lsa_layer(lsa_layer(Z, P, Q), P, Q) * weight).sum(), (P, Q))
    slow = torch.autograd.grad((naive_layer(naive_layer(Z, P, Q), P, Q) * weight).sum(), (P, Q))
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("route", ["kronecker", "direct"])
@pytest.mark.parametrize("d", [2, 12])
def test_both_routes_of_the_layer_match_the_literal_formula(route: str, d: int, monkeypatch) -> None:
    """The layer forms K = Qᵀ G Pᵀ through Q ⊗ Pᵀ up to a width, directly above it: both, at both sizes."""
    from icl.models.linear import _LSALayer

    monkeypatch.setattr(_LSALayer, "KRONECKER_MAX_WIDTH", 10**6 if route == "kronecker" else 0)
    E, B, n = 2, 3, 5
    scale = 0.3  # keeps finite differences accurate at d = 12
    Z = (scale * torch.randn(E, B, n + 1, d + 1, generator=gen(20), dtype=F64)).mT.requires_grad_(True)
    P = (scale * torch.randn(E, d + 1, d + 1, generator=gen(21), dtype=F64)).requires_grad_(True)
    Q = (scale * torch.randn(E, d + 1, d + 1, generator=gen(22), dtype=F64)).requires_grad_(True)
    torch.testing.assert_close(lsa_layer(Z, P, Q), naive_layer(Z, P, Q), rtol=0, atol=1e-12)
    weight = torch.randn(E, B, d + 1, n + 1, generator=gen(23), dtype=F64)
    fast = torch.autograd.grad((lsa_layer(Z, P, Q) * weight).sum(), (Z, P, Q))
    slow = torch.autograd.grad((naive_layer(Z, P, Q) * weight).sum(), (Z, P, Q))
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    if d == 2:
        assert torch.autograd.gradcheck(lsa_layer, (Z, P, Q), eps=1e-6, atol=1e-8, rtol=1e-6)


# --- the sparse model is preconditioned GD -----------------------------------------------------------


def test_sparse_weights_are_the_canonical_blocks() -> None:
    d = 3
    model = LinearTransformer(d, 2, parameterisation="sparse", n_models=2, generator=gen(), dtype=F64)
    P, Q = model.weights()
    assert P.shape == Q.shape == (2, 2, d + 1, d + 1)
    expected_P = torch.zeros(d + 1, d + 1, dtype=F64)
    expected_P[d, d] = 1
    assert torch.equal(P, expected_P.expand_as(P))
    assert torch.equal(Q[..., :d, :d], -model.A) and torch.equal(Q[..., d, :], torch.zeros(2, 2, d + 1, dtype=F64))
    assert torch.equal(Q[..., :, d], torch.zeros(2, 2, d + 1, dtype=F64))
    assert torch.equal(model.preconditioner(), model.A)


@pytest.mark.parametrize("kind", ["identity", "symmetric"])
def test_one_sparse_layer_is_one_preconditioned_gd_step(kind: str) -> None:
    E, d = 2, 3
    batch = prompts(E=E, d=d)
    model = LinearTransformer(d, 1, parameterisation="sparse", n_models=E, generator=gen(), dtype=F64)
    if kind == "identity":
        A = 0.7 * torch.eye(d, dtype=F64).expand(E, d, d)
    else:
        A = symmetric(E, d, seed=11)
    set_(model.A, A)
    prediction = model.predict(batch.X, batch.y, batch.x_query)
    expected = baselines.preconditioned_gd(batch.X, batch.y, batch.x_query, A.unsqueeze(1))
    assert prediction.shape == (E, 6)
    torch.testing.assert_close(prediction, expected, rtol=0, atol=1e-10)
    # Power: a different step size gives a different prediction.
    assert not torch.allclose(prediction, 1.1 * expected, rtol=0, atol=1e-6)


def test_a_non_symmetric_sparse_layer_applies_the_transpose() -> None:
    """papers/README §1.6: written literally, the column form applies Aᵀ."""
    E, d = 1, 3
    batch = prompts(E=E, d=d)
    model = LinearTransformer(d, 1, parameterisation="sparse", generator=gen(), dtype=F64)
    A = torch.randn(E, d, d, generator=gen(12), dtype=F64)
    set_(model.A, A)
    prediction = model.predict(batch.X, batch.y, batch.x_query)
    transposed = baselines.preconditioned_gd(batch.X, batch.y, batch.x_query, A.mT.unsqueeze(1))
    literal = baselines.preconditioned_gd(batch.X, batch.y, batch.x_query, A.unsqueeze(1))
    torch.testing.assert_close(prediction, transposed, rtol=0, atol=1e-10)
    assert (prediction - literal).abs().max() > 1e-3


def test_sparse_layers_are_gd_steps_with_per_layer_preconditioners() -> None:
    E, L, d = 2, 3, 3
    batch = prompts(E=E, d=d, n=9)
    model = LinearTransformer(d, L, parameterisation="sparse", n_models=E, generator=gen(), dtype=F64)
    A = symmetric(E, d, seed=13, L=L) + 0.5 * torch.eye(d, dtype=F64)
    set_(model.A, A)
    prediction = model.predict(batch.X, batch.y, batch.x_query)
    steps = [A[:, layer].unsqueeze(1) for layer in range(L)]  # (E, 1, d, d) each
    expected = baselines.preconditioned_gd(batch.X, batch.y, batch.x_query, steps, n_steps=L)
    torch.testing.assert_close(prediction, expected, rtol=0, atol=1e-10)
    reversed_order = baselines.preconditioned_gd(batch.X, batch.y, batch.x_query, steps[::-1], n_steps=L)
    assert (prediction - reversed_order).abs().max() > 1e-6  # the layers' order matters


def test_sparse_model_gradient_reaches_the_preconditioner() -> None:
    """∂ŷ/∂A through the model equals ∂ŷ/∂A of preconditioned GD with Aᵀ (what the layer applies)."""
    E, d = 2, 3
    batch = prompts(E=E, d=d)
    model = LinearTransformer(d, 1, parameterisation="sparse", n_models=E, init_std=0.3, generator=gen(), dtype=F64)
    weight = torch.randn(E, 6, generator=gen(21), dtype=F64)
    (model.predict(batch.X, batch.y, batch.x_query) * weight).sum().backward()
    A = model.A.detach().clone().requires_grad_(True)
    reference = baselines.preconditioned_gd(batch.X, batch.y, batch.x_query, A.mT)
    (expected,) = torch.autograd.grad((reference * weight).sum(), A)
    torch.testing.assert_close(model.A.grad, expected, rtol=1e-10, atol=1e-12)
    assert model.A.grad.abs().max() > 1e-3


def test_full_model_with_sparse_weights_equals_the_sparse_model() -> None:
    E, L, d = 2, 2, 3
    batch = prompts(E=E, d=d)
    sparse = LinearTransformer(d, L, parameterisation="sparse", n_models=E, generator=gen(1), dtype=F64)
    full = LinearTransformer(d, L, parameterisation="full", n_models=E, generator=gen(2), dtype=F64)
    P, Q = sparse.weights()
    set_(full.P, P.detach())
    set_(full.Q, Q.detach())
    torch.testing.assert_close(
        full.predict(batch.X, batch.y, batch.x_query),
        sparse.predict(batch.X, batch.y, batch.x_query),
        rtol=0,
        atol=1e-12,
    )
    torch.testing.assert_close(full.preconditioner(), sparse.preconditioner(), rtol=0, atol=0)


# --- the (11)-form ---------------------------------------------------------------------------------


def test_eleven_form_moves_the_x_rows() -> None:
    """X ← X − (1/n) B X M Xᵀ A X and y ← y − (1/n) y M Xᵀ A X, in the column layout."""
    E, n, d = 2, 7, 3
    batch = prompts(E=E, d=d, n=n)
    model = LinearTransformer(d, 1, parameterisation="eleven", n_models=E, generator=gen(), dtype=F64)
    A = torch.randn(E, d, d, generator=gen(14), dtype=F64)
    B = torch.randn(E, d, d, generator=gen(15), dtype=F64)
    set_(model.A, A)
    set_(model.B, B)
    Z = to_tokens(batch.X, batch.y, batch.x_query)  # (E, b, d+1, n+1)
    X, y = Z[..., :d, :], Z[..., d, :]
    context, labels = X[..., :n], y[..., :n]
    A_, B_ = A.unsqueeze(1), B.unsqueeze(1)
    kernel = context.mT @ A_ @ X / n  # (E, b, n, n+1): (1/n) x_iᵀ A x_j
    expected_X = X - B_ @ context @ kernel
    expected_y = y - (labels.unsqueeze(-2) @ kernel).squeeze(-2)
    out = model(Z)
    torch.testing.assert_close(out[..., :d, :], expected_X, rtol=0, atol=1e-12)
    torch.testing.assert_close(out[..., d, :], expected_y, rtol=0, atol=1e-12)
    assert (out[..., :d, :] - X).abs().max() > 1e-3  # the x rows did move


def test_eleven_form_with_zero_b_is_the_sparse_model_and_last_b_is_inert() -> None:
    E, L, d = 2, 3, 3
    batch = prompts(E=E, d=d)
    eleven = LinearTransformer(d, L, parameterisation="eleven", n_models=E, generator=gen(1), dtype=F64)
    sparse = LinearTransformer(d, L, parameterisation="sparse", n_models=E, generator=gen(2), dtype=F64)
    A = symmetric(E, d, seed=16, L=L)
    set_(eleven.A, A)
    set_(sparse.A, A)
    set_(eleven.B, torch.zeros(E, L, d, d, dtype=F64))
    args = (batch.X, batch.y, batch.x_query)
    torch.testing.assert_close(eleven.predict(*args), sparse.predict(*args), rtol=0, atol=1e-12)
    # B_{L−1} has no effect on the output (papers/README §1.9); an earlier B does.
    with torch.no_grad():
        eleven.B[:, L - 1] = torch.randn(E, d, d, generator=gen(17), dtype=F64)
    torch.testing.assert_close(eleven.predict(*args), sparse.predict(*args), rtol=0, atol=1e-12)
    with torch.no_grad():
        eleven.B[:, 0] = torch.randn(E, d, d, generator=gen(18), dtype=F64)
    assert (eleven.predict(*args) - sparse.predict(*args)).abs().max() > 1e-6


# --- weight tying ----------------------------------------------------------------------------------


@pytest.mark.parametrize("parameterisation", ["full", "sparse", "eleven"])
def test_looped_model_has_one_set_of_weights(parameterisation: str) -> None:
    E, L, d = 2, 4, 3
    looped = LinearTransformer(d, L, parameterisation=parameterisation, looped=True, n_models=E, generator=gen())
    untied = LinearTransformer(d, L, parameterisation=parameterisation, n_models=E, generator=gen())
    size = d + 1 if parameterisation == "full" else d
    assert all(p.shape == (E, 1, size, size) for p in looped.parameters())
    assert all(p.shape == (E, L, size, size) for p in untied.parameters())
    assert sum(p.numel() for p in untied.parameters()) == L * sum(p.numel() for p in looped.parameters())


@pytest.mark.parametrize("parameterisation", ["full", "sparse", "eleven"])
def test_looped_model_equals_untied_model_with_identical_copies(parameterisation: str) -> None:
    E, L, d = 2, 3, 3
    batch = prompts(E=E, d=d)
    looped = LinearTransformer(
        d, L, parameterisation=parameterisation, looped=True, n_models=E, init_std=0.3, generator=gen(1), dtype=F64
    )
    untied = LinearTransformer(d, L, parameterisation=parameterisation, n_models=E, generator=gen(2), dtype=F64)
    for tied, free in zip(looped.parameters(), untied.parameters(), strict=True):
        set_(free, tied.detach().expand(E, L, *tied.shape[2:]))
    args = (batch.X, batch.y, batch.x_query)
    torch.testing.assert_close(looped.predict(*args), untied.predict(*args), rtol=0, atol=1e-12)
    with torch.no_grad():  # power: untie one layer and the outputs part
        next(iter(untied.parameters()))[:, 1] += 0.1
    assert (looped.predict(*args) - untied.predict(*args)).abs().max() > 1e-6


def test_looped_sparse_model_is_gd_with_a_fixed_preconditioner() -> None:
    E, L, d = 1, 4, 3
    batch = prompts(E=E, d=d, n=10)
    model = LinearTransformer(d, L, parameterisation="sparse", looped=True, generator=gen(), dtype=F64)
    A = symmetric(E, d, seed=19) + 0.4 * torch.eye(d, dtype=F64)
    set_(model.A, A)
    expected = baselines.preconditioned_gd(batch.X, batch.y, batch.x_query, A.unsqueeze(1), n_steps=L)
    torch.testing.assert_close(model.predict(batch.X, batch.y, batch.x_query), expected, rtol=0, atol=1e-10)


# --- invariances -----------------------------------------------------------------------------------


@pytest.mark.parametrize("parameterisation", ["full", "eleven"])
def test_permuting_the_context_leaves_the_prediction_unchanged(parameterisation: str) -> None:
    E, L, d, n = 2, 2, 3, 8
    batch = prompts(E=E, d=d, n=n)
    model = LinearTransformer(
        d, L, parameterisation=parameterisation, n_models=E, init_std=0.3, generator=gen(), dtype=F64
    )
    permutation = torch.randperm(n, generator=gen(20))
    assert not torch.equal(permutation, torch.arange(n))
    original = model.predict(batch.X, batch.y, batch.x_query)
    permuted = model.predict(batch.X[..., permutation, :], batch.y[..., permutation], batch.x_query)
    torch.testing.assert_close(permuted, original, rtol=0, atol=1e-12)
    # Power: relabelling one example (not a permutation) does change it.
    y = batch.y.clone()
    y[..., 0] += 1.0
    assert (model.predict(batch.X, y, batch.x_query) - original).abs().max() > 1e-6


def test_y_query_cannot_enter_the_model() -> None:
    """The query's label slot of Z is 0 whatever y_query is, so the prediction cannot depend on it."""
    batch = prompts(E=2)
    Z = to_tokens(batch.X, batch.y, batch.x_query)
    assert torch.equal(Z[..., -1, -1], torch.zeros_like(batch.y_query))
    model = LinearTransformer(3, 2, n_models=2, init_std=0.3, generator=gen(), dtype=F64)
    before = model.predict(batch.X, batch.y, batch.x_query)
    # The training loss uses y_query only as the target: the prediction is a function of (X, y, x_query).
    assert torch.equal(read_out(model(Z)), before)


def test_gauge_leaves_predictions_and_preconditioner_unchanged() -> None:
    E, d, gamma = 2, 3, 3.7
    batch = prompts(E=E, d=d)
    model = LinearTransformer(d, 2, parameterisation="full", n_models=E, init_std=0.3, generator=gen(), dtype=F64)
    before, preconditioner = model.predict(batch.X, batch.y, batch.x_query), model.preconditioner().clone()
    with torch.no_grad():
        model.P.mul_(gamma)
        model.Q.div_(gamma)
    torch.testing.assert_close(model.predict(batch.X, batch.y, batch.x_query), before, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.preconditioner(), preconditioner, rtol=1e-12, atol=0)
    with torch.no_grad():  # power: scaling P alone changes both
        model.P.mul_(2.0)
    assert (model.predict(batch.X, batch.y, batch.x_query) - before).abs().max() > 1e-6
    assert not torch.allclose(model.preconditioner(), preconditioner)


def test_preconditioner_of_the_full_model() -> None:
    d = 3
    model = LinearTransformer(d, 2, n_models=2, init_std=0.5, generator=gen(), dtype=F64)
    expected = -model.P[..., d, d, None, None] * model.Q[..., :d, :d]
    assert model.preconditioner().shape == (2, 2, d, d)
    assert torch.equal(model.preconditioner(), expected)


# --- ensembles -------------------------------------------------------------------------------------


class FixedData:
    """A sampler that returns the same batch at every step (and never touches the generator)."""

    def __init__(self, batch: tasks.RegressionBatch) -> None:
        self.batch = batch

    def __call__(self, generator: torch.Generator) -> tasks.RegressionBatch:
        return self.batch


@pytest.mark.parametrize("parameterisation", ["full", "eleven"])
def test_ensemble_members_train_as_they_would_alone(parameterisation: str) -> None:
    E, d = 2, 3
    batch = prompts(E=E, d=d, B=16)
    ensemble = LinearTransformer(
        d, 2, parameterisation=parameterisation, n_models=E, init_std=0.2, generator=gen(), dtype=F64
    )
    initial = {name: p.detach().clone() for name, p in ensemble.named_parameters()}
    config = TrainConfig(steps=15, learning_rate=0.05)
    together = train(ensemble, FixedData(batch), config, generator=gen(), progress=False).losses
    assert together.shape == (15, E)
    for e in range(E):
        alone = LinearTransformer(d, 2, parameterisation=parameterisation, generator=gen(), dtype=F64)
        for name, p in alone.named_parameters():
            set_(p, initial[name][e : e + 1])
        member = tasks.RegressionBatch(*(t[e : e + 1] for t in batch))
        losses = train(alone, FixedData(member), config, generator=gen(), progress=False).losses
        torch.testing.assert_close(losses[:, 0], together[:, e], rtol=1e-12, atol=1e-14)
        for name, p in alone.named_parameters():
            trained = dict(ensemble.named_parameters())[name][e : e + 1]
            torch.testing.assert_close(p, trained, rtol=1e-10, atol=1e-13)
            assert not torch.allclose(p, initial[name][e : e + 1])  # it did train


def test_ensemble_members_see_their_own_data() -> None:
    E, d = 2, 3
    batch = prompts(E=E, d=d)
    model = LinearTransformer(d, 1, n_models=E, init_std=0.3, generator=gen(), dtype=F64)
    with torch.no_grad():
        model.P[1] = model.P[0]
        model.Q[1] = model.Q[0]
    same = model.predict(batch.X[[0, 0]], batch.y[[0, 0]], batch.x_query[[0, 0]])
    assert torch.equal(same[0], same[1])
    other = model.predict(batch.X, batch.y, batch.x_query)
    assert torch.equal(other[0], same[0]) and not torch.allclose(other[1], same[1])


# --- shapes and bad input --------------------------------------------------------------------------


def test_shapes_dtypes_and_single_model_without_ensemble_axis() -> None:
    d, n, B = 3, 5, 4
    model = LinearTransformer(d, 2, generator=gen())
    assert model.P.dtype == torch.float32 and model.P.shape == (1, 2, d + 1, d + 1)
    batch = prompts(E=0, d=d, n=n, B=B, dtype=torch.float32)
    prediction = model.predict(batch.X, batch.y, batch.x_query)
    assert prediction.shape == (B,) and prediction.dtype == torch.float32
    Z = to_tokens(batch.X, batch.y, batch.x_query)
    assert model(Z).shape == Z.shape
    assert torch.equal(model(Z.unsqueeze(0))[0], model(Z))


def test_initialisation_is_reproducible_and_scaled() -> None:
    a = LinearTransformer(4, 2, n_models=3, init_std=0.1, generator=gen(5))
    b = LinearTransformer(4, 2, n_models=3, init_std=0.1, generator=gen(5))
    c = LinearTransformer(4, 2, n_models=3, init_std=0.1, generator=gen(6))
    assert torch.equal(a.P, b.P) and torch.equal(a.Q, b.Q) and not torch.equal(a.P, c.P)
    assert not torch.equal(a.P[0], a.P[1])  # each member starts elsewhere
    values = torch.cat([a.P.flatten(), a.Q.flatten()])
    assert 0.08 < values.std().item() < 0.12  # 300 draws: std within ~4 s.e. of 0.1
    zero = LinearTransformer(4, 1, init_std=0.0, generator=gen())
    assert torch.equal(zero.P, torch.zeros_like(zero.P))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(dim=-1), "dim"),
        (dict(dim=0), "dim"),
        (dict(dim=2.5), "dim"),
        (dict(n_layers=0), "n_layers"),
        (dict(n_layers=1.5), "n_layers"),
        (dict(parameterisation="dense"), "parameterisation"),
        (dict(n_models=0), "n_models"),
        (dict(init_std=-0.1), "init_std"),
        (dict(init_std=float("nan")), "init_std"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs: dict, name: str) -> None:
    arguments = dict(dim=3, n_layers=1) | kwargs
    with pytest.raises(ValueError, match=name):
        LinearTransformer(**arguments, generator=gen())


def test_parameterisation_error_lists_the_choices() -> None:
    message = r"unknown parameterisation 'dense'; choose one of \['eleven', 'full', 'sparse', 'sparse_u'\]"
    with pytest.raises(ValueError, match=message):
        LinearTransformer(3, parameterisation="dense", generator=gen())


def test_wrong_token_shapes_are_rejected() -> None:
    model = LinearTransformer(3, n_models=2, generator=gen())
    with pytest.raises(ValueError, match=r"Z must have shape \(E=2"):
        model(torch.zeros(5, 4, 6))  # no ensemble axis with two models
    with pytest.raises(ValueError, match="d\\+1=4"):
        model(torch.zeros(2, 5, 3, 6))  # d + 1 = 3, not 4
    with pytest.raises(ValueError, match="Z must have shape"):
        model(torch.zeros(3, 5, 4, 6))  # three models' prompts for two models


# --- the balanced initialisation -------------------------------------------------------------------


def test_balanced_initialisation_adds_a_psd_preconditioner() -> None:
    d, E, scale = 3, 2, 0.5
    model = LinearTransformer(d, 1, n_models=E, init_std=0.0, generator=gen(), dtype=F64)
    add_balanced_initialisation_(model, scale, generator=gen(1))
    expected_P = torch.zeros(E, 1, d + 1, d + 1, dtype=F64)
    expected_P[..., d, d] = scale
    assert torch.equal(model.P, expected_P)
    assert torch.equal(model.Q[..., d, :], torch.zeros(E, 1, d + 1, dtype=F64))
    assert torch.equal(model.Q[..., :, d], torch.zeros(E, 1, d + 1, dtype=F64))
    A = model.preconditioner()[:, 0]  # scale² ΘΘᵀ / ‖ΘΘᵀ‖_F
    torch.testing.assert_close(A, A.mT, rtol=0, atol=1e-15)
    assert (torch.linalg.eigvalsh(A) >= -1e-12).all()
    torch.testing.assert_close(torch.linalg.matrix_norm(A), torch.full((E,), scale**2, dtype=F64), rtol=1e-12, atol=0)
    assert not torch.allclose(A[0], A[1])  # one Θ per model


def test_balanced_initialisation_is_added_on_top_and_reproducible() -> None:
    a = LinearTransformer(3, 1, n_models=2, init_std=0.01, generator=gen(), dtype=F64)
    b = LinearTransformer(3, 1, n_models=2, init_std=0.01, generator=gen(), dtype=F64)
    P0 = a.P.detach().clone()
    add_balanced_initialisation_(a, 0.5, generator=gen(3))
    add_balanced_initialisation_(b, 0.5, generator=gen(3))
    assert torch.equal(a.P, b.P) and torch.equal(a.Q, b.Q)
    difference = a.P - P0
    assert torch.equal(difference[..., :3, :], torch.zeros_like(difference[..., :3, :]))
    torch.testing.assert_close(difference[..., 3, 3], torch.full((2, 1), 0.5, dtype=F64), rtol=1e-12, atol=0)


def test_balanced_initialisation_bad_input() -> None:
    sparse = LinearTransformer(3, parameterisation="sparse", generator=gen())
    with pytest.raises(ValueError, match="parameterisation='full'"):
        add_balanced_initialisation_(sparse, 0.5, generator=gen())
    full = LinearTransformer(3, generator=gen())
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="scale"):
            add_balanced_initialisation_(full, bad, generator=gen())


def test_a_prompt_without_context_is_rejected() -> None:
    model = LinearTransformer(2, generator=gen(), dtype=F64)
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 4, 3, 1, dtype=F64))


# --- sparse_u: Gatmiry et al.'s vector u, in P's label row and in Q's label row -----------------------------------


def test_sparse_u_weights_and_the_zero_vector() -> None:
    d = 3
    model = LinearTransformer(
        d, 2, parameterisation="sparse_u", looped=True, n_models=2, init_std=0.3, generator=gen(1)
    )
    assert model.A.shape == (2, 1, d, d) and model.u_P.shape == model.u_Q.shape == (2, 1, d)
    P, Q = model.weights()
    torch.testing.assert_close(P[..., d, :d], model.u_P)
    torch.testing.assert_close(Q[..., d, :d], -model.u_Q)
    torch.testing.assert_close(Q[..., :d, :d], -model.A)
    assert (P[..., :d, :] == 0).all() and (Q[..., :, d] == 0).all() and (P[..., d, d] == 1).all()
    # With u = 0 the model is the sparse one with the same A.
    sparse = LinearTransformer(d, 2, parameterisation="sparse", looped=True, n_models=2, generator=gen(2))
    with torch.no_grad():
        sparse.A.copy_(model.A)
        model.u_P.zero_()
        model.u_Q.zero_()
    b = tasks.sample_regression(50, 7, torch.eye(d).expand(2, d, d), generator=gen(3), dtype=torch.float64)
    model, sparse = model.double(), sparse.double()
    torch.testing.assert_close(model.predict(b.X, b.y, b.x_query), sparse.predict(b.X, b.y, b.x_query))


def test_sparse_u_in_the_values_shifts_the_labels_for_one_layer() -> None:
    """One layer with u_P (u_Q = 0) reads the values y_i + u_Pᵀx_i: the sparse layer on shifted labels."""
    d = 4
    model = LinearTransformer(d, 1, parameterisation="sparse_u", init_std=0.4, generator=gen(4), dtype=torch.float64)
    with torch.no_grad():
        model.u_Q.zero_()
    b = tasks.sample_regression(40, 9, torch.eye(d), generator=gen(5), dtype=torch.float64)
    shifted = b.y + b.X @ model.u_P[0, 0]
    expected = baselines.preconditioned_gd(b.X, shifted, b.x_query, model.A[0, 0].mT.detach())
    torch.testing.assert_close(model.predict(b.X, b.y, b.x_query), expected.detach())


def test_sparse_u_trains_u() -> None:
    model = LinearTransformer(3, 2, parameterisation="sparse_u", looped=True, init_std=0.1, generator=gen(6))
    b = tasks.sample_regression(64, 8, torch.eye(3), generator=gen(7))
    ((model.predict(b.X, b.y, b.x_query) - b.y_query) ** 2).mean().backward()
    assert model.u_P.grad.abs().sum() > 0 and model.u_Q.grad.abs().sum() > 0


def test_load_weights_refuses_sparse_u() -> None:
    from icl import construct

    model = LinearTransformer(3, 1, parameterisation="sparse_u", generator=gen(8), dtype=torch.float64)
    with pytest.raises(ValueError, match="sparse_u"):
        construct.load_weights_(model, construct.gd_layer(3, 0.5))


@pytest.mark.parametrize(("parameterisation", "looped"), [("sparse", False), ("sparse_u", False), ("sparse_u", True)])
def test_label_row_forward_equals_the_literal_layers(parameterisation: str, looped: bool) -> None:
    """The sparse forms' O(n d) label-row path against L literal layers Z + (1/n) P Z M Zᵀ Q Z, in value
    and in the gradient of every parameter and of the tokens (a nonzero query label slot included)."""
    E, L, d, n = 2, 3, 4, 9
    model = LinearTransformer(
        d, L, parameterisation=parameterisation, looped=looped, n_models=E, init_std=0.3, generator=gen(9), dtype=F64
    )
    Z = torch.randn(E, 5, d + 1, n + 1, generator=gen(10), dtype=F64, requires_grad=True)
    weight = torch.randn(E, 5, d + 1, n + 1, generator=gen(11), dtype=F64)
    fast = model(Z)
    P, Q = model.weights()
    literal = Z
    for layer in range(L):
        index = 0 if looped else layer
        literal = naive_layer(literal, P[:, index], Q[:, index])
    torch.testing.assert_close(fast, literal, rtol=0, atol=1e-12)
    inputs = (Z, *model.parameters())
    expected = torch.autograd.grad((literal * weight).sum(), inputs)
    for got, want in zip(torch.autograd.grad((fast * weight).sum(), inputs), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_label_rows_loops_on_a_looped_model_and_refuses_what_it_cannot_do() -> None:
    d, n = 3, 8
    looped = LinearTransformer(
        d, 2, parameterisation="sparse_u", looped=True, init_std=0.2, generator=gen(12), dtype=F64
    )
    batch = prompts(E=1, d=d, n=n)
    Z = to_tokens(batch.X, batch.y, batch.x_query)
    rows = list(looped.label_rows(Z, 5))  # more loops than the model was built with
    assert len(rows) == 5 and all(r.shape == (1, 6, n + 1) for r in rows)
    torch.testing.assert_close(-rows[1][..., n], looped.predict(batch.X, batch.y, batch.x_query))
    untied = LinearTransformer(d, 2, parameterisation="sparse", generator=gen(13), dtype=F64)
    with pytest.raises(ValueError, match="n_loops"):
        list(untied.label_rows(Z, 3))
    with pytest.raises(ValueError, match="sparse"):
        list(LinearTransformer(d, 1, parameterisation="full", generator=gen(14), dtype=F64).label_rows(Z, 1))


@pytest.mark.parametrize("parameterisation", ["sparse_u", "full"])
def test_loop_counts_train_several_values_of_l_in_one_ensemble_exactly(parameterisation: str) -> None:
    """Members with loop counts (1, 3, 2) give the predictions and gradients of three separate looped models."""
    d, counts = 3, (1, 3, 2)
    batch = prompts(E=3, d=d)
    args = (batch.X, batch.y, batch.x_query)
    joint = LinearTransformer(
        d,
        3,
        parameterisation=parameterisation,
        looped=True,
        n_models=3,
        init_std=0.3,
        generator=gen(15),
        dtype=F64,
        loop_counts=counts,
    )
    joint_loss = (joint.predict(*args) ** 2).sum()
    joint_grads = torch.autograd.grad(joint_loss, list(joint.parameters()))
    for e, L in enumerate(counts):
        alone = LinearTransformer(d, L, parameterisation=parameterisation, looped=True, generator=gen(16), dtype=F64)
        for mine, theirs in zip(alone.parameters(), joint.parameters(), strict=True):
            set_(mine, theirs.detach()[e : e + 1])
        member = [t[e : e + 1] for t in args]
        prediction = alone.predict(*member)
        torch.testing.assert_close(joint.predict(*args)[e : e + 1], prediction, rtol=0, atol=1e-12)
        grads = torch.autograd.grad((prediction**2).sum(), list(alone.parameters()))
        for got, want in zip(joint_grads, grads, strict=True):
            torch.testing.assert_close(got[e : e + 1], want, rtol=0, atol=1e-10)


def test_loop_counts_are_validated() -> None:
    with pytest.raises(ValueError, match="loop_counts"):
        LinearTransformer(
            3, 3, parameterisation="sparse", looped=False, n_models=2, generator=gen(), loop_counts=(1, 3)
        )
    with pytest.raises(ValueError, match="loop_counts"):
        LinearTransformer(3, 3, parameterisation="sparse", looped=True, n_models=2, generator=gen(), loop_counts=(1, 2))
    with pytest.raises(ValueError, match="loop_counts"):
        LinearTransformer(3, 3, parameterisation="sparse", looped=True, n_models=2, generator=gen(), loop_counts=(0, 3))


@pytest.mark.parametrize("parameterisation", ["full", "sparse", "eleven"])
def test_query_weights_give_the_prediction_for_every_query(parameterisation: str) -> None:
    """ŷ = vᵀx_q with v from the context alone, for dense random weights (every block of P and Q in play)."""
    model = LinearTransformer(3, parameterisation=parameterisation, n_models=2, init_std=0.5, generator=gen(1))
    model.double()
    b = prompts(E=2, n=9)
    v = model.query_weights(b.X, b.y)
    assert v.shape == (2, 6, 3)
    torch.testing.assert_close((v * b.x_query).sum(-1), model.predict(b.X, b.y, b.x_query), rtol=1e-12, atol=1e-12)
    other = torch.randn(b.x_query.shape, generator=gen(2), dtype=F64)  # any query: the context fixes v
    torch.testing.assert_close((v * other).sum(-1), model.predict(b.X, b.y, other), rtol=1e-12, atol=1e-12)
    shared = prompts(E=0, n=9)  # one context for both members
    expanded = [t.expand(2, *t.shape) for t in (shared.X, shared.y)]
    torch.testing.assert_close(model.query_weights(shared.X, shared.y), model.query_weights(*expanded))


def test_query_weights_need_one_layer() -> None:
    model = LinearTransformer(3, 2, generator=gen(0))
    b = prompts(E=1)
    with pytest.raises(ValueError, match="one-layer"):
        model.query_weights(b.X, b.y)


def test_the_twice_differentiable_layer_is_the_same_function() -> None:
    from icl.models.linear import attention_layer, lsa_layer

    generator = torch.Generator().manual_seed(0)
    Z = torch.randn(2, 7, 4, 9, generator=generator, dtype=torch.float64)
    P, Q = torch.randn(2, 2, 4, 4, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(attention_layer(Z, P, Q), lsa_layer(Z, P, Q))
    fast = LinearTransformer(3, 3, parameterisation="eleven", n_models=2, generator=torch.Generator().manual_seed(1))
    plain = LinearTransformer(
        3,
        3,
        parameterisation="eleven",
        n_models=2,
        generator=torch.Generator().manual_seed(1),
        twice_differentiable=True,
    )
    torch.testing.assert_close(plain(Z.float()), fast(Z.float()))


def test_softmax_attention_normalises_over_every_key_then_masks_the_query() -> None:
    """Ahn et al. 2024's code: z_j ← z_j + (1/n) Σ_{i < n+1} softmax_i(z_iᵀ Q z_j) P z_i, the softmax taken over all
    n + 1 keys (the query's own among them), written out token by token."""
    from icl.models.linear import attention_layer

    generator = torch.Generator().manual_seed(2)
    Z = torch.randn(1, 1, 4, 9, generator=generator, dtype=torch.float64)
    P, Q = torch.randn(2, 1, 4, 4, generator=generator, dtype=torch.float64)
    z, n = Z[0, 0], 8
    scores = z.mT @ Q[0] @ z  # (n+1, n+1): [i, j] = z_iᵀ Q z_j
    weights = torch.softmax(scores, dim=0)
    expected = torch.stack(
        [z[:, j] + sum(weights[i, j] * (P[0] @ z[:, i]) for i in range(n)) / n for j in range(n + 1)], dim=1
    )
    torch.testing.assert_close(attention_layer(Z, P, Q, "softmax")[0, 0], expected)
    with pytest.raises(ValueError, match="attention"):
        LinearTransformer(3, 1, attention="relu", generator=torch.Generator())
    with pytest.raises(ValueError, match="softmax"):
        LinearTransformer(3, 1, parameterisation="sparse", attention="softmax", generator=torch.Generator())
