"""Hand-built LSA weights: (preconditioned) GD steps and GD++ as canonical (P, Q) (papers/README §1.6, §1.9, §2(b)).

Shapes: ``d`` covariate dimension, ``n`` context length (query excluded), ``K`` layers = steps.

Canonical layer: Z ← Z + (1/n) P Z M Zᵀ Q Z with Z: (d+1, n+1) (tokens are columns, the query last
with label slot 0), M = diag(I_n, 0), and read-out ŷ = −Z[d, n]. Every construction here returns
P, Q: (d+1, d+1) for one layer (:class:`LayerWeights`) or (K, d+1, d+1) for K stacked layers
(:class:`TransformerWeights`); :func:`load_weights_` copies them into an
:class:`icl.models.LinearTransformer`, which then runs them.

With P = [[B, 0], [0, 1]] and Q = −diag(A, 0) the layer moves the rows of Z = [X̃; ỹ] (X̃: (d, n+1)
covariates of every token, X: (d, n) those of the context, y: (1, n) the context labels) as

    X̃ ← X̃ − (1/n) B X Xᵀ A X̃,      ỹ ← ỹ − (1/n) y Xᵀ A X̃,

so B = 0 is one preconditioned GD step on the labels (Ahn et al. 2023, Lemma 1; von Oswald et al.
2023, Prop. 1) and B = bI, A = ηI adds von Oswald's GD++ covariate step (App. A.10).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from icl.config import finite_float, positive_int, square_matrix
from icl.models import LinearTransformer


class LayerWeights(NamedTuple):
    """Canonical weights of one LSA layer: P, Q: (d+1, d+1)."""

    P: torch.Tensor
    Q: torch.Tensor


class TransformerWeights(NamedTuple):
    """Canonical weights of K stacked LSA layers: P, Q: (K, d+1, d+1); layer ℓ is (P[ℓ], Q[ℓ])."""

    P: torch.Tensor
    Q: torch.Tensor


def _blocks(A: torch.Tensor, B: torch.Tensor | None) -> LayerWeights:
    """P = [[B, 0], [0, 1]] (B = 0 if None), Q = −diag(A, 0), from A, B: (d, d)."""
    d = A.shape[-1]
    Q = torch.zeros(d + 1, d + 1, dtype=A.dtype, device=A.device)
    Q[:d, :d] = -A  # the minus sign makes A the step's preconditioner: the read-out ŷ = −Z[d, n] flips it back
    P = torch.zeros_like(Q)
    P[d, d] = 1.0  # the label row reads the attention output: y ← y − (1/n) y Xᵀ A X̃
    if B is not None:
        P[:d, :d] = B  # the covariate rows move too: X̃ ← X̃ − (1/n) B X Xᵀ A X̃
    return LayerWeights(P, Q)


def _stack(layers: Sequence[LayerWeights]) -> TransformerWeights:
    return TransformerWeights(torch.stack([w.P for w in layers]), torch.stack([w.Q for w in layers]))


def _floats(name: str, values: object) -> list[float]:
    """A non-empty sequence (or 1-d tensor) of finite floats, each checked under ``name[k]``."""
    if isinstance(values, torch.Tensor):
        if values.ndim != 1:
            raise ValueError(
                f"{name} must be a 1-d sequence of K >= 1 numbers, got a tensor of shape {tuple(values.shape)}"
            )
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of finite numbers (one per layer), got {values!r}")
    return [finite_float(f"{name}[{k}]", v) for k, v in enumerate(values)]


def gd_layer(dim: int, step_size: float, *, dtype: torch.dtype = torch.float64) -> LayerWeights:
    """One GD step of size η on R(w) = (1/2n) Σ (⟨w, x_i⟩ − y_i)² from w = 0 -> P, Q: (d+1, d+1).

    P = diag(0_d, 1), Q = −η diag(I_d, 0) (von Oswald et al. 2023, Prop. 1, in the canonical form of
    papers/README §2(b)). The layer leaves the covariate rows unchanged, turns every context label into
    the residual y_i − ⟨w₁, x_i⟩ with w₁ = η h, h = (1/n) Σ y_i x_i, and writes −⟨w₁, x_q⟩ in the query's
    label slot (Ahn et al. 2023, Lemma 1).
    """
    dim = positive_int("dim", dim)
    step_size = finite_float("step_size", step_size)
    return _blocks(step_size * torch.eye(dim, dtype=dtype), None)


def preconditioned_gd_layer(preconditioner: torch.Tensor) -> LayerWeights:
    """One preconditioned GD step w ← w − A ∇R(w) from w = 0 -> P, Q: (d+1, d+1), in A's dtype and device.

    P = diag(0_d, 1), Q = −diag(A, 0): the sparse layer of Ahn et al. 2023 (eq. 8, Lemma 1). Written in
    columns the layer applies Aᵀ (papers/README §1.6): for a non-symmetric A it is the step with Aᵀ.
    preconditioner: A, (d, d).
    """
    return _blocks(square_matrix("preconditioner", preconditioner), None)


def gd_transformer(dim: int, step_sizes: Sequence[float], *, dtype: torch.dtype = torch.float64) -> TransformerWeights:
    """K GD steps with step sizes η_1 … η_K from w = 0 -> P, Q: (K, d+1, d+1), one :func:`gd_layer` per step."""
    dim = positive_int("dim", dim)
    return _stack([gd_layer(dim, eta, dtype=dtype) for eta in _floats("step_sizes", step_sizes)])


def preconditioned_gd_transformer(preconditioners: torch.Tensor | Sequence[torch.Tensor]) -> TransformerWeights:
    """K preconditioned GD steps w ← w − A_ℓ ∇R(w), ℓ = 1 … K, from w = 0 -> P, Q: (K, d+1, d+1).

    preconditioners: (K, d, d), or a sequence of K (d, d) matrices; layer ℓ is
    :func:`preconditioned_gd_layer` (A_ℓ) (Ahn et al. 2023, eq. 8 and Lemma 1).
    """
    if isinstance(preconditioners, torch.Tensor):
        if preconditioners.ndim != 3:
            raise ValueError(f"preconditioners must have shape (K, d, d), got {tuple(preconditioners.shape)}")
        preconditioners = list(preconditioners)
    if isinstance(preconditioners, (str, bytes)) or not isinstance(preconditioners, Sequence) or not preconditioners:
        raise ValueError(f"preconditioners must be a (K, d, d) tensor or a non-empty sequence, got {preconditioners!r}")
    layers = [square_matrix(f"preconditioners[{k}]", A) for k, A in enumerate(preconditioners)]
    shapes = {A.shape for A in layers}
    if len(shapes) != 1:
        raise ValueError(f"preconditioners must all have the same shape (d, d), got {sorted(map(tuple, shapes))}")
    return _stack([preconditioned_gd_layer(A) for A in layers])


def gd_plus_plus_layer(
    dim: int, step_size: float, gamma: float, *, n_context: int, dtype: torch.dtype = torch.float64
) -> LayerWeights:
    """One GD++ layer (von Oswald et al. 2023, App. A.10) in the (11)-form -> P, Q: (d+1, d+1).

    P = [[b I, 0], [0, 1]], Q = −diag(a I, 0) with a = η and b = γ n / η. Every covariate, context and
    query alike, moves as x ← x − γ X Xᵀ x = x − γ Σ_i x_i x_iᵀ x (von Oswald's γ: no 1/N), while the
    labels take the GD step of :func:`gd_layer` on the layer's input covariates. Derivation in one line:
    the (11)-form moves X̃ ← X̃ − (1/n) b a X Xᵀ X̃, so (1/n) a b = γ, i.e. a·b = γ n (papers/README §1.9,
    §2(b)). The weights therefore depend on n = ``n_context``: run on prompts of another context length,
    the layer applies γ' = γ n / n'. A layer with γ ≠ 0 needs η ≠ 0 (P[d, d] = 1 fixes the gauge).
    """
    dim = positive_int("dim", dim)
    step_size = finite_float("step_size", step_size)
    gamma = finite_float("gamma", gamma)
    n_context = positive_int("n_context", n_context)
    if gamma != 0 and step_size == 0:
        raise ValueError(f"step_size must be non-zero when gamma != 0 (b = gamma * n / step_size); got gamma={gamma!r}")
    b = gamma * n_context / step_size if gamma != 0 else 0.0
    eye = torch.eye(dim, dtype=dtype)
    return _blocks(step_size * eye, b * eye)


def gd_plus_plus_transformer(
    dim: int,
    step_sizes: Sequence[float],
    gammas: Sequence[float],
    *,
    n_context: int,
    dtype: torch.dtype = torch.float64,
) -> TransformerWeights:
    """K GD++ layers (η_ℓ, γ_ℓ), ℓ = 1 … K -> P, Q: (K, d+1, d+1); the prediction is
    :func:`icl.baselines.gd_plus_plus` with the same arguments. γ_K has no effect on the prediction
    (the last layer's B; papers/README §1.9). See :func:`gd_plus_plus_layer` for a·b = γ n."""
    dim = positive_int("dim", dim)
    etas, gammas = _floats("step_sizes", step_sizes), _floats("gammas", gammas)
    if len(gammas) != len(etas):
        raise ValueError(f"gammas must hold one value per layer: got {len(gammas)} gammas for {len(etas)} step_sizes")
    return _stack(
        [gd_plus_plus_layer(dim, eta, g, n_context=n_context, dtype=dtype) for eta, g in zip(etas, gammas, strict=True)]
    )


@torch.no_grad()
def load_weights_(model: LinearTransformer, weights: LayerWeights | TransformerWeights) -> LinearTransformer:
    """Copy canonical weights P, Q: (K, d+1, d+1) (or (d+1, d+1) for K = 1) into every member of ``model``.

    The model needs ``n_layers == K``, or ``looped=True`` with K = 1 (one layer tied over its depth).
    ``"full"`` takes P, Q as they are. ``"sparse"`` and ``"eleven"`` need the block form
    P = [[B, 0], [0, p]], Q = [[−A', 0], [0, 0]] with p ≠ 0 (and B = 0 for ``"sparse"``); they store the
    gauge-fixed blocks A = p A' and B / p (papers/README §1.7), which leave every layer unchanged.
    Returns ``model``, changed in place.
    """
    P, Q = weights
    if P.ndim == 2:
        P, Q = P.unsqueeze(0), Q.unsqueeze(0)
    d = model.dim
    if P.ndim != 3 or P.shape != Q.shape or P.shape[1:] != (d + 1, d + 1):
        raise ValueError(f"weights must be P, Q of shape (K, d+1={d + 1}, d+1), got {tuple(P.shape)}, {tuple(Q.shape)}")
    n_weights = 1 if model.looped else model.n_layers
    if P.shape[0] != n_weights:
        raise ValueError(
            f"weights hold {P.shape[0]} layers; the model (n_layers={model.n_layers}, "
            f"looped={model.looped}) takes {n_weights}"
        )
    if model.parameterisation == "sparse_u":
        raise ValueError("load_weights_ takes parameterisations 'full', 'sparse' and 'eleven', not 'sparse_u'")
    if model.parameterisation == "full":
        model.P.copy_(P.expand_as(model.P))
        model.Q.copy_(Q.expand_as(model.Q))
        return model
    p = P[:, d, d]
    off_block = [P[:, :d, d], P[:, d, :d], Q[:, :d, d], Q[:, d, :d], Q[:, d, d]]
    if (p == 0).any() or any(bool(block.ne(0).any()) for block in off_block):
        raise ValueError(
            f"parameterisation {model.parameterisation!r} needs P = [[B, 0], [0, p]] with p != 0 and Q = −diag(A, 0)"
        )
    B = P[:, :d, :d] / p[:, None, None]
    if model.parameterisation == "sparse" and B.ne(0).any():
        raise ValueError("parameterisation 'sparse' needs P[:d, :d] = 0 (the covariate rows do not move); use 'eleven'")
    model.A.copy_((-p[:, None, None] * Q[:, :d, :d]).expand_as(model.A))  # A := −P[d, d] · Q[:d, :d] (§1.7)
    if model.parameterisation == "eleven":
        model.B.copy_(B.expand_as(model.B))
    return model


def to_transformer(
    weights: LayerWeights | TransformerWeights, *, parameterisation: str = "full", n_models: int = 1
) -> LinearTransformer:
    """A new :class:`icl.models.LinearTransformer` with ``n_layers = K`` running ``weights`` (P, Q: (K, d+1, d+1)).

    Its dtype and device are the weights'; every one of the ``n_models`` members holds the same weights.
    Nothing random survives: the initial draw (std 0) is overwritten by :func:`load_weights_`.
    """
    P = weights.P if weights.P.ndim == 3 else weights.P.unsqueeze(0)
    if P.ndim != 3 or P.shape[1] != P.shape[2] or P.shape[1] < 2:
        raise ValueError(f"weights must be P, Q of shape (K, d+1, d+1) with d >= 1, got {tuple(weights.P.shape)}")
    model = LinearTransformer(
        P.shape[1] - 1,
        P.shape[0],
        parameterisation=parameterisation,  # type: ignore[arg-type]  # validated by the model
        n_models=n_models,
        init_std=0.0,
        generator=torch.Generator(device=P.device),
        dtype=P.dtype,
    )
    return load_weights_(model, weights)
