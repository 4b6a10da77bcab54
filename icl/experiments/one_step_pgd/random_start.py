"""From a purely random small start instead of the balanced one (Ahn et al.'s and Zhang, Frei and Bartlett's
model, the same recipe): on Σ = I every model converges to Γ*; on an ill-conditioned Σ some stall on a plateau
well above the optimum, far from its zero pattern. ``R`` models per covariance kind, at n = ``n_context``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from icl import evaluate, theory
from icl.checks import ClaimChecks
from icl.evaluate import downsample_curve
from icl.experiments.one_step_pgd.training import (
    KINDS,
    RANDOM_START_PART,
    covariances,
    read_weights,
    theory_optimal,
    train_ensemble,
)

if TYPE_CHECKING:
    from icl.experiments.one_step_pgd import OneStepPGDConfig, OneStepPGDResult

STALL = 1.5  # a random-start model whose final MSE is at least this many times f* has stalled


def runs(config: OneStepPGDConfig, progress: bool) -> dict[str, torch.Tensor]:
    """The random-start ensemble at n = ``n_context``: the result's ``random_start_*`` fields, (K, R, ...)."""
    K, R, n = len(KINDS), config.random_start_seeds, config.n_context
    covariance = covariances(config, random_start=True)  # (K, R, d, d)
    flat = covariance.reshape(K * R, config.dim, config.dim)
    trained = train_ensemble(config, flat, n, RANDOM_START_PART, progress, initialisation="random")
    weights = read_weights(trained.model)
    optimal_loss = torch.stack([theory.optimal_one_step_loss(c, n) for c in flat]).cpu()  # (K·R,)
    tail = max(1, config.train_steps // 10)
    losses = trained.losses.double().cpu()  # (steps, K·R)
    _, curve = downsample_curve(losses)
    return {
        "covariance": covariance,
        "loss_ratio": (losses[-tail:].mean(0) / optimal_loss).reshape(K, R),
        "error": evaluate.relative_error(weights["learned"], theory_optimal(flat, n)).reshape(K, R),
        "label_row_ratio": weights["label_row_ratio"].reshape(K, R),
        "key_column_ratio": weights["key_column_ratio"].reshape(K, R),
        "initial_ratio": torch.maximum(trained.initial["label_row_ratio"], trained.initial["key_column_ratio"]).reshape(
            K, R
        ),
        "curve": (curve / optimal_loss).reshape(-1, K, R),
    }


def kappa(result: OneStepPGDResult) -> float:
    """The condition number of the random-start runs' ill-conditioned Σ (read off the covariance)."""
    eigenvalues = torch.linalg.eigvalsh(result.random_start_covariance[1, 0])
    return (eigenvalues.max() / eigenvalues.min()).item()


def check(checks: ClaimChecks, result: OneStepPGDResult) -> None:
    """From a random start: every model on Σ = I converges; on the ill-conditioned Σ at least one stalls."""
    R = result.random_start_loss_ratio.shape[1]
    checks.at_most(
        f"random start, Σ = I: max relative error of A to Γ* over {R} models",
        result.random_start_error[0].max().item(),
        0.02,
        reason="2 %, the balanced start's bar",
    )
    vanishing = torch.maximum(result.random_start_label_row_ratio, result.random_start_key_column_ratio)[0]
    checks.at_most(
        "random start, Σ = I: worst ratio of the blocks that vanish at the optimum",
        vanishing.max().item(),
        0.05,
        reason=f"from at least {result.random_start_initial_ratio[0].min().item():.2f} at the start",
    )
    stalled = int((result.random_start_loss_ratio[1] >= STALL).sum())
    checks.at_least(
        f"random start, κ = {kappa(result):.3g}: models whose MSE stays ≥ {STALL:g} f* (of {R})",
        stalled,
        1,
        reason="the finding: a plateau Adam does not leave within the budget",
    )


def summary(r: OneStepPGDResult) -> dict[str, float | int]:
    """The random-start scalars the chapter quotes (glue names without the chapter's prefix)."""
    ratio = r.random_start_loss_ratio
    stalled = ratio[1] >= STALL
    vanishing = torch.maximum(r.random_start_label_row_ratio, r.random_start_key_column_ratio)
    converged_error = r.random_start_error[1][~stalled]
    return {
        "rs_models": ratio.shape[1],
        "rs_kappa": kappa(r),
        "rs_iso_err_max": r.random_start_error[0].max().item(),
        "rs_iso_ratio_max": vanishing[0].max().item(),
        "rs_iso_initial_min": r.random_start_initial_ratio[0].min().item(),
        "rs_iso_loss_max": ratio[0].max().item(),
        "rs_stalled": int(stalled.sum()),
        "rs_stall_low": ratio[1][stalled].min().item() if stalled.any() else float("nan"),
        "rs_stall_high": ratio[1][stalled].max().item() if stalled.any() else float("nan"),
        "rs_stall_label_min": r.random_start_label_row_ratio[1][stalled].min().item()
        if stalled.any()
        else float("nan"),
        "rs_ill_loss_max": ratio[1][~stalled].max().item() if (~stalled).any() else float("nan"),
        "rs_ill_err_low": converged_error.min().item() if len(converged_error) else float("nan"),
        "rs_ill_err_high": converged_error.max().item() if len(converged_error) else float("nan"),
    }
