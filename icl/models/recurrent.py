"""An LSTM on the same interleaved tokens as the GPT, as an ensemble: Fu et al.'s (2024) recurrent baseline.

The tokens are :class:`icl.models.SoftmaxTransformer`'s (x₁, ỹ₁, …, x_k, ỹ_k, ỹᵢ = (yᵢ, 0, …, 0)), read in by a
linear map to the width H; ``n_layers`` LSTM layers (PyTorch's) read them left to right; a linear read-out at every
x token predicts its label from the state after it, which has seen the examples before it and x itself. Everything
the model knows of the context passes through a state of fixed size 2H per layer, which is what makes it forget (Fu
et al.'s Fig. 5).

Shapes: ``E`` members (independent models, run one after the other), ``B`` prompts, ``k`` examples, ``T = 2k``
tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from icl.config import positive_int
from icl.models.softmax import check_sequences, interleave


class LSTMRegressor(nn.Module):
    """An ensemble of ``n_models`` LSTMs for in-context regression, each a ``torch.nn.LSTM`` (its C++ loop over the
    tokens is several times faster on a CPU than one written out here) between a linear read-in and read-out. Every
    weight starts uniform on ±1/√fan-in, as PyTorch's own initialisation does, but drawn from ``generator``."""

    def __init__(
        self,
        dim: int,
        *,
        width: int = 64,
        n_layers: int = 4,
        n_models: int = 1,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.dim = positive_int("dim", dim)
        self.width = positive_int("width", width)
        self.n_layers = positive_int("n_layers", n_layers)
        self.n_models = positive_int("n_models", n_models)
        device = generator.device
        self.members = nn.ModuleList()
        for _ in range(self.n_models):
            member = nn.ModuleDict(
                {
                    "read_in": nn.Linear(dim, width, device=device, dtype=dtype),
                    "lstm": nn.LSTM(width, width, n_layers, batch_first=True, device=device, dtype=dtype),
                    "read_out": nn.Linear(width, 1, device=device, dtype=dtype),
                }
            )
            with torch.no_grad():
                for module in member.values():
                    fan_in = module.in_features if isinstance(module, nn.Linear) else width
                    for parameter in module.parameters():
                        values = torch.rand(parameter.shape, generator=generator, device=device, dtype=dtype)
                        parameter.copy_((2 * values - 1) / math.sqrt(fan_in))
            self.members.append(member)

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Predictions of y_i at every x_i token: xs (E, B, k, d) or (B, k, d), ys likewise without d -> (E, B, k)."""
        check_sequences(xs, ys, self.dim)
        tokens = interleave(xs, ys)
        if tokens.ndim == 3:
            tokens = tokens.expand(self.n_models, *tokens.shape)
        out = []
        for member, member_tokens in zip(self.members, tokens, strict=True):
            states, _ = member["lstm"](member["read_in"](member_tokens))  # (B, T, H)
            out.append(member["read_out"](states[:, 0::2]).squeeze(-1))
        return torch.stack(out)

    def predict(self, X: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
        """ŷ at the query after the context: X (B, n, d), y (B, n), x_query (B, d) -> (E, B)."""
        xs = torch.cat([X, x_query.unsqueeze(-2)], dim=-2)
        ys = torch.cat([y, torch.zeros_like(y[..., :1])], dim=-1)
        return self(xs, ys)[..., -1]
