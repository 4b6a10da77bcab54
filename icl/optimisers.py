"""An optimiser for ensembles whose members train differently: each member (the leading axis E of every parameter)
has its own rule, Adam or SGD with momentum, and its own learning rate.

Both rules are elementwise, so members with different rules can share one forward and backward pass (Ahn et al.
2024 compare Adam and SGD with momentum on the same model, seeds and data). Each member's update is exactly
``torch.optim.Adam``'s or ``torch.optim.SGD``'s (momentum μ, no dampening) for that member alone;
``tests/test_optimisers.py`` checks both against PyTorch's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

RULES: tuple[str, ...] = ("adam", "sgd")


class MemberwiseOptimiser(torch.optim.Optimizer):
    """Adam or SGD with momentum per ensemble member.

    ``rules[e]`` ("adam" or "sgd") and ``scales[e]`` name member e's rule and multiply the group's learning rate
    (``lr``, which a schedule may change between steps) into member e's own. Every parameter is (E, ...).
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        *,
        lr: float,
        rules: Sequence[str],
        scales: Sequence[float],
        betas: tuple[float, float] = (0.9, 0.999),
        momentum: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        unknown = sorted(set(rules) - set(RULES))
        if unknown:
            raise ValueError(f"unknown optimiser {unknown[0]!r} in rules; choose from {list(RULES)}")
        if len(rules) != len(scales):
            raise ValueError(f"rules and scales need one entry per member, got {len(rules)} and {len(scales)}")
        super().__init__(params, dict(lr=lr, betas=betas, momentum=momentum, eps=eps))
        self.rules, self.scales = tuple(rules), tuple(float(s) for s in scales)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.shape[0] != len(self.rules):
                    raise ValueError(f"a parameter of shape {tuple(p.shape)} has no leading axis of {len(self.rules)}")
                grad, state = p.grad, self.state[p]
                shape = (-1, *([1] * (p.ndim - 1)))
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["momentum_buffer"] = grad.clone()  # SGD's first step: the buffer is the gradient
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias1, bias2 = 1 - beta1 ** state["step"], 1 - beta2 ** state["step"]
                adam = exp_avg / bias1 / (exp_avg_sq.sqrt() / math.sqrt(bias2) + group["eps"])
                is_adam = torch.tensor([r == "adam" for r in self.rules], device=p.device).reshape(shape)
                rates = group["lr"] * torch.tensor(self.scales, dtype=p.dtype, device=p.device).reshape(shape)
                p.sub_(rates * torch.where(is_adam, adam, state["momentum_buffer"]))
