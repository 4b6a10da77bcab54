"""Gradient flow from a small balanced start reaches the global minimum (Zhang, Frei and Bartlett 2023, Thm 4.1).

Three experiments on x ~ N(0, Λ), w ~ N(0, I_d), noiseless, Λ = diag(``spectrum``):

- the exact population gradient flow of the reduced objective in (U, u) (:mod:`icl.dynamics`), integrated by RK4
  from each seed's balanced start, for every N in ``flow_contexts``: the product uU reaches Γ⁻¹, u and U their
  limits, the excess loss falls linearly on a log scale, and u² − ‖U‖²_F stays at its initial value;
- stochastic training (Adam by default, or plain SGD, on fresh prompts and the book's MSE) of the full one-layer
  model (P, Q both (d+1) × (d+1)) from the same starts at N = ``n_context``: the gauge-invariant product
  A = −P[d, d] Q[:d, :d] reaches Γ⁻¹ too, while the factors leave the flow's (finite steps break the balance);
- plain SGD with a constant rate on large batches (``follow_batch``) from the same starts, for ZFB time
  ``follow_time`` at each rate of ``follow_rates``, against the flow at matched times t = 2·rate·step: the
  discretisation that the flow is the limit of, as the rate shrinks (:mod:`.follow_flow`).

Flow times are ZFB's (the flow of ½·MSE). Losses are reported on ZFB's ½·MSE scale, as their L* is.

Shapes in the result: ``F`` context lengths of the flow, ``S`` seeds, ``T`` flow records, ``K`` training snapshots,
``R`` rates of the flow-following SGD runs, ``J`` their snapshots.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from icl import dynamics, evaluate, rng, store, tasks, theory
from icl.checks import ClaimChecks
from icl.config import (
    LinearExperimentConfig,
    finite_float,
    int_tuple,
    one_of,
    positive_float_tuple,
    positive_int,
)
from icl.evaluate import monte_carlo_predictions
from icl.models import LinearTransformer, balanced_one_layer
from icl.train import OPTIMISERS, TrainConfig, fit_cached

from . import follow_flow

NAME = "gradient_flow"
SNAPSHOTS = 60


@dataclass(frozen=True)
class GradientFlowConfig(LinearExperimentConfig):
    """The experiment's parameters; every field is validated on construction. ``optimiser`` ("adam" or "sgd") and
    ``learning_rate`` train on the book's MSE (an SGD rate η there is 2η on ZFB's ½·MSE); ``init_std`` is the spread
    of the entries the balanced start leaves at 0."""

    spectrum: tuple[float, ...] = (2.0, 1.0, 1.0, 0.5, 0.25)
    flow_contexts: tuple[int, ...] = (5, 20)
    init_scale: float = 0.5
    flow_time: float = 200.0
    flow_step: float = 0.01
    n_context: int = 20
    train_steps: int = 4000
    batch_size: int = 4096
    learning_rate: float = 0.02
    optimiser: str = "adam"
    init_std: float = 1e-6
    n_test: int = 400_000
    follow_rates: tuple[float, ...] = (0.01, 0.005, 0.0025)
    follow_time: float = 10.0
    follow_batch: int = 4096

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared training fields
        put = self._set
        put("spectrum", positive_float_tuple("spectrum", self.spectrum))
        put("flow_contexts", int_tuple("flow_contexts", self.flow_contexts))
        put("init_scale", finite_float("init_scale", self.init_scale, minimum=0.0, strict=True))
        put("flow_time", finite_float("flow_time", self.flow_time, minimum=0.0, strict=True))
        put("flow_step", finite_float("flow_step", self.flow_step, minimum=0.0, strict=True))
        if self.flow_step > 0.1:
            raise ValueError(f"flow_step must be at most 0.1 for RK4 to be stable and accurate, got {self.flow_step}")
        put("n_context", positive_int("n_context", self.n_context))
        one_of("optimiser", self.optimiser, OPTIMISERS)
        put("follow_rates", tuple(sorted(positive_float_tuple("follow_rates", self.follow_rates), reverse=True)))
        put("follow_time", finite_float("follow_time", self.follow_time, minimum=0.0, strict=True))
        put("follow_batch", positive_int("follow_batch", self.follow_batch))
        for rate in self.follow_rates:
            if round(self.follow_time / (2 * rate)) < follow_flow.SNAPSHOTS:
                raise ValueError(
                    f"follow_time / (2 · rate) must give at least {follow_flow.SNAPSHOTS} SGD steps at every rate of "
                    f"follow_rates, got {self.follow_time} / (2 · {rate})"
                )

    @property
    def dim(self) -> int:
        return len(self.spectrum)


CONFIG = GradientFlowConfig
# What `quick` changes against the paper (the config's defaults), and why (see icl.presets).
QUICK: dict[str, Any] = dict(n_seeds=3, train_steps=2000, batch_size=1024, n_test=200_000, follow_time=4.0)
WHY_QUICK: dict[str, str] = dict(
    n_seeds="3 seeds, the fewest the book's checks accept",
    follow_time="SGD follows the flow over its first 4 time units (u from 0.5 to about 1.3 of its 1.6), not 10",
    train_steps="half the Adam steps; the product still ends within 1 % of Γ⁻¹",
    batch_size="4× smaller batches; the cosine learning-rate decay averages the extra noise",
    n_test="half the test set; the standard error is in the check",
)


class GradientFlowResult(NamedTuple):
    """Every number the chapter plots or checks."""

    covariance: torch.Tensor  # (d, d) Λ
    flow_contexts: torch.Tensor  # (F,)
    optimum: torch.Tensor  # (F, d, d) Γ⁻¹ at each N of the flow
    limit_u: torch.Tensor  # (F,) ‖Γ⁻¹‖_F^{½}, the limit of u from a balanced start
    optimal_loss: torch.Tensor  # (F,) L* = ½[tr Λ − tr(Λ² Γ⁻¹)], ½·MSE
    flow_times: torch.Tensor  # (T,)
    flow_relative_error: torch.Tensor  # (T, F, S) ‖uU − Γ⁻¹‖_F / ‖Γ⁻¹‖_F
    flow_excess_loss: torch.Tensor  # (T, F, S) L − L*
    flow_balance: torch.Tensor  # (T, F, S) u² − ‖U‖²_F
    flow_u: torch.Tensor  # (T, F, S)
    flow_limit_u: torch.Tensor  # (F, S) the limit of u given each start's balance (exactly ‖Γ⁻¹‖_F^½ at balance 0)
    # The trained models at n_context, from the same starts:
    trained_steps: torch.Tensor  # (K,)
    trained_relative_error: torch.Tensor  # (K, S) of the product A = u U (u = P[d, d], U = −Q[:d, :d])
    trained_u: torch.Tensor  # (K, S)
    trained_balance: torch.Tensor  # (K, S) u² − ‖U‖²_F
    trained_learned: torch.Tensor  # (S, d, d) final A
    trained_excess_loss: torch.Tensor  # (S,) exact L − L* of the final A's predictor
    trained_test_loss: torch.Tensor  # (S,) Monte Carlo ½·MSE of the trained model
    trained_test_loss_se: torch.Tensor  # (S,)
    trained_optimal_loss: torch.Tensor  # () L* at n_context, ½·MSE
    trained_error_to_inverse: torch.Tensor  # (S,) ‖A − Λ⁻¹‖_F / ‖Γ⁻¹‖_F
    # Constant-rate SGD on follow_batch prompts against the flow at N = n_context, at matched times:
    follow_rates: torch.Tensor  # (R,) on the book's MSE (2·rate on ZFB's ½·MSE), largest first
    follow_times: torch.Tensor  # (R, J) ZFB time 2·rate·step of each snapshot
    follow_u: torch.Tensor  # (R, J, S) u of SGD
    follow_U_norm: torch.Tensor  # (R, J, S) ‖U‖_F of SGD
    follow_flow_u: torch.Tensor  # (R, J, S) u of the flow at the same times
    follow_flow_U_norm: torch.Tensor  # (R, J, S) ‖U‖_F of the flow
    follow_balance: torch.Tensor  # (R, J, S) u² − ‖U‖²_F of SGD (the flow keeps its start's)
    elapsed_seconds: float


def covariance(config: GradientFlowConfig) -> torch.Tensor:
    """Λ = diag(spectrum), (d, d) float64."""
    return torch.diag(torch.tensor(config.spectrum, dtype=torch.float64, device=config.device))


def _start(config: GradientFlowConfig) -> tuple[LinearTransformer, dynamics.FlowState]:
    """The S models to train, at their balanced start, and that start as flow states (U (S, d, d), u (S,))."""
    model = balanced_one_layer(
        config.dim,
        config.n_seeds,
        scale=config.init_scale,
        init_std=config.init_std,
        generator=rng.streams(config.seed, config.device).init,
    )
    return model, _factors(model)


def _factors(model: LinearTransformer) -> dynamics.FlowState:
    """(U, u) = (−Q[:d, :d], P[d, d]) of each member of a one-layer full model, float64."""
    d = model.dim
    P, Q = (w[:, 0].detach().double() for w in model.weights())
    return dynamics.FlowState(-Q[:, :d, :d], P[:, d, d])


def _flows(config: GradientFlowConfig, start: dynamics.FlowState, progress: bool) -> dict[str, Any]:
    lam = covariance(config)
    out: dict[str, list[torch.Tensor]] = {}
    for n in config.flow_contexts:
        path = dynamics.gradient_flow(
            lam, n, start, time=config.flow_time, step=config.flow_step, n_records=200, progress=progress
        )
        limit = dynamics.limit(lam, n, path.balance[0])  # each seed's own conserved balance (≈ 0)
        for key, value in [
            ("relative_error", path.relative_error),
            ("excess_loss", path.excess_loss),
            ("balance", path.balance),
            ("u", path.u),
            ("limit_u", limit.u),
        ]:
            out.setdefault(key, []).append(value)
        out.setdefault("times", [path.times])
    # limit_u is (F, S); the rest are records over time, (T, F, S)
    return {k: torch.stack(v) if k == "limit_u" else torch.stack(v, dim=1) for k, v in out.items()} | {
        "times": out["times"][0]
    }


@torch.no_grad()
def _test_loss(model: LinearTransformer, config: GradientFlowConfig, generator: torch.Generator):
    """Monte Carlo ½·MSE of each model and its standard error. -> 2 × (S,)."""
    lam32 = covariance(config).float().expand(config.n_seeds, config.dim, config.dim)  # (S, d, d): one per model
    predictions = monte_carlo_predictions(
        config.n_test,
        config.n_context,
        lambda size: tasks.sample_regression(size, config.n_context, lam32, generator=generator),
        {"model": lambda b: model.predict(b.X, b.y, b.x_query)},
    )
    mse = evaluate.mse(predictions["model"], predictions["target"])
    return mse.mean / 2, mse.standard_error / 2


def run(config: GradientFlowConfig, *, progress: bool = True) -> GradientFlowResult:
    """Integrate the flows, train the ensemble (cached), evaluate and compare with theory."""
    began = time.perf_counter()
    lam = covariance(config)
    model, start = _start(config)
    flows = store.cached(f"{NAME}-flows", config, lambda: _flows(config, start, progress))

    n = config.n_context
    lam32 = lam.float().expand(config.n_seeds, config.dim, config.dim)  # (S, d, d): one per model
    train_config = TrainConfig(steps=config.train_steps, learning_rate=config.learning_rate, optimiser=config.optimiser)
    streams = rng.streams(config.seed, config.device, part=1)
    trained = fit_cached(
        NAME,
        config,
        "trained",
        model,
        lambda g: tasks.sample_regression(config.batch_size, n, lam32, generator=g),
        train_config,
        generator=streams.train,
        progress=progress,
        description=f"{config.optimiser}, N = {n}, {config.n_seeds} models",
        snapshot_every=max(1, config.train_steps // SNAPSHOTS),
    )
    optimum_n = theory.optimal_preconditioner(lam, n)
    U_history, u_history = (x.to(lam.device) for x in follow_flow.snapshot_factors(trained, config.dim))
    A_history = u_history[..., None, None] * U_history
    learned = A_history[-1]
    loss, loss_se = _test_loss(model, config, streams.eval)

    optimum = torch.stack([theory.optimal_preconditioner(lam, m) for m in config.flow_contexts])
    follow = follow_flow.run(config, lam, lambda: _start(config), NAME, progress)
    cpu = lambda x: torch.as_tensor(x).detach().double().cpu()  # noqa: E731
    return GradientFlowResult(
        covariance=cpu(lam),
        flow_contexts=torch.tensor(config.flow_contexts),
        optimum=cpu(optimum),
        limit_u=cpu(torch.stack([dynamics.limit(lam, m).u for m in config.flow_contexts])),
        optimal_loss=cpu(torch.stack([theory.optimal_one_step_loss(lam, m) / 2 for m in config.flow_contexts])),
        flow_times=cpu(flows["times"]),
        flow_relative_error=cpu(flows["relative_error"]),
        flow_excess_loss=cpu(flows["excess_loss"]),
        flow_balance=cpu(flows["balance"]),
        flow_u=cpu(flows["u"]),
        flow_limit_u=cpu(flows["limit_u"]),
        trained_steps=trained.snapshot_steps,
        trained_relative_error=cpu(evaluate.relative_error(A_history, optimum_n)),
        trained_u=cpu(u_history),
        trained_balance=cpu(u_history**2 - torch.linalg.matrix_norm(U_history) ** 2),
        trained_learned=cpu(learned),
        trained_excess_loss=cpu(dynamics.excess_loss(learned, lam, n)),
        trained_test_loss=cpu(loss),
        trained_test_loss_se=cpu(loss_se),
        trained_optimal_loss=cpu(theory.optimal_one_step_loss(lam, n) / 2),
        trained_error_to_inverse=cpu(
            torch.linalg.matrix_norm(learned - torch.linalg.inv(lam)) / torch.linalg.matrix_norm(optimum_n)
        ),
        follow_rates=torch.tensor(config.follow_rates, dtype=torch.float64),
        follow_times=follow["times"],
        follow_u=follow["u"],
        follow_U_norm=follow["U_norm"],
        follow_flow_u=follow["flow_u"],
        follow_flow_U_norm=follow["flow_U_norm"],
        follow_balance=follow["balance"],
        elapsed_seconds=time.perf_counter() - began,
    )


FLOW_TOLERANCE = 1e-6


def claim_checks(result: GradientFlowResult) -> ClaimChecks:
    """Thm 4.1 against the flow and against stochastic training, with the tolerances the chapter states."""
    r = result
    checks = ClaimChecks()
    final = r.flow_relative_error[-1]  # (F, S)
    drift = (r.flow_balance - r.flow_balance[:1]).abs().amax(0)  # (F, S)
    u_error = (r.flow_u[-1] / r.flow_limit_u - 1).abs()
    checks.at_most(
        "flow: ‖uU − Γ⁻¹‖/‖Γ⁻¹‖ at the end (worst N, seed)",
        final.max().item(),
        FLOW_TOLERANCE,
        reason="RK4 in float64 converges far below it; the start is at ≈ 1",
    )
    checks.at_least(
        "flow: error at the start (best N, seed)",
        r.flow_relative_error[0].min().item(),
        0.5,
        reason="the start is far from Γ⁻¹, so reaching it is the flow's doing",
    )
    checks.at_most(
        "flow: |u² − ‖U‖²_F − its start| (worst over time)",
        drift.max().item(),
        FLOW_TOLERANCE,
        reason="the flow conserves it exactly; RK4's drift is O(h⁴)",
    )
    checks.at_most(
        "flow: |u/u∞ − 1| at the end (u∞ = ‖Γ⁻¹‖_F^½ at balance 0)",
        u_error.max().item(),
        FLOW_TOLERANCE,
        reason="balance plus uU = Γ⁻¹ fix u",
    )
    checks.at_most(
        "flow: L − L* at the end (½·MSE)",
        r.flow_excess_loss[-1].max().item(),
        1e-12,
        reason="quadratic in the error, so ≈ (1e-6)²·L* at most",
    )
    learned_error = r.trained_relative_error[-1]  # (S,)
    checks.at_most(
        f"trained: ‖A − Γ⁻¹‖/‖Γ⁻¹‖ (worst of {len(learned_error)} seeds)",
        learned_error.max().item(),
        0.03,
        reason="3 %: above the training budget's convergence, 10× below Λ⁻¹'s distance",
    )
    checks.at_least(
        "trained: error to Λ⁻¹ / error to Γ⁻¹ (worst seed)",
        (r.trained_error_to_inverse / learned_error).min().item(),
        5.0,
        reason="the run tells Γ⁻¹ from the naive Λ⁻¹",
    )
    follow_flow.claim_checks(r, checks)
    seeds = len(r.trained_test_loss)
    mean = r.trained_test_loss.mean().item()
    se = (r.trained_test_loss_se**2).sum().sqrt().item() / seeds
    checks.close(
        f"trained: test ½·MSE, mean of {seeds} seeds (± 3 s.e. = {3 * se:.2g})",
        mean,
        r.trained_optimal_loss.item(),
        atol=3 * se,
        reason="3 Monte Carlo standard errors of the mean",
    )
    return checks


def summary(result: GradientFlowResult) -> dict[str, float | str]:
    """The numbers the chapter's text quotes, by glue name (without the ``gradient_flow_`` prefix). ``slope_0`` and
    ``slope_1``: the flow's linear rate c (excess loss ∝ e^(−ct), fitted between a quarter and a half of the flow, mean
    over seeds) at the first and the last N."""
    r = result
    deviations, drifts = follow_flow.deviation(r), follow_flow.drift(r)
    rate_index = slice(len(r.flow_times) // 4, len(r.flow_times) // 2)
    slopes = [
        np.polyfit(r.flow_times[rate_index].numpy(), np.log(r.flow_excess_loss[rate_index, f].mean(-1).numpy()), 1)[0]
        for f in range(len(r.flow_contexts))
    ]
    return {
        "flow_error_max": r.flow_relative_error[-1].max().item(),
        "drift_max": (r.flow_balance - r.flow_balance[:1]).abs().max().item(),
        "u_limit": r.limit_u[-1].item(),
        "u_flow": r.flow_u[-1, -1].mean().item(),
        "trained_u_min": r.trained_u[-1].min().item(),
        "trained_u_max": r.trained_u[-1].max().item(),
        "trained_error_max": r.trained_relative_error[-1].max().item(),
        "trained_balance_max": r.trained_balance[-1].abs().max().item(),
        "trained_inverse_min": r.trained_error_to_inverse.min().item(),
        "trained_loss": r.trained_test_loss.mean().item(),
        "trained_loss_se": ((r.trained_test_loss_se**2).sum().sqrt() / len(r.trained_test_loss)).item(),
        "optimal_loss": r.trained_optimal_loss.item(),
        "trained_excess_max": r.trained_excess_loss.max().item(),
        "minutes": r.elapsed_seconds / 60,
        "follow_rates": ", ".join(f"{rate:g}" for rate in r.follow_rates.tolist()),
        "follow_time": r.follow_times[0, -1].item(),
        "follow_deviation_small": deviations[-1].item(),
        "follow_deviation_large": deviations[0].item(),
        "follow_drift_small": drifts[-1].item(),
        "follow_drift_large": drifts[0].item(),
        "follow_drift_ratio": (drifts[-1] / drifts[-2]).item() if len(drifts) > 1 else 1.0,
        "follow_u_start": r.follow_flow_u[-1, 0].mean().item(),
        "follow_u_end": r.follow_flow_u[-1, -1].mean().item(),
        "slope_0": float(-slopes[0]),
        "slope_1": float(-slopes[-1]),
    }


def key_arrays(result: GradientFlowResult) -> dict[str, Any]:
    """The arrays behind the figures and checks, for the chapter's JSON (the flow at every 10th record)."""
    r = result
    return {
        "flow_contexts": r.flow_contexts,
        "optimum": r.optimum,
        "limit_u": r.limit_u,
        "optimal_loss": r.optimal_loss,
        "flow_times": r.flow_times[::10],
        "flow_relative_error": r.flow_relative_error[::10],
        "flow_excess_loss": r.flow_excess_loss[::10],
        "flow_balance": r.flow_balance[::10],
        "flow_u": r.flow_u[::10],
        "trained_steps": r.trained_steps,
        "trained_relative_error": r.trained_relative_error,
        "trained_u": r.trained_u,
        "trained_balance": r.trained_balance,
        "trained_learned": r.trained_learned,
        "trained_excess_loss": r.trained_excess_loss,
        "trained_test_loss": r.trained_test_loss,
        "trained_test_loss_se": r.trained_test_loss_se,
        "trained_optimal_loss": r.trained_optimal_loss,
        **{k: v for k, v in r._asdict().items() if k.startswith("follow_")},
    }
