"""Linear self-attention (LSA) transformers in the canonical form (papers/README §1.2–1.9).

Shapes: ``E`` independent models trained side by side (an ensemble axis: seeds, covariances),
``B`` prompts, ``L`` layers, ``d`` covariate dimension, ``n`` context length (query excluded).

One layer:  Z ← Z + (1/n) P Z M Zᵀ Q Z,   M = diag(I_n, 0),

with Z: (E, B, d+1, n+1) and P, Q: (E, d+1, d+1). The product is associated as
(P · G · Q) · Z with the (d+1)×(d+1) Gram matrix G = (1/n) Z M Zᵀ: O(n d²) per prompt and a few
large batched kernels, never the (n+1)×(n+1) attention matrix ZᵀQZ (O(n² d)).

Parameterisations (which entries of P_ℓ, Q_ℓ are trained):

- ``"full"``: every entry of P_ℓ and Q_ℓ (Ahn et al. 2023, Thm 1).
- ``"sparse"``: P_ℓ = diag(0_d, 1), Q_ℓ = −diag(A_ℓ, 0); A_ℓ trained (eq. 8, Thm 3).
- ``"eleven"``: P_ℓ = [[B_ℓ, 0], [0, 1]], Q_ℓ = −diag(A_ℓ, 0); A_ℓ, B_ℓ trained (eq. 11, Thm 4).
- ``"sparse_u"``: P_ℓ = [[0, 0], [u_Pᵀ, 1]], Q_ℓ = −[[A_ℓ, 0], [u_Qᵀ, 0]]; A_ℓ, u_P, u_Q trained: the
  sparse form plus Gatmiry et al.'s (2024) vector u in both places it may sit (papers/gatmiry2024_looped.md
  §1). u_P adds uᵀx_i to the values the label row reads; u_Q lets the label y_i into the key-query product.

``looped=True`` ties one layer's weights across all ``n_layers`` applications.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from icl.config import finite_float, one_of, positive_int
from icl.tokens import read_out, to_tokens

Parameterisation = Literal["full", "sparse", "eleven", "sparse_u"]
PARAMETERISATIONS: tuple[str, ...] = ("full", "sparse", "eleven", "sparse_u")
ATTENTIONS: tuple[str, ...] = ("linear", "softmax")


def lsa_layer(Z: torch.Tensor, P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """One residual LSA layer: Z + (1/n) P (Z M Zᵀ) Q Z, with n = Z.shape[-1] − 1 the prompt's own context length.

    Z: (E, B, d+1, n+1); P, Q: (E, d+1, d+1), one pair per model of the ensemble. Differentiable
    in all three (a hand-written backward, checked against autograd in ``tests/test_models.py``).

    Computed on the token rows R = Zᵀ (:func:`icl.tokens.to_tokens` stores Z row-major, so this is
    a free view): R ← R (I + K) with the per-prompt (d+1)×(d+1) matrix K = Qᵀ G Pᵀ = (P G Q)ᵀ and
    G = (1/n) Rᵀ M R. Only G and R (I + K) are batched per prompt; K is formed from all the prompts'
    G at once by one or two large products per model (see :class:`_LSALayer`).
    """
    rows = Z.mT.contiguous()  # (E, B, n+1, d+1): tokens as rows; a no-op for to_tokens' layout
    return _LSALayer.apply(rows, P, Q).mT


def attention_layer(Z: torch.Tensor, P: torch.Tensor, Q: torch.Tensor, attention: str = "linear") -> torch.Tensor:
    """One residual layer in plain, twice-differentiable PyTorch (Hessians, Hessian-vector products): the same
    function as :func:`lsa_layer` for ``attention="linear"``; ``"softmax"`` is Ahn et al. 2024's softmax attention
    as their code computes it: each token's scores s_ij = z_iᵀ Q z_j over all n + 1 keys i, the query's own
    included, go through a softmax over i, and only then is the query's key masked out and the sum divided by n:

        z_j ← z_j + (1/n) Σ_{i ≤ n} softmax_i(s_ij) P z_i.

    Z: (E, B, d+1, n+1); P, Q: (E, d+1, d+1)."""
    rows = Z.mT  # (E, B, n+1, d+1)
    n = rows.shape[-2] - 1
    context = rows[..., :n, :]
    P, Q = P.unsqueeze(1), Q.unsqueeze(1)  # (E, 1, d+1, d+1): one pair per member, shared by its prompts
    if attention == "linear":  # r_j += (1/n) Σ_i (r_i Q r_jᵀ) r_i Pᵀ = r_j Qᵀ (Σ_i r_iᵀ r_i) Pᵀ / n
        kernel = Q.mT @ (context.mT @ context) @ P.mT / n
        return (rows + rows @ kernel).mT
    weights = torch.softmax(rows @ Q @ rows.mT, dim=-2)  # (E, B, n+1 keys i, n+1 receivers j)
    return (rows + weights[..., :n, :].mT @ (context @ P.mT) / n).mT


class _LSALayer(torch.autograd.Function):
    """R ↦ R (I + K) on token rows, with K = Qᵀ G Pᵀ and G = (1/n) Rᵀ M R per prompt.

    At these sizes the cost is the number of passes over memory, not arithmetic, hence:

    - the residual is folded into the product, R + R K = R (I + K): one ``bmm`` per pass over the
      (E·B, n+1, d+1) rows (``baddbmm`` copies its input first and was ~2.5× slower);
    - every per-prompt (d+1)×(d+1) product is one large product over all prompts. For d+1 ≤
      ``KRONECKER_MAX_WIDTH``, K = Qᵀ G Pᵀ is vec(K) = vec(G) W with the (d+1)²×(d+1)² weight
      W = Q ⊗ Pᵀ / n (row-major vec): one product, O(d⁴) per prompt but no copies. Above it, the
      left factor is taken as Qᵀ G = (G Q)ᵀ (G is symmetric) and one transposing copy puts it back
      in row layout: O(d³) per prompt;
    - the first layer's input is data, so its gradient (two passes over the rows) is skipped.

    The backward is written out; autograd's generic backward of the same graph was ~1.6× slower.
    """

    KRONECKER_MAX_WIDTH = 11
    """Largest d+1 formed through W = Q ⊗ Pᵀ / n. Measured on 2 CPU cores (3 layers, forward and
    backward, 2 threads): 0.74–0.93× the time of the direct route for d = 2 … 10, 1.1–1.4× for
    d = 12 … 20."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        E, B, length, width = rows.shape
        n = length - 1
        flat = rows.view(E * B, length, width)
        context = flat[:, :n]  # M drops the query token: it is never a key or a value
        gram = torch.bmm(context.mT, context)  # n G: (E·B, d+1, d+1), symmetric
        if width <= _LSALayer.KRONECKER_MAX_WIDTH:
            # K[i, l] = Σ_jk Q[j, i] (nG)[j, k] P[l, k] / n, so W[(j, k), (i, l)] = Q[j, i] P[l, k] / n:
            # a broadcast product (einsum's dispatch cost more than the arithmetic here).
            factor = (Q[:, :, None, :, None] * (P.mT / n)[:, None, :, None, :]).reshape(E, width**2, width**2)
            kernel = torch.bmm(gram.view(E, B, width**2), factor).view(E * B, width, width)
        else:
            factor = torch.bmm(gram.view(E, B * width, width), Q / n)  # G Q = (Qᵀ G)ᵀ =: Aᵀ
            factor = factor.view(E * B, width, width).mT.contiguous()  # A, in row layout
            kernel = torch.bmm(factor.view(E, B * width, width), P.mT).view(E * B, width, width)  # A Pᵀ
        kernel.diagonal(dim1=-2, dim2=-1).add_(1.0)  # I + K
        ctx.save_for_backward(rows, P, Q, gram, factor, kernel)  # factor: W, or A above the threshold
        return torch.bmm(flat, kernel).view(E, B, length, width)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        rows, P, Q, gram, factor, kernel = ctx.saved_tensors
        E, B, length, width = rows.shape
        n = length - 1
        flat = rows.view(E * B, length, width)
        grad = grad_out.reshape(E * B, length, width)
        grad_kernel = torch.bmm(flat.mT, grad)  # Γ = Rᵀ ∂out: (E·B, d+1, d+1); I has no parameters
        need_rows = ctx.needs_input_grad[0]  # False for the first layer, whose input is data
        if width <= _LSALayer.KRONECKER_MAX_WIDTH:
            grad_kernel = grad_kernel.view(E, B, width**2)
            grad_factor = torch.bmm(gram.view(E, B, width**2).mT, grad_kernel)  # vec(K) = vec(nG) W
            grad_factor = grad_factor.view(E, width, width, width, width)  # ∂W[j, k, i, l]
            grad_Q = (grad_factor * (P.mT / n)[:, None, :, None, :]).sum((2, 4))  # Σ_kl ∂W[j, k, i, l] P[l, k] / n
            grad_P = (grad_factor * (Q / n)[:, :, None, :, None]).sum((1, 3)).mT  # Σ_ji ∂W[j, k, i, l] Q[j, i] / n
            if need_rows:
                # ∂(nG) = Γ Wᵀ, and nG = Cᵀ C needs ∂(nG) + ∂(nG)ᵀ: transposing a (d+1)×(d+1) block
                # permutes vec's entries, so the sum is one product with Wᵀ plus its column-permuted copy.
                factor_t = factor.mT
                permuted = factor_t.reshape(E, width**2, width, width).mT.reshape(E, width**2, width**2)
                symmetric = torch.bmm(grad_kernel, factor_t + permuted).view(E * B, width, width)
        else:
            grad_kernel = grad_kernel.view(E, B * width, width)
            grad_P = torch.bmm(grad_kernel.mT, factor.view(E, B * width, width))  # K = A Pᵀ: ∂P = Σ_b Γᵀ A
            grad_A_t = torch.bmm(grad_kernel, P).view(E * B, width, width).mT.contiguous()  # (∂A)ᵀ = (Γ P)ᵀ
            grad_A_t = grad_A_t.view(E, B * width, width)
            grad_Q = torch.bmm(grad_A_t.mT, gram.view(E, B * width, width)).mT.div_(n)  # A = Qᵀ G: ∂Qᵀ = Σ_b ∂A G
            if need_rows:
                grad_gram_t = torch.bmm(grad_A_t, Q.mT / n).view(E * B, width, width)  # (∂(nG))ᵀ = (∂A)ᵀ Qᵀ / n
                symmetric = grad_gram_t + grad_gram_t.mT  # nG = Cᵀ C
        if not need_rows:
            return None, grad_P, grad_Q
        grad_rows = torch.bmm(grad, kernel.mT)  # ∂(R (I + K))/∂R at fixed K
        grad_rows[:, :n] += torch.bmm(flat[:, :n], symmetric)  # (baddbmm_ on this strided view is slow)
        return grad_rows.view(E, B, length, width), grad_P, grad_Q


class LinearTransformer(nn.Module):
    """An ensemble of ``n_models`` LSA transformers with ``n_layers`` layers each.

    Parameters (``L' = 1`` if ``looped`` else ``n_layers``):

    - ``"full"``: ``P``, ``Q``: (E, L', d+1, d+1);
    - ``"sparse"``: ``A``: (E, L', d, d);
    - ``"eleven"``: ``A``, ``B``: (E, L', d, d);
    - ``"sparse_u"``: ``A``: (E, L', d, d), ``u_P``, ``u_Q``: (E, L', d).

    Entries start i.i.d. N(0, init_std²) from ``generator`` (required: no global seed).

    ``attention="softmax"`` (full and eleven forms) swaps linear for softmax attention (:func:`attention_layer`);
    ``twice_differentiable=True`` computes linear attention in plain PyTorch, slower but differentiable twice.

    ``loop_counts`` (looped models only, one count per model) lets the members of one ensemble loop a different
    number of times: member e applies its layer loop_counts[e] times and then passes Z through unchanged, so an
    ensemble can train the values of L of a sweep side by side, exactly as separate runs would (n_layers must be
    the largest count).
    """

    def __init__(
        self,
        dim: int,
        n_layers: int = 1,
        *,
        parameterisation: Parameterisation = "full",
        looped: bool = False,
        n_models: int = 1,
        init_std: float = 0.01,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
        loop_counts: tuple[int, ...] | None = None,
        attention: str = "linear",
        twice_differentiable: bool = False,
    ) -> None:
        super().__init__()
        self.attention = one_of("attention", attention, ATTENTIONS)
        # The fast layer's backward is written out and not differentiable again; Hessians need the plain one.
        self.twice_differentiable = bool(twice_differentiable) or self.attention != "linear"
        if self.attention != "linear" and parameterisation in ("sparse", "sparse_u"):
            raise ValueError(f"attention={attention!r} needs the full or eleven form, not {parameterisation!r}")
        self.dim = positive_int("dim", dim)
        self.n_layers = positive_int("n_layers", n_layers)
        self.parameterisation = one_of("parameterisation", parameterisation, PARAMETERISATIONS)
        self.looped = bool(looped)
        self.n_models = positive_int("n_models", n_models)
        self.loop_counts: torch.Tensor | None = None
        if loop_counts is not None:
            counts = tuple(positive_int(f"loop_counts[{i}]", c) for i, c in enumerate(loop_counts))
            if not self.looped or len(counts) != self.n_models or max(counts) != self.n_layers:
                raise ValueError(
                    f"loop_counts needs looped=True, one count per model ({self.n_models}) and max(loop_counts) = "
                    f"n_layers ({self.n_layers}); got looped={self.looped}, loop_counts={list(loop_counts)}"
                )
            self.loop_counts = torch.tensor(counts, device=generator.device)
        init_std = finite_float("init_std", init_std, minimum=0.0)
        n_weights = 1 if self.looped else self.n_layers
        device = generator.device

        def init(size: int) -> nn.Parameter:
            shape = (self.n_models, n_weights, size, size)
            return nn.Parameter(init_std * torch.randn(shape, generator=generator, device=device, dtype=dtype))

        if self.parameterisation == "full":
            self.P, self.Q = init(dim + 1), init(dim + 1)
        else:
            self.A = init(dim)
            if self.parameterisation == "eleven":
                self.B = init(dim)
            if self.parameterisation == "sparse_u":
                shape = (self.n_models, n_weights, dim)
                self.u_P = nn.Parameter(init_std * torch.randn(shape, generator=generator, device=device, dtype=dtype))
                self.u_Q = nn.Parameter(init_std * torch.randn(shape, generator=generator, device=device, dtype=dtype))

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The canonical (P, Q) of every layer, each (E, L', d+1, d+1), built from the trained blocks."""
        if self.parameterisation == "full":
            return self.P, self.Q
        d = self.dim
        A = self.A
        Q = torch.zeros(*A.shape[:2], d + 1, d + 1, dtype=A.dtype, device=A.device)
        Q[..., :d, :d] = -A  # the minus sign makes A the preconditioner of the GD step (Lemma 1)
        P = torch.zeros_like(Q)
        P[..., d, d] = 1.0  # the label row reads the attention output: y ← y − (1/n) Σ y_i x_iᵀ A x
        if self.parameterisation == "eleven":
            P[..., :d, :d] = self.B  # the x rows move too: X ← X − (1/n) B X M Xᵀ A X
        if self.parameterisation == "sparse_u":
            P[..., d, :d] = self.u_P  # values read by the label row: y_i + u_Pᵀ x_i
            Q[..., d, :d] = -self.u_Q  # key-query product: −(x_iᵀ A x_j + y_i u_Qᵀ x_j)
        return P, Q

    def preconditioner(self) -> torch.Tensor:
        """The gauge-invariant preconditioner A_ℓ := −P_ℓ[d, d] · Q_ℓ[:d, :d] of every layer: (E, L', d, d).

        (P, Q) → (γP, Q/γ) leaves it unchanged (papers/README §1.7). The layer applies Aᵀ to the
        context's label-weighted mean, so report its symmetric part (§1.6).
        """
        if self.parameterisation != "full":
            return self.A
        d = self.dim
        return -self.P[..., d, d, None, None] * self.Q[..., :d, :d]

    def forward(self, Z: torch.Tensor) -> torch.Tensor:
        """Z: (E, B, d+1, n+1) -> Z after all layers, same shape.

        With ``n_models == 1``, (B, d+1, n+1) is accepted too."""
        squeeze = Z.ndim == 3
        if squeeze:
            if self.n_models != 1:
                raise ValueError(f"Z must have shape (E={self.n_models}, B, d+1, n+1), got {tuple(Z.shape)}")
            Z = Z.unsqueeze(0)
        if Z.ndim != 4 or Z.shape[0] != self.n_models or Z.shape[2] != self.dim + 1:
            raise ValueError(f"Z must have shape (E={self.n_models}, B, d+1={self.dim + 1}, n+1), got {tuple(Z.shape)}")
        if Z.shape[3] < 2:
            raise ValueError(f"Z must hold at least one context token (n >= 1) before the query, got {tuple(Z.shape)}")
        if self.parameterisation in ("sparse", "sparse_u"):
            Z = self._label_row_forward(Z)
        else:
            P, Q = self.weights()
            for layer in range(self.n_layers):
                index = 0 if self.looped else layer
                if self.twice_differentiable:
                    updated = attention_layer(Z, P[:, index], Q[:, index], self.attention)
                else:
                    updated = lsa_layer(Z, P[:, index], Q[:, index])
                Z = updated if self.loop_counts is None else _where_active(self.loop_counts > layer, updated, Z)
        return Z.squeeze(0) if squeeze else Z

    def _label_row_forward(self, Z: torch.Tensor) -> torch.Tensor:
        """All layers of a sparse or sparse_u model on the label row alone (see :meth:`label_rows`)."""
        rows = Z.mT  # (E, B, n+1, d+1): tokens as rows
        *_, labels = self.label_rows(Z, self.n_layers, stop_at=self.loop_counts)  # after the last layer
        return torch.cat([rows[..., : self.dim], labels.unsqueeze(-1)], dim=-1).mT

    def label_rows(
        self, Z: torch.Tensor, n_loops: int, *, stop_at: torch.Tensor | None = None
    ) -> Iterator[torch.Tensor]:
        """The label row of Z after each of ``n_loops`` layers, (E, B, n+1) each; sparse and sparse_u only.
        With ``stop_at`` (E,), member e's labels stop changing after stop_at[e] layers.

        A looped model may run any number of loops (test-time looping); an untied one at most ``n_layers``.
        With P = [[0, 0], [pᵀ]] only the label row moves (p = (u_P, 1)), so the layers are GD steps in
        function space: with values vᵢ = yᵢ + u_Pᵀxᵢ and h = Σᵢ vᵢ zᵢ (sums over the n context tokens),
        every token's label gains (1/n) hᵀ Q z_j = −(1/n)(h_xᵀ A x_j + h_y u_Qᵀ x_j). That is O(n d) per
        prompt and layer instead of the generic layer's O(n d²); the tests check it equals :func:`lsa_layer`.
        """
        if self.parameterisation not in ("sparse", "sparse_u"):
            raise ValueError(f"label_rows needs the sparse or sparse_u form, not {self.parameterisation!r}")
        n_loops = positive_int("n_loops", n_loops)
        if not self.looped and n_loops > self.n_layers:
            raise ValueError(f"n_loops must be at most n_layers={self.n_layers} for an untied model, got {n_loops}")
        rows = Z.mT  # (E, B, n+1, d+1): tokens as rows
        d, n = self.dim, rows.shape[-2] - 1
        covariates = rows[..., :d]  # (E, B, n+1, d): the x rows never change
        context = covariates[..., :n, :]
        labels = rows[..., d]  # (E, B, n+1)
        with_u = self.parameterisation == "sparse_u"
        shifts = context @ self.u_P.unsqueeze(1).mT if with_u else None  # (E, B, n, L'): u_Pᵀxᵢ per weight
        for layer in range(n_loops):
            index = 0 if self.looped else layer
            values = labels[..., :n] if shifts is None else labels[..., :n] + shifts[..., index]
            h_x = (values.unsqueeze(-2) @ context).squeeze(-2)  # (E, B, d): Σᵢ vᵢ xᵢ
            step = h_x @ self.A[:, index]  # (E, B, d): (Aᵀ h_x)ᵀ
            if with_u:
                h_y = (values * labels[..., :n]).sum(-1, keepdim=True)  # (E, B, 1): Σᵢ vᵢ yᵢ
                step = step + h_y * self.u_Q[:, index].unsqueeze(1)
            updated = labels - (covariates @ step.unsqueeze(-1)).squeeze(-1) / n
            labels = updated if stop_at is None else _where_active(stop_at > layer, updated, labels)
            yield labels

    def predict(self, X: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
        """ŷ for prompts X: (E, B, n, d), y: (E, B, n), x_query: (E, B, d) -> (E, B).

        Without the E axis when ``n_models == 1``."""
        return read_out(self(to_tokens(X, y, x_query)))

    def query_weights(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The weights v with ŷ = vᵀx_q of a one-layer model on each prompt's context: (E, B, d).

        X: (B, n, d) and y: (B, n), shared by all members, or (E, B, n, d) and (E, B, n). The query is never a key
        or a value, so the layer maps the query token r_q = (x_q, 0) to r_q (I + K) with K = Qᵀ G Pᵀ and
        G = (1/n) Σ_i r_iᵀ r_i over the context, and ŷ = −(r_q K)[d]: v = −K[:d, d]. One Gram matrix per prompt
        gives the prediction for every query (``tests/test_models.py`` checks it against :meth:`predict`).
        """
        if self.n_layers != 1:
            raise ValueError(f"query_weights needs a one-layer model, this one has {self.n_layers} layers")
        rows = torch.cat([X, y.unsqueeze(-1)], dim=-1)  # (..., B, n, d+1)
        gram = rows.mT @ rows / rows.shape[-2]  # (..., B, d+1, d+1)
        P, Q = (w[:, 0, None] for w in self.weights())  # (E, 1, d+1, d+1)
        return -(Q.mT @ gram @ P.mT)[..., : self.dim, self.dim]


def _where_active(active: torch.Tensor, updated: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """``updated`` for the ensemble members where ``active`` (E,) holds, ``current`` elsewhere; (E, ...) tensors."""
    return torch.where(active.reshape(-1, *([1] * (updated.ndim - 1))), updated, current)


@torch.no_grad()
def add_balanced_initialisation_(model: LinearTransformer, scale: float, *, generator: torch.Generator) -> None:
    """Add Zhang, Frei and Bartlett's balanced start (2023, Assumption 3.3) to a one-layer full model, in place.

    P += σ · diag(0_d, 1) and Q += −σ · diag(ΘΘᵀ, 0) with ‖ΘΘᵀ‖_F = 1 (Θ Gaussian, one per model),
    so that A = −P[d, d] Q[:d, :d] starts near σ² ΘΘᵀ, positive semi-definite. (Their Q is −ours: their
    read-out has a + sign.) On top of the model's i.i.d. initialisation, every entry stays perturbed.
    """
    if model.parameterisation != "full":
        raise ValueError(f"the balanced initialisation is for parameterisation='full', not {model.parameterisation!r}")
    scale = finite_float("scale", scale, minimum=0.0)
    d, E = model.dim, model.n_models
    theta = torch.randn(E, d, d, generator=generator, device=generator.device, dtype=model.P.dtype)
    gram = theta @ theta.mT
    gram = gram / torch.linalg.matrix_norm(gram)[:, None, None]
    model.P[:, :, d, d] += scale
    model.Q[:, :, :d, :d] -= scale * gram.unsqueeze(1)


def balanced_one_layer(
    dim: int, n_models: int, *, scale: float, init_std: float, generator: torch.Generator
) -> LinearTransformer:
    """``n_models`` one-layer full models at Zhang, Frei and Bartlett's balanced start of scale ``scale`` (one Θ per
    model), every other entry N(0, init_std²): the start of chapters 07 and 08."""
    model = LinearTransformer(
        dim, 1, parameterisation="full", n_models=n_models, init_std=init_std, generator=generator
    )
    add_balanced_initialisation_(model, scale, generator=generator)
    return model
