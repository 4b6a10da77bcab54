"""Layer probes: what each layer of a trained softmax transformer already knows about the label (Fu et al. 2023).

A probe of layer ℓ is a linear read-out ŷ = ⟨β_ℓ, h_ℓ⟩ + b_ℓ of the residual stream h_ℓ after block ℓ at an x token
(:meth:`icl.models.SoftmaxTransformer.hidden_states`; the last layer's is after the final LayerNorm, where the
model's own read-out acts). Fu et al. train each probe with Adam; the same convex problem is solved here in closed
form: least squares with a bias, pooled over every x position of ``n_prompts`` fresh training prompts, accumulated
in float64 over chunks of prompts so that memory stays small whatever their number. The probes are then scored on
other prompts.

Shapes: ``L`` layers, ``E`` members, ``B`` prompts, ``k`` x positions, ``D`` width.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from icl.config import positive_int
from icl.models import SoftmaxTransformer

CHUNK = 512  # prompts per forward pass: (L, E, 512, k, D) hidden states stay tens of MB at the book's sizes


class Probes(NamedTuple):
    """One linear read-out per layer and member."""

    weight: torch.Tensor  # (L, E, D) float64
    bias: torch.Tensor  # (L, E) float64


def fit(
    model: SoftmaxTransformer,
    sample: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    n_prompts: int,
    *,
    ridge: float = 1e-8,
) -> Probes:
    """Least-squares probes of every layer of every member. ``sample(size)`` returns ``size`` prompts as sequences,
    xs (size, k, d) and ys (size, k), from the training distribution. ``ridge`` (relative to the mean diagonal of the
    Gram matrix) only guards the solve against directions the hidden states never use."""
    n_prompts = positive_int("n_prompts", n_prompts)
    gram = rhs = None
    with torch.no_grad():
        for start in range(0, n_prompts, CHUNK):
            xs, ys = sample(min(CHUNK, n_prompts - start))
            states = model.hidden_states(xs, ys).double()  # (L, E, B, k, D)
            design = torch.cat([states, torch.ones_like(states[..., :1])], -1).flatten(2, 3)  # (L, E, B·k, D + 1)
            targets = ys.double().flatten().to(design.device)  # (B·k,)
            chunk_gram = design.mT @ design
            chunk_rhs = (design.mT @ targets.unsqueeze(-1)).squeeze(-1)
            gram = chunk_gram if gram is None else gram + chunk_gram
            rhs = chunk_rhs if rhs is None else rhs + chunk_rhs
    assert gram is not None and rhs is not None
    scale = torch.diagonal(gram, dim1=-2, dim2=-1).mean(-1)[..., None, None]
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    solution = torch.linalg.solve(gram + ridge * scale * eye, rhs.unsqueeze(-1)).squeeze(-1)
    return Probes(weight=solution[..., :-1], bias=solution[..., -1])


def predict(model: SoftmaxTransformer, probes: Probes, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Every layer's probe prediction at every x position: xs (B, k, d), ys (B, k) -> (L, E, B, k) float64."""
    out = []
    with torch.no_grad():
        for start in range(0, len(xs), CHUNK):
            states = model.hidden_states(xs[start : start + CHUNK], ys[start : start + CHUNK]).double()
            out.append((states * probes.weight[:, :, None, None]).sum(-1) + probes.bias[:, :, None, None])
    return torch.cat(out, 2)
