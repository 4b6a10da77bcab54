"""One layer of linear self-attention is one step of preconditioned GD, with preconditioner Γ*
(Ahn et al. 2023, Thm 1; Zhang, Frei, Bartlett 2023, Thm 4.1).

A one-layer LSA with full (P, Q) is trained on noiseless prompts x ~ N(0, Σ), w ~ N(0, I_d), for
Σ = I_d and for a randomly rotated Σ with condition number κ, over several seeds (an ensemble
trained side by side), and for a sweep of context lengths n on the ill-conditioned Σ. Its
gauge-invariant preconditioner A = −P[d, d] · Q[:d, :d] is compared with
Γ* = ((1 + 1/n) Σ + tr(Σ)/n · I)⁻¹ and with the naive answer Σ⁻¹.

A second ensemble starts from a purely random small start instead of the balanced one, ``R`` models on
Σ = I and ``R`` on a rotated Σ of condition number ``random_start_condition_number``: on the ill-conditioned Σ
some of them stall on a plateau well above the optimum.

Shapes in the result: ``K = 2`` covariance kinds (isotropic, ill-conditioned), ``S`` seeds,
``N`` context lengths of the sweep, ``R`` random-start models per kind, ``d`` dimension.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from icl import evaluate, theory
from icl.checks import ClaimChecks
from icl.config import (
    LinearExperimentConfig,
    finite_float,
    int_tuple,
    one_of,
    positive_int,
)
from icl.evaluate import downsample_curve
from icl.experiments.one_step_pgd import random_start
from icl.experiments.one_step_pgd.random_start import STALL
from icl.experiments.one_step_pgd.random_start import kappa as random_start_kappa
from icl.experiments.one_step_pgd.training import (
    KINDS,
    NAME,
    covariances,
    read_weights,
    test_losses,
    theory_optimal,
    train_ensemble,
)

__all__ = [
    "CONFIG",
    "KINDS",
    "NAME",
    "QUICK",
    "STALL",
    "WHY_QUICK",
    "OneStepPGDConfig",
    "OneStepPGDResult",
    "claim_checks",
    "covariances",
    "key_arrays",
    "random_start_kappa",
    "run",
    "summary",
]

INITIALISATIONS: tuple[str, ...] = ("balanced", "random")


@dataclass(frozen=True)
class OneStepPGDConfig(LinearExperimentConfig):
    """The experiment's parameters; every field is validated on construction.

    ``batch_size`` is the number of prompts per Adam step at n = ``n_context``; the runs of the sweep
    over n keep the number of context examples per step, ``batch_size · n_context``, the same, so
    that short prompts get more of them (their gradients are noisier) and every run costs alike.
    """

    dim: int = 5
    n_context: int = 20
    condition_number: float = 16.0
    n_context_sweep: tuple[int, ...] = (5, 10, 20, 40, 80)
    train_steps: int = 20_000
    batch_size: int = 8192
    learning_rate: float = 0.03
    initialisation: str = "balanced"
    init_scale: float = 0.5
    init_std: float = 0.01
    n_test: int = 400_000
    random_start_seeds: int = 20
    random_start_condition_number: float = 16.0

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared training fields
        put = self._set
        for name in ("dim", "n_context"):
            put(name, positive_int(name, getattr(self, name)))
        put("condition_number", finite_float("condition_number", self.condition_number, minimum=1.0))
        put("n_context_sweep", int_tuple("n_context_sweep", self.n_context_sweep))
        one_of("initialisation", self.initialisation, INITIALISATIONS)
        put("init_scale", finite_float("init_scale", self.init_scale, minimum=0.0))
        put("random_start_seeds", positive_int("random_start_seeds", self.random_start_seeds))
        put(
            "random_start_condition_number",
            finite_float("random_start_condition_number", self.random_start_condition_number, minimum=1.0),
        )


CONFIG = OneStepPGDConfig
# What `quick` changes against the paper (the config's defaults), and why (see icl.presets).
QUICK: dict[str, Any] = dict(condition_number=4.0, train_steps=2000, batch_size=1024, n_seeds=3, n_test=200_000)
WHY_QUICK: dict[str, str] = dict(
    condition_number=(
        "κ = 4: a smallest eigenvalue 4× larger, so the slowest direction of the loss converges in the budget"
    ),
    train_steps="10× fewer Adam steps; the 2 % checks hold at every n of the sweep",
    batch_size="8× smaller batches; the cosine learning-rate decay averages the extra noise",
    n_seeds="3 seeds, the fewest the book's checks accept",
    n_test="half the test set; the standard error is stated beside every loss",
)


class OneStepPGDResult(NamedTuple):
    """Every number the chapter plots or checks. At n = ``n_context``, over kinds and seeds:"""

    covariance: torch.Tensor  # (K, S, d, d)
    learned: torch.Tensor  # (K, S, d, d) symmetric part of the learned preconditioner
    asymmetry: torch.Tensor  # (K, S) ‖A − Aᵀ‖_F / ‖A‖_F
    optimal: torch.Tensor  # (K, S, d, d) Γ*
    error_to_optimal: torch.Tensor  # (K, S) ‖A − Γ*‖_F / ‖Γ*‖_F
    error_to_inverse: torch.Tensor  # (K, S) ‖A − Σ⁻¹‖_F / ‖Σ⁻¹‖_F
    label_row_ratio: torch.Tensor  # (K, S) ‖P[d, :d]‖ / |P[d, d]|: theory says 0
    key_column_ratio: torch.Tensor  # (K, S) ‖Q[d, :d]‖ / ‖Q[:d, :d]‖_F: theory says 0
    initial_label_row_ratio: torch.Tensor  # (K, S) the same two ratios at initialisation
    initial_key_column_ratio: torch.Tensor  # (K, S)
    test_loss: torch.Tensor  # (K, S) Monte Carlo MSE of the trained model
    test_loss_se: torch.Tensor  # (K, S) its standard error
    optimal_test_loss: torch.Tensor  # (K, S) Monte Carlo MSE of ŷ = x_qᵀ Γ* h on the same prompts
    optimal_loss: torch.Tensor  # (K,) f* = tr Σ − tr(Σ Γ* Σ)
    inverse_loss: torch.Tensor  # (K,) f(Σ⁻¹)
    gd_loss: torch.Tensor  # (K,) f(η* I), the best single plain GD step
    zero_loss: torch.Tensor  # (K,) tr Σ, the zero predictor's MSE
    curve_steps: torch.Tensor  # (T,) step at the end of each averaging window
    curve: torch.Tensor  # (T, K, S) training MSE, window means
    # The sweep over n on the ill-conditioned Σ:
    sweep_n: torch.Tensor  # (N,)
    sweep_error_to_optimal: torch.Tensor  # (N, S)
    sweep_error_to_inverse: torch.Tensor  # (N, S)
    sweep_optimal_to_inverse: torch.Tensor  # (N, S) ‖Γ* − Σ⁻¹‖_F / ‖Σ⁻¹‖_F, the gap the check must resolve
    sweep_loss_ratio: torch.Tensor  # (N, S) Monte Carlo loss / f*
    # From a random small start at n = n_context, on I and on a rotated Σ of condition number
    # random_start_condition_number:
    random_start_covariance: torch.Tensor  # (K, R, d, d)
    random_start_loss_ratio: torch.Tensor  # (K, R) training MSE over the last tenth of the steps / f*
    random_start_error: torch.Tensor  # (K, R) ‖A − Γ*‖_F / ‖Γ*‖_F
    random_start_label_row_ratio: torch.Tensor  # (K, R)
    random_start_key_column_ratio: torch.Tensor  # (K, R)
    random_start_initial_ratio: torch.Tensor  # (K, R) the larger of the two ratios at initialisation
    random_start_curve: torch.Tensor  # (T, K, R) training MSE / f*, window means (steps: curve_steps)
    elapsed_seconds: float


def run(config: OneStepPGDConfig, *, progress: bool = True) -> OneStepPGDResult:
    """Train, evaluate and compare with theory; every training run is cached (see :func:`fit_cached`)."""
    start = time.perf_counter()
    K, S = len(KINDS), config.n_seeds
    covariance = covariances(config)  # (K, S, d, d)
    n = config.n_context
    flat_covariance = covariance.reshape(K * S, config.dim, config.dim)
    main = train_ensemble(config, flat_covariance, n, 0, progress)
    read = {k: v.reshape(K, S, *v.shape[1:]) for k, v in read_weights(main.model).items()}
    initial = {k: v.reshape(K, S) for k, v in main.initial.items() if k.endswith("ratio")}
    loss, loss_se, optimal_mc = (
        x.reshape(K, S) for x in test_losses(main.model, flat_covariance, n, config, main.eval_generator)
    )
    optimal = torch.stack([theory_optimal(kind, n) for kind in covariance])
    inverse = torch.linalg.inv(covariance)
    one = covariance[:, 0]  # the closed-form losses depend on Σ's spectrum only, shared by all seeds
    optimal_loss = torch.stack([theory.optimal_one_step_loss(c, n) for c in one])
    inverse_loss = torch.stack([theory.one_step_loss(torch.linalg.inv(c), c, n) for c in one])
    eye = torch.eye(config.dim, dtype=torch.float64, device=covariance.device)
    gd_loss = torch.stack([theory.one_step_loss(theory.optimal_gd_step_size(c, n) * eye, c, n) for c in one])
    steps, curve = downsample_curve(main.losses)

    sweep_errors, sweep_inverse, sweep_gap, sweep_ratio = [], [], [], []
    for part, n_sweep in enumerate(config.n_context_sweep, start=1):
        ill = covariance[1]
        if n_sweep == n:
            learned, mc = read["learned"][1], loss[1]
        else:
            trained = train_ensemble(config, ill, n_sweep, part, progress)
            learned = read_weights(trained.model)["learned"]
            mc = test_losses(trained.model, ill, n_sweep, config, trained.eval_generator)[0]
        gamma = theory_optimal(ill, n_sweep)
        sweep_errors.append(evaluate.relative_error(learned, gamma))
        sweep_inverse.append(evaluate.relative_error(learned, inverse[1]))
        sweep_gap.append(evaluate.relative_error(gamma, inverse[1]))
        sweep_ratio.append(mc / theory.optimal_one_step_loss(ill[0], n_sweep))

    from_random_start = random_start.runs(config, progress)
    cpu = lambda x: x.detach().double().cpu()  # noqa: E731
    return OneStepPGDResult(
        covariance=cpu(covariance),
        learned=cpu(read["learned"]),
        asymmetry=cpu(read["asymmetry"]),
        optimal=cpu(optimal),
        error_to_optimal=cpu(evaluate.relative_error(read["learned"], optimal)),
        error_to_inverse=cpu(evaluate.relative_error(read["learned"], inverse)),
        label_row_ratio=cpu(read["label_row_ratio"]),
        key_column_ratio=cpu(read["key_column_ratio"]),
        initial_label_row_ratio=cpu(initial["label_row_ratio"]),
        initial_key_column_ratio=cpu(initial["key_column_ratio"]),
        test_loss=cpu(loss),
        test_loss_se=cpu(loss_se),
        optimal_test_loss=cpu(optimal_mc),
        optimal_loss=cpu(optimal_loss),
        inverse_loss=cpu(inverse_loss),
        gd_loss=cpu(gd_loss),
        zero_loss=cpu(torch.stack([torch.trace(c) for c in one])),
        curve_steps=steps,
        curve=cpu(curve.reshape(-1, K, S)),
        sweep_n=torch.tensor(config.n_context_sweep),
        sweep_error_to_optimal=cpu(torch.stack(sweep_errors)),
        sweep_error_to_inverse=cpu(torch.stack(sweep_inverse)),
        sweep_optimal_to_inverse=cpu(torch.stack(sweep_gap)),
        sweep_loss_ratio=cpu(torch.stack(sweep_ratio)),
        **{f"random_start_{key}": cpu(value) for key, value in from_random_start.items()},
        elapsed_seconds=time.perf_counter() - start,
    )


def claim_checks(result: OneStepPGDResult) -> ClaimChecks:
    """The chapter's claim checks; the tolerances and their reasons are stated in the chapter."""
    checks = ClaimChecks()
    n_seeds = result.test_loss.shape[1]
    for k, kind in enumerate(KINDS):
        error = result.error_to_optimal[k].max().item()
        checks.at_most(
            f"{kind}: max relative error of A to Γ*", error, 0.02, reason="2 %, over the quick budget's convergence"
        )
        checks.at_least(
            f"{kind}: error to Σ⁻¹ / error to Γ*",
            result.error_to_inverse[k].min().item() / error,
            5.0,
            reason="tells Γ* from the naive Σ⁻¹",
        )
        se = (result.test_loss_se[k] ** 2).mean().sqrt().item() / n_seeds**0.5
        checks.close(
            f"{kind}: test MSE (s.e. {se:.4f})",
            result.test_loss[k].mean().item(),
            result.optimal_loss[k].item(),
            rtol=0.02,
            reason="2 % of f*; s.e. shown",
        )
        checks.close(
            f"{kind}: test MSE / Γ* predictor's on the same prompts",
            (result.test_loss[k] / result.optimal_test_loss[k]).max().item(),
            1.0,
            rtol=0.01,
            reason="paired: the Monte Carlo noise cancels",
        )
        checks.at_most(
            f"{kind}: test MSE / zero predictor's",
            (result.test_loss[k] / result.zero_loss[k]).max().item(),
            0.5,
            reason="beats ŷ = 0 by half",
        )
    vanishing = torch.maximum(result.label_row_ratio, result.key_column_ratio)
    start = torch.maximum(result.initial_label_row_ratio, result.initial_key_column_ratio)
    checks.at_most(
        "blocks that vanish at the optimum: worst ratio after training",
        vanishing.max().item(),
        0.02,
        reason=f"2 %, the convergence bar of the A check (the worst at the start: {start.max().item():.3f})",
    )
    worst = result.sweep_error_to_optimal.max().item()
    checks.at_most("sweep over n: max relative error of A to Γ*(n)", worst, 0.02, reason="2 %, every n of the sweep")
    checks.at_least(
        "sweep over n: error to Σ⁻¹ / error to Γ*(n)",
        (result.sweep_error_to_inverse / result.sweep_error_to_optimal).min().item(),
        5.0,
        reason="tells Γ*(n) from Σ⁻¹ at every n",
    )
    random_start.check(checks, result)
    return checks


def summary(result: OneStepPGDResult) -> dict[str, float | int]:
    """The scalars the chapter's text quotes, by glue name (without the ``one_step_pgd_`` prefix)."""
    r = result
    n_seeds = r.test_loss.shape[1]
    out: dict[str, float | int] = {
        "seeds": n_seeds,
        "err_max": r.error_to_optimal.max().item(),
        "err_inverse_min": r.error_to_inverse.min().item(),
        "ratio_max": max(r.label_row_ratio.max().item(), r.key_column_ratio.max().item()),
        "initial_ratio_min": torch.maximum(r.initial_label_row_ratio, r.initial_key_column_ratio).min().item(),
        "initial_ratio_max": torch.maximum(r.initial_label_row_ratio, r.initial_key_column_ratio).max().item(),
        "asym_max": r.asymmetry.max().item(),
        "minutes": r.elapsed_seconds / 60,
    }
    for k, tag in enumerate(("iso", "ill")):  # KINDS
        out[f"{tag}_test_loss"] = r.test_loss[k].mean().item()
        out[f"{tag}_test_se"] = (r.test_loss_se[k] ** 2).mean().sqrt().item() / n_seeds**0.5
        out[f"{tag}_optimal_loss"] = r.optimal_loss[k].item()
        out[f"{tag}_inverse_loss"] = r.inverse_loss[k].item()
    return (
        out
        | {
            "sweep_err_max": r.sweep_error_to_optimal.max().item(),
            "sweep_gap_small": r.sweep_optimal_to_inverse[0].mean().item(),
            "sweep_gap_large": r.sweep_optimal_to_inverse[-1].mean().item(),
            "sweep_gap_min": r.sweep_optimal_to_inverse.min().item(),
            "sweep_n_small": int(r.sweep_n[0]),
            "sweep_n_large": int(r.sweep_n[-1]),
        }
        | random_start.summary(r)
    )


def key_arrays(result: OneStepPGDResult) -> dict[str, Any]:
    """The arrays a reader most likely wants, for the chapter's JSON."""
    skip = ("curve", "curve_steps", "random_start_curve", "elapsed_seconds")
    return {k: v for k, v in result._asdict().items() if k not in skip}
