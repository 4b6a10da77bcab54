"""The algorithms alone: how fast iterative Newton and GD reach least squares on Σ = I and on an ill-conditioned Σ, and
every algorithm's residuals along sequences of examples (the references the learners are matched against)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from icl import baselines, tasks

if TYPE_CHECKING:
    from icl.experiments.iterative_newton import IterativeNewtonConfig

NEWTON_BUDGET = 60  # the algorithm panel's Newton steps: about log₂ κ(Ŝ)² are needed, κ(Ŝ) up to 10⁹ fits
MAX_DOUBLINGS = 16  # the algorithm panel runs GD for up to 2¹⁶ steps before calling it unconverged
LBFGS_MEMORY = 5  # the paper does not give L-BFGS's memory; the paper note's choice


class Residuals(NamedTuple):
    """Every reference algorithm's errors ŷ_t − y_t at every position of the same sequences (B, K)."""

    newton: torch.Tensor  # (N, B, K) after 0 … newton_steps steps
    gd: torch.Tensor  # (G, B, K) after 2^0 … 2^gd_log2_steps steps, η = 1/λ_max(Ŝ)
    least_squares: torch.Tensor  # (B, K)
    online_gd: torch.Tensor  # (B, K) η_i = 1/‖x_i‖²


def sequences(batch: tasks.RegressionBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's prompts as sequences of examples, the query last: xs (..., n + 1, d), ys (..., n + 1)."""
    return (
        torch.cat([batch.X, batch.x_query.unsqueeze(-2)], -2),
        torch.cat([batch.y, batch.y_query.unsqueeze(-1)], -1),
    )


def residuals(config: IterativeNewtonConfig, xs: torch.Tensor, ys: torch.Tensor) -> Residuals:
    """The references' residuals on sequences xs (B, K, d), ys (B, K), in float64 on the CPU."""
    x64, y64 = xs.double().cpu(), ys.double().cpu()
    S, h = baselines.prefix_moments(x64, y64)
    at = lambda weights: (weights * x64).sum(-1) - y64  # noqa: E731
    return Residuals(
        newton=at(baselines.newton_weights(S, h, range(config.newton_steps + 1))),
        gd=at(baselines.gd_weights(S, h, [2**j for j in range(config.gd_log2_steps + 1)])),
        least_squares=at(baselines.least_squares_weights(S, h)),
        online_gd=at(baselines.online_gd_weights(x64, y64)),
    )


def first_below(deviation: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Index of the first entry of each row (…, T) at or below ``tolerance``; -1 where none is. -> (…,) long."""
    below = deviation <= tolerance
    first = below.long().argmax(-1)
    return torch.where(below.any(-1), first, -1)


def algorithms_alone(config: IterativeNewtonConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Convergence to least squares of Newton, GD and conjugate gradients on Σ = I and on the two-level Σ (fresh basis
    per prompt): the result's ``newton_deviation``, ``gd_deviation``, ``cg_deviation``, the steps each needs to reach
    ``tolerance``, and ``quasi_newton_gap``, how far L-BFGS (memory ``LBFGS_MEMORY``) and BFGS land from CG's
    iterates."""
    d, n, B = config.dim, 2 * config.dim, config.n_algorithm_test
    identity = torch.eye(d, dtype=torch.float64).expand(B, d, d)
    two_level = tasks.two_level_covariances(B, d, config.condition_number, generator=generator)
    newton, gd, cg, newton_steps, gd_steps, cg_steps, quasi_newton_gap = [], [], [], [], [], [], []
    for covariance in (identity, two_level):
        batch = tasks.sample_regression(1, n, covariance, generator=generator, dtype=torch.float64)
        S, h = baselines.context_moments(batch.X[:, 0], batch.y[:, 0])  # (B, d, d), (B, d)
        target = baselines.least_squares_weights(S, h)
        scale = (target**2).sum(-1).mean()

        def relative(w: torch.Tensor, target: torch.Tensor = target, scale: torch.Tensor = scale) -> torch.Tensor:
            return ((w - target) ** 2).sum(-1).mean(-1) / scale

        newton_curve = relative(baselines.newton_weights(S, h, range(NEWTON_BUDGET + 1)))
        newton.append(newton_curve)
        newton_steps.append(first_below(newton_curve, config.tolerance))
        doublings = [2**j for j in range(MAX_DOUBLINGS + 1)]
        gd_curve = relative(baselines.gd_weights(S, h, doublings))
        gd.append(gd_curve)
        first = first_below(gd_curve, config.tolerance)
        gd_steps.append(torch.where(first >= 0, 2**first, -1))
        counts = range(d + 2)  # CG ends within rank(Ŝ) ≤ d steps in exact arithmetic; one more shows it stays
        cg_weights = baselines.conjugate_gradient_weights(S, h, counts)
        cg.append(relative(cg_weights))
        cg_steps.append(first_below(cg[-1], config.tolerance))
        size = (target**2).sum(-1).clamp(min=torch.finfo(target.dtype).tiny)  # (B,) ‖ŵ_LS‖² per prompt
        quasi_newton_gap.append(
            max(
                (((baselines.lbfgs_weights(S, h, counts, memory) - cg_weights) ** 2).sum(-1) / size).max()
                for memory in (LBFGS_MEMORY, None)
            )
        )
    return {
        "newton_deviation": torch.stack(newton),
        "gd_deviation": torch.stack(gd),
        "cg_deviation": torch.stack(cg),
        "newton_to_tolerance": torch.stack(newton_steps),
        "gd_to_tolerance": torch.stack(gd_steps),
        "cg_to_tolerance": torch.stack(cg_steps),
        "quasi_newton_gap": torch.stack(quasi_newton_gap),
    }
