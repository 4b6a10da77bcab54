"""A small GPT-2-style softmax transformer on Garg et al.'s (2022) interleaved tokens, as an ensemble.

Tokens: a prompt of k labelled examples is the sequence x_1, ỹ_1, x_2, ỹ_2, …, x_k, ỹ_k of 2k vectors in ℝ^d, with
ỹ_i = (y_i, 0, …, 0). Each is read in by a linear map to the width D, learned absolute positions are added, and
``n_layers`` pre-LayerNorm blocks (causal multi-head softmax attention, then a GELU MLP of width 4D, each in a
residual branch) and a final LayerNorm follow; a linear read-out at every x_i token predicts y_i from what the causal
mask lets it see: the pairs before it and x_i itself. Training averages the squared error over all k positions (every
prefix of the prompt is a prompt with 0 … k − 1 examples).

Shapes: ``E`` independent models trained side by side (the ensemble axis: seeds, training distributions), ``B``
prompts, ``k`` examples, ``T = 2k`` tokens, ``D`` width, ``H`` heads. Every weight carries the E axis first, and every
product is one batched matrix product over the members: a member's outputs and gradients depend on its own weights
only, so each trains exactly as it would alone (``tests/test_softmax_model.py``).

Positions beyond the longest prompt seen in training keep their random initial embedding: such a model's error jumps
there (Zhang, Frei and Bartlett 2023, Fig. 1), which a chapter shows rather than hides.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from icl.config import finite_float, positive_int
from icl.tasks import RegressionBatch


class SoftmaxTransformer(nn.Module):
    """An ensemble of ``n_models`` decoder-only transformers (GPT-2 blocks) for in-context regression.

    ``max_examples`` is the longest prompt (examples, the query included) the positions cover: 2 · max_examples
    learned positions. Inside the GPT-2 backbone weights start i.i.d. N(0, init_std²) from ``generator`` (GPT-2's 0.02;
    the residual branches' output maps at init_std/√(2 · n_layers), as GPT-2 does), biases at 0, LayerNorm gains at 1.
    The read-in and read-out maps, outside the backbone in Garg et al.'s model, start as ``torch.nn.Linear`` does,
    uniform on ±1/√fan-in: with 0.02 there as well, training sat on its plateau (loss ≈ d) for all 3000 steps of a
    measured run that escaped it after about 1000 steps with this start.
    """

    def __init__(
        self,
        dim: int,
        *,
        width: int = 64,
        n_layers: int = 4,
        n_heads: int = 4,
        max_examples: int = 40,
        n_models: int = 1,
        init_std: float = 0.02,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.dim = positive_int("dim", dim)
        self.width = positive_int("width", width)
        self.n_layers = positive_int("n_layers", n_layers)
        self.n_heads = positive_int("n_heads", n_heads)
        if self.width % self.n_heads:
            raise ValueError(f"width ({self.width}) must be a multiple of n_heads ({self.n_heads})")
        self.max_examples = positive_int("max_examples", max_examples)
        self.n_models = positive_int("n_models", n_models)
        init_std = finite_float("init_std", init_std, minimum=0.0)
        E, L, D = self.n_models, self.n_layers, self.width
        device = generator.device

        def normal(*shape: int, std: float = init_std) -> nn.Parameter:
            return nn.Parameter(std * torch.randn(E, *shape, generator=generator, device=device, dtype=dtype))

        def constant(value: float, *shape: int) -> nn.Parameter:
            return nn.Parameter(torch.full((E, *shape), value, device=device, dtype=dtype))

        def uniform(fan_in: int, *shape: int) -> nn.Parameter:  # torch.nn.Linear's default initialisation
            bound = 1 / math.sqrt(fan_in)
            values = torch.rand(E, *shape, generator=generator, device=device, dtype=dtype)
            return nn.Parameter(bound * (2 * values - 1))

        residual_std = init_std / math.sqrt(2 * L)
        self.read_in, self.read_in_bias = uniform(dim, dim, D), uniform(dim, D)
        self.positions = normal(2 * self.max_examples, D)
        self.ln1_gain, self.ln1_bias = constant(1.0, L, D), constant(0.0, L, D)
        self.qkv, self.qkv_bias = normal(L, D, 3 * D), constant(0.0, L, 3 * D)
        self.attn_out, self.attn_out_bias = normal(L, D, D, std=residual_std), constant(0.0, L, D)
        self.ln2_gain, self.ln2_bias = constant(1.0, L, D), constant(0.0, L, D)
        self.mlp_in, self.mlp_in_bias = normal(L, D, 4 * D), constant(0.0, L, 4 * D)
        self.mlp_out, self.mlp_out_bias = normal(L, 4 * D, D, std=residual_std), constant(0.0, L, D)
        self.ln_final_gain, self.ln_final_bias = constant(1.0, D), constant(0.0, D)
        self.read_out, self.read_out_bias = uniform(D, D, 1), uniform(D, 1)

    def tokens(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Interleave examples into tokens x_1, ỹ_1, …, x_k, ỹ_k (:func:`interleave`)."""
        return interleave(xs, ys)

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Predictions of y_i at every x_i token: xs (E, B, k, d) or (B, k, d) shared by the members, ys likewise
        without d -> (E, B, k). ys[..., i] reaches only the predictions after position i (the causal mask)."""
        return ensemble_linear(self._residual_stream(xs, ys)[-1], self.read_out, self.read_out_bias).squeeze(-1)

    def hidden_states(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """The residual stream at every x_i token after each block, as Hugging Face's ``hidden_states[1:]``: the
        last one after the final LayerNorm, where the read-out acts. xs, ys as in :meth:`forward` -> (L, E, B, k, D)."""
        return torch.stack(self._residual_stream(xs, ys, every_layer=True))

    def _residual_stream(self, xs: torch.Tensor, ys: torch.Tensor, *, every_layer: bool = False) -> list[torch.Tensor]:
        """The x tokens' residual stream after the final LayerNorm, preceded with ``every_layer`` by its state after
        each earlier block: a list of (E, B, k, D)."""
        check_sequences(xs, ys, self.dim)
        k = xs.shape[-2]
        if k > self.max_examples:
            raise ValueError(f"a prompt of {k} examples needs max_examples >= {k}; this model has {self.max_examples}")
        E, D, H = self.n_models, self.width, self.n_heads
        tokens = self.tokens(xs, ys)
        if tokens.ndim == 3:
            tokens = tokens.expand(E, *tokens.shape)
        elif tokens.shape[0] != E:
            raise ValueError(f"xs has {tokens.shape[0]} members on its first axis, the model {E}")
        B, T = tokens.shape[1], tokens.shape[2]
        h = ensemble_linear(tokens, self.read_in, self.read_in_bias) + self.positions[:, None, :T]  # (E, B, T, D)
        states = []
        for layer in range(self.n_layers):
            a = _layer_norm(h, self.ln1_gain[:, layer], self.ln1_bias[:, layer])
            q, k_, v = ensemble_linear(a, self.qkv[:, layer], self.qkv_bias[:, layer]).split(D, dim=-1)
            heads = lambda t: t.reshape(E * B, T, H, D // H).transpose(1, 2)  # noqa: E731  (E·B, H, T, D/H)
            attended = F.scaled_dot_product_attention(heads(q), heads(k_), heads(v), is_causal=True)
            attended = attended.transpose(1, 2).reshape(E, B, T, D)
            h = h + ensemble_linear(attended, self.attn_out[:, layer], self.attn_out_bias[:, layer])
            if layer == self.n_layers - 1:  # from here on no token reads another: only the x tokens are read out
                h = h[:, :, 0::2]
            m = _layer_norm(h, self.ln2_gain[:, layer], self.ln2_bias[:, layer])
            m = F.gelu(ensemble_linear(m, self.mlp_in[:, layer], self.mlp_in_bias[:, layer]), approximate="tanh")
            h = h + ensemble_linear(m, self.mlp_out[:, layer], self.mlp_out_bias[:, layer])
            if every_layer and layer < self.n_layers - 1:
                states.append(h[:, :, 0::2])
        return [*states, _layer_norm(h, self.ln_final_gain, self.ln_final_bias)]

    def predict(self, X: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
        """ŷ at the query after the context: X (E, B, n, d) or (B, n, d), y likewise, x_query (..., B, d) -> (E, B).
        The query's own label slot is filled with 0; the causal mask keeps it from the prediction anyway."""
        xs = torch.cat([X, x_query.unsqueeze(-2)], dim=-2)
        ys = torch.cat([y, torch.zeros_like(y[..., :1])], dim=-1)
        return self(xs, ys)[..., -1]


def check_sequences(xs: torch.Tensor, ys: torch.Tensor, dim: int) -> None:
    """Raise unless xs is (E, B, k, d) or (B, k, d) with d = ``dim`` and ys has xs's shape without d."""
    if xs.shape[-1] != dim or xs.shape[:-1] != ys.shape or xs.ndim not in (3, 4):
        raise ValueError(
            f"xs must be (E, B, k, d={dim}) or (B, k, d) and ys the same without d, got "
            f"{tuple(xs.shape)} and {tuple(ys.shape)}"
        )


def interleave(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Garg et al.'s tokens x_1, ỹ_1, …, x_k, ỹ_k with ỹ_i = (y_i, 0, …, 0):
    xs (..., k, d), ys (..., k) -> (..., 2k, d)."""
    labels = torch.zeros_like(xs)
    labels[..., 0] = ys
    return torch.stack([xs, labels], dim=-2).flatten(-3, -2)


def all_prefix_loss(model: nn.Module, batch: RegressionBatch) -> torch.Tensor:
    """Garg et al.'s training objective: the squared error averaged over every x position of the prompt (context
    and query, k = n + 1 positions, the first with no example before it) and over the prompts. -> (E,)."""
    xs = torch.cat([batch.X, batch.x_query.unsqueeze(-2)], dim=-2)
    ys = torch.cat([batch.y, batch.y_query.unsqueeze(-1)], dim=-1)
    predictions = model(xs, ys)
    return ((predictions - ys) ** 2).mean((-2, -1))


def ensemble_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (E, ..., i) @ weight (E, i, o) + bias (E, o), one batched product over the members."""
    shape = x.shape
    out = torch.baddbmm(bias.unsqueeze(1), x.reshape(shape[0], -1, shape[-1]), weight)
    return out.reshape(*shape[:-1], weight.shape[-1])


def _layer_norm(x: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last axis with each member's gain and bias (E, D). x: (E, ..., D)."""
    view = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    return F.layer_norm(x, x.shape[-1:]) * gain.reshape(view) + bias.reshape(view)
