"""A trained GPT's layers progress like iterative Newton, not like gradient descent (Fu, Chen, Jia and Sharan 2023).

Three parts, on the shared GPT of :mod:`icl.gpt` (the one chapter 10 trains: x ~ N(0, I_d), w ~ N(0, I_d), 2d + 1
examples, the loss over every prefix):

- **the algorithms alone**: on prompts of 2d examples with Σ = I and with a two-level Σ of condition number κ (a
  fresh eigenbasis per prompt), how many steps iterative Newton and GD (η = 1/λ_max(Ŝ)) need to come within
  ``tolerance`` of least squares; and, along sequences, SimE between Newton after k steps and GD after 2^j steps,
  with GD's best match for every k (Fu et al.'s check of their method, their Fig. 26);
- **layer probes**: a least-squares read-out of every layer (:mod:`icl.probes`), fitted on ``n_probe`` training
  prompts, its error at every position of ``n_test`` other prompts (their Fig. 2);
- **best matches**: SimE between every layer's residuals and those of Newton after k = 0 … ``newton_steps`` steps
  and of GD after 2^0 … 2^``gd_log2_steps`` steps, and each layer's best match k*(ℓ) (their Fig. 3).

Residual vectors hold the errors at positions t = 1 … 2d (position 0, with no example, is left out: every algorithm
predicts 0 there). Errors are squared errors / d (1 = the zero predictor). Shapes: ``L`` layers, ``S`` seeds (the
GPT's members), ``K = 2d + 1`` positions, ``N`` Newton step counts, ``G`` GD step counts, ``C = 2`` covariances.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from icl import gpt, probes, rng, similarity, tasks
from icl.checks import ClaimChecks
from icl.config import finite_float, int_tuple, positive_int
from icl.experiments.iterative_newton import algorithms, ill_conditioned, recurrent
from icl.experiments.iterative_newton.algorithms import MAX_DOUBLINGS, NEWTON_BUDGET

NAME = "iterative_newton"
__all__ = [
    "CONFIG",
    "MAX_DOUBLINGS",
    "NAME",
    "NEWTON_BUDGET",
    "QUICK",
    "WHY_QUICK",
    "IterativeNewtonConfig",
    "IterativeNewtonResult",
    "claim_checks",
    "key_arrays",
    "run",
    "summary",
]


@dataclass(frozen=True)
class IterativeNewtonConfig(gpt.GargExperimentConfig):
    """The experiment's parameters; every field is validated on construction. Defaults are the paper's: Garg et
    al.'s GPT-2 (the model fields are chapter 10's, so that both load one trained model) and Fu et al.'s
    evaluation on 320 prompts, Newton steps up to 23 and GD steps up to 2¹²."""

    n_test: int = 320
    n_probe: int = 20_000
    newton_steps: int = 23
    gd_log2_steps: int = 12
    condition_number: float = 100.0
    tolerance: float = 1e-3
    n_algorithm_test: int = 200
    lstm_width: int = 256  # Fu et al.'s LSTM: 10 layers, 5.3M parameters
    lstm_layers: int = 10
    lstm_seeds: int = 3
    forget_context: int | None = 20  # Fu et al.'s forgetting test: n examples, the query a copy of x_{n−g} …
    forget_gaps: tuple[int, ...] | None = (3, 7, 11, 15, 19)  # … for these g; None: min(20, 2d) and 1, 3, 5, …

    def __post_init__(self) -> None:
        super().__post_init__()  # the GPT's fields, max_context >= 2d
        put = self._set
        for name in ("n_probe", "newton_steps", "gd_log2_steps", "n_algorithm_test", "lstm_width", "lstm_layers"):
            put(name, positive_int(name, getattr(self, name)))
        put("condition_number", finite_float("condition_number", self.condition_number, minimum=1.0))
        put("tolerance", finite_float("tolerance", self.tolerance, minimum=0.0, strict=True))
        if self.tolerance >= 1:
            raise ValueError(f"tolerance must be below 1 (a share of the starting deviation), got {self.tolerance}")
        put("lstm_seeds", positive_int("lstm_seeds", self.lstm_seeds))
        context = min(20, 2 * self.dim) if self.forget_context is None else self.forget_context
        put("forget_context", positive_int("forget_context", context, minimum=2))
        if self.forget_context > 2 * self.dim:
            raise ValueError(f"forget_context must be at most 2d = {2 * self.dim} (the trained prompts' length)")
        gaps = tuple(range(1, self.forget_context, 2)) if self.forget_gaps is None else self.forget_gaps
        gaps = int_tuple("forget_gaps", gaps)
        if max(gaps) >= self.forget_context:
            raise ValueError(f"forget_gaps must be below forget_context = {self.forget_context}, got {gaps}")
        put("forget_gaps", gaps)

    def ill_conditioned_gpt(self) -> gpt.GPTConfig:
        """The GPT trained on the two-level covariances of condition number κ (this chapter's own)."""
        return gpt.config_for(
            self, n_context=self.examples - 1, covariance="two_level", condition_number=self.condition_number
        )


CONFIG = IterativeNewtonConfig
QUICK: dict[str, Any] = dict(
    **gpt.QUICK,
    n_test=2000,
    n_probe=8000,
    newton_steps=20,
    lstm_width=64,
    lstm_layers=4,
    lstm_seeds=1,
    forget_context=None,
    forget_gaps=None,
)
WHY_QUICK: dict[str, str] = dict(
    **gpt.WHY_QUICK,
    n_test="2000 test prompts instead of 320: a 4-layer model's SimE differences are small",
    n_probe="probes fitted on 8000 training prompts (88,000 positions for 65 coefficients each)",
    newton_steps="Newton steps up to 20: at d = 5 the iterates agree with least squares to 10⁻⁹ from 2d examples on",
    lstm_width="an LSTM of width 64 and 4 layers (0.13M parameters, 2/3 of the GPT's) instead of 256 and 10 (5.3M)",
    lstm_layers="4 layers instead of 10",
    lstm_seeds="one LSTM: PyTorch's LSTM runs its members one after the other, about 3 minutes each on 2 cores",
    forget_context="n = 2d examples before the copied query (10 at d = 5) instead of 20: the trained prompts' length",
    forget_gaps="every other gap g = 1, 3, … below n (1, 3, 5, 7, 9 at d = 5) instead of 3, 7, 11, 15, 19",
)


class IterativeNewtonResult(NamedTuple):
    """Every number the chapter plots or checks."""

    # the algorithms alone, on Σ = I and the two-level Σ (C = 2), prompts of 2d examples
    newton_deviation: torch.Tensor  # (C, N₁) E‖ŵ_k − ŵ_LS‖² / E‖ŵ_LS‖² for k = 0 … NEWTON_BUDGET
    gd_deviation: torch.Tensor  # (C, G₁) the same for GD after 2^0 … 2^MAX_DOUBLINGS steps
    newton_to_tolerance: torch.Tensor  # (C,) steps Newton needs to reach ``tolerance`` (long; -1: not within N₁)
    gd_to_tolerance: torch.Tensor  # (C,) the first power of 2 of GD steps that reaches it (-1: none up to 2^MAX)
    cg_deviation: torch.Tensor  # (C, d + 2) the same for conjugate gradients after k = 0 … d + 1 steps
    cg_to_tolerance: torch.Tensor  # (C,) steps CG needs to reach ``tolerance`` (-1: not within d + 1)
    quasi_newton_gap: torch.Tensor  # (C,) worst prompt's ‖ŵ_L-BFGS − ŵ_CG‖² / ‖ŵ_LS‖², L-BFGS (m = 5) and BFGS
    # along sequences of the GPT's distribution: Newton against GD
    algorithm_newton_steps: torch.Tensor  # (N₂,) k = 1 … newton_steps
    algorithm_similarity: torch.Tensor  # (N₂, G) SimE(Newton after k, GD after 2^j)
    algorithm_best_gd: torch.Tensor  # (N₂,) GD's best match for each k
    # the trained GPT's layers
    examples: torch.Tensor  # (K,) t = 0 … 2d examples before the position
    probe_error: torch.Tensor  # (L, S, K) the probes' error / d per position
    model_error: torch.Tensor  # (S, K) the model's own read-out
    newton_steps: torch.Tensor  # (N,) 0 … newton_steps
    gd_steps: torch.Tensor  # (G,) 2^0 … 2^gd_log2_steps
    newton_error: torch.Tensor  # (N, K) error / d of Newton's iterates on the same prompts
    gd_error: torch.Tensor  # (G, K)
    least_squares_error: torch.Tensor  # (K,)
    newton_similarity: torch.Tensor  # (L, S, N) SimE(layer ℓ, Newton after k)
    gd_similarity: torch.Tensor  # (L, S, G)
    best_newton: torch.Tensor  # (L, S) k*_Newton(ℓ)
    best_gd: torch.Tensor  # (L, S) k*_GD(ℓ)
    best_newton_similarity: torch.Tensor  # (L, S) the SimE at k*
    best_gd_similarity: torch.Tensor  # (L, S)
    # the GPT trained on the two-level covariances of condition number κ, on such prompts (its own read-out)
    ill_gpt_error: torch.Tensor  # (S, K)
    ill_newton_error: torch.Tensor  # (N, K)
    ill_gd_error: torch.Tensor  # (G, K)
    ill_least_squares_error: torch.Tensor  # (K,)
    ill_newton_similarity: torch.Tensor  # (S, N)
    ill_gd_similarity: torch.Tensor  # (S, G)
    # the LSTM (M members) against the GPT, in distribution
    lstm_error: torch.Tensor  # (M, K)
    online_gd_error: torch.Tensor  # (K,)
    similarity_table: torch.Tensor  # (2, 3): GPT and LSTM (mean over members) × best Newton, best GD, online GD
    # forgetting: n = forget_context examples, then a query copying x_{n−g}
    forget_gaps: torch.Tensor  # (F,)
    forget_gpt: torch.Tensor  # (S, F) error / d
    forget_gpt_se: torch.Tensor  # (S, F)
    forget_gpt_z: torch.Tensor  # (S,) (error at the largest g − at the smallest) / s.e. of the paired difference
    forget_lstm: torch.Tensor  # (M, F)
    forget_lstm_se: torch.Tensor  # (M, F)
    forget_lstm_z: torch.Tensor  # (M,)
    forget_newton: torch.Tensor  # (F,) Newton after 5 steps
    forget_online_gd: torch.Tensor  # (F,)
    dim: int  # d
    elapsed_seconds: float


def run(config: IterativeNewtonConfig, *, progress: bool = True) -> IterativeNewtonResult:
    """Load (or train) the shared GPT, fit its layer probes and compare every layer with Newton and GD; then the
    ill-conditioned GPT, the LSTM and the forgetting test."""
    began = time.perf_counter()
    streams = rng.streams(config.seed, config.device, part=1)
    alone = algorithms.algorithms_alone(config, streams.task)
    model, _ = gpt.trained(config.gpt(), progress=progress)
    d, K = config.dim, config.examples
    identity = torch.eye(d, device=config.device)

    def training_prompts(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return algorithms.sequences(tasks.sample_regression(size, K - 1, identity, generator=streams.train))

    fitted = probes.fit(model, training_prompts, config.n_probe)
    xs, ys = algorithms.sequences(tasks.sample_regression(config.n_test, K - 1, identity, generator=streams.eval))
    y64 = ys.double().cpu()
    layer_residuals = probes.predict(model, fitted, xs, ys).cpu() - y64  # (L, S, B, K)
    model_residuals = gpt.predictions(model, xs, ys).double().cpu() - y64  # (S, B, K)
    references = algorithms.residuals(config, xs, ys)
    newton_steps = list(range(config.newton_steps + 1))
    gd_steps = [2**j for j in range(config.gd_log2_steps + 1)]

    error = lambda residuals: (residuals**2).mean(-2) / d  # noqa: E731  (…, B, K) -> (…, K)
    positions = slice(1, K)  # residual vectors leave out position 0
    newton_similarity, gd_similarity = (
        torch.stack(
            [
                similarity.similarity_matrix(member[..., positions], reference[..., positions])
                for member in layer_residuals.unbind(1)
            ],
            1,
        )  # (L, S, ·)
        for reference in (references.newton, references.gd)
    )
    best_newton, best_newton_sim = similarity.best_match(newton_similarity, newton_steps)
    best_gd, best_gd_sim = similarity.best_match(gd_similarity, gd_steps)
    algorithm_similarity = similarity.similarity_matrix(
        references.newton[1:, :, positions], references.gd[..., positions]
    )
    algorithm_best_gd, _ = similarity.best_match(algorithm_similarity, gd_steps)

    lstm = recurrent.trained_lstm(config, progress)
    lstm_residuals = recurrent.predictions(lstm, xs, ys).double().cpu() - y64  # (M, B, K)
    return IterativeNewtonResult(
        **alone,
        algorithm_newton_steps=torch.tensor(newton_steps[1:]),
        algorithm_similarity=algorithm_similarity,
        algorithm_best_gd=algorithm_best_gd,
        examples=torch.arange(K),
        probe_error=error(layer_residuals),
        model_error=error(model_residuals),
        newton_steps=torch.tensor(newton_steps),
        gd_steps=torch.tensor(gd_steps),
        newton_error=error(references.newton),
        gd_error=error(references.gd),
        least_squares_error=error(references.least_squares),
        newton_similarity=newton_similarity,
        gd_similarity=gd_similarity,
        best_newton=best_newton,
        best_gd=best_gd,
        best_newton_similarity=best_newton_sim,
        best_gd_similarity=best_gd_sim,
        **ill_conditioned.run(config, streams.task, progress),
        lstm_error=error(lstm_residuals),
        online_gd_error=error(references.online_gd),
        similarity_table=recurrent.similarity_table([model_residuals, lstm_residuals], references, positions),
        **recurrent.forgetting(config, model, lstm, streams.eval),
        dim=d,
        elapsed_seconds=time.perf_counter() - began,
    )


def claim_checks(result: IterativeNewtonResult, config: IterativeNewtonConfig) -> ClaimChecks:
    """The chapter's claim checks; the chapter states each tolerance and why it can fail."""
    r = result
    checks = ClaimChecks()
    newton_gap = (r.newton_to_tolerance[1] - r.newton_to_tolerance[0]).item()
    unconverged = bool((r.newton_to_tolerance < 0).any() or (r.gd_to_tolerance < 0).any())
    checks.at_most(
        f"algorithms: extra Newton steps to {config.tolerance:g} of least squares at κ = {config.condition_number:g}",
        float("inf") if unconverged else newton_gap,
        15,
        reason="Newton's steps grow like log κ (the paper note's bar)",
    )
    gd_ratio = (r.gd_to_tolerance[1] / 2 / r.gd_to_tolerance[0]).item()  # powers of 2: the smaller bound at κ
    checks.at_least(
        f"algorithms: GD steps at κ = {config.condition_number:g} / at κ = 1, lower bound",
        0.0 if unconverged else gd_ratio,  # an algorithm that never got there fails both checks
        10,
        reason="GD's steps grow like κ",
    )
    # Exact-arithmetic identities, checked where Ŝ is well conditioned (Σ = I): at κ = 100 float64 round-off grows
    # with κ(Ŝ) and d (measured: 10⁻⁶ at d = 8, 5·10⁻³ at d = 12), which the chapter shows instead.
    checks.at_most(
        "algorithms: CG's distance to least squares after d steps, Σ = I",
        r.cg_deviation[0, r.dim].item(),
        1e-8,
        reason="CG ends within rank Ŝ ≤ d steps in exact arithmetic; round-off measured up to d = 20 is below 10⁻¹⁴",
    )
    checks.at_most(
        f"algorithms: L-BFGS (m = {algorithms.LBFGS_MEMORY}) and BFGS against CG, Σ = I, worst prompt's "
        "‖ŵ − ŵ_CG‖² / ‖ŵ_LS‖²",
        r.quasi_newton_gap[0].item(),
        1e-8,
        reason="the same iterates in exact arithmetic (Nazareth 1979); round-off measured up to d = 20 is below "
        "10⁻¹¹, GD's iterates are tenths away",
    )
    log_gd = r.algorithm_best_gd.double().log2()
    _, slope, r2 = similarity.line_fit(r.algorithm_newton_steps.double(), log_gd)
    checks.at_least(
        "Newton against GD: R² of log₂ k*_GD against Newton's k",
        r2,
        0.9,
        reason="exponential: GD needs a fixed factor more steps per Newton step",
    )
    checks.at_least(
        "Newton against GD: log₂ k*_GD per Newton step (the fit's slope)",
        slope,
        0.25,
        reason="at least a doubling of GD steps every 4 Newton steps",
    )
    checks.at_most(
        "Newton against GD: GD's best matches below the top of its grid",
        r.algorithm_best_gd.max().item(),
        int(r.gd_steps[-1]) // 2,
        reason="a match at the grid's end would hide how many steps GD needs",
    )
    K, d = len(r.examples), r.dim
    per_layer = r.probe_error[..., d:K].mean((-1, -2))  # (L,): mean over members and over positions t ≥ d
    checks.at_most(
        "probes: worst ratio of a layer's error to the previous layer's (t ≥ d, mean over seeds)",
        (per_layer[1:] / per_layer[:-1]).max().item(),
        0.9,
        reason="every layer improves on the one before by 10 % or more",
    )
    layers = torch.arange(1, r.best_newton.shape[0] + 1, dtype=torch.float64)
    newton_mean = r.best_newton.double().mean(-1)
    _, newton_slope, newton_r2 = similarity.line_fit(layers, newton_mean)
    checks.at_least(
        "layers against Newton: R² of k*_Newton(ℓ) (mean over seeds) against ℓ", newton_r2, 0.8, reason="linear"
    )
    checks.at_least("layers against Newton: Newton steps per layer (slope)", newton_slope, 1.0, reason="it grows")
    checks.at_most(
        "layers against Newton: k*_Newton at the last layer, below the top of the grid",
        newton_mean[-1].item(),
        int(r.newton_steps[-1]) - 1,
        reason="a match at the grid's end would be a floor, not a match",
    )
    gd_log_mean = r.best_gd.double().log2().mean(-1)
    _, _, gd_r2 = similarity.line_fit(layers, gd_log_mean)
    checks.at_least(
        "layers against GD: R² of log₂ k*_GD(ℓ) (mean over seeds) against ℓ",
        gd_r2,
        0.8,
        reason="exponential in ℓ: GD steps multiply from layer to layer",
    )
    checks.at_least(
        "layers against GD: log₂ k*_GD, last layer minus second",
        (gd_log_mean[-1] - gd_log_mean[min(1, len(gd_log_mean) - 1)]).item(),
        3.0,
        reason="at least 8× more GD steps (the paper note's bar)",
    )
    gaps = f"g = {int(r.forget_gaps[-1])} against g = {int(r.forget_gaps[0])}"
    checks.at_least(
        f"forgetting: LSTM's error rise, {gaps}, paired / s.e. (smallest over members)",
        r.forget_lstm_z.min().item(),
        4.0,
        reason="4 s.e., one-sided: the LSTM forgets the older examples",
    )
    gpt_rise = (r.forget_gpt[:, -1] - r.forget_gpt[:, 0]).mean().item()
    lstm_rise = (r.forget_lstm[:, -1] - r.forget_lstm[:, 0]).mean().item()
    checks.at_most(
        f"forgetting: GPT's error rise / LSTM's, {gaps} (means over seeds)",
        gpt_rise / lstm_rise if lstm_rise > 0 else float("inf"),
        0.25,
        reason="the GPT's error moves with g by a quarter of the LSTM's rise at most",
    )
    return checks


def summary(result: IterativeNewtonResult, config: IterativeNewtonConfig) -> dict[str, Any]:
    """The numbers the chapter's prose quotes, by glue name (without the chapter's prefix)."""
    r = result
    d, K = r.dim, len(r.examples)
    per_layer = r.probe_error[..., d:K].mean((-1, -2))
    gap = r.best_newton_similarity - r.best_gd_similarity  # (L, S)
    return {
        "d": d,
        "layers": r.probe_error.shape[0],
        "seeds": r.probe_error.shape[1],
        "kappa": config.condition_number,
        "tolerance": config.tolerance,
        "newton_iso": int(r.newton_to_tolerance[0]),
        "newton_ill": int(r.newton_to_tolerance[1]),
        "gd_iso": int(r.gd_to_tolerance[0]),
        "gd_ill": int(r.gd_to_tolerance[1]),
        "cg_iso": int(r.cg_to_tolerance[0]),
        "cg_ill": int(r.cg_to_tolerance[1]),
        "quasi_newton_gap_iso": r.quasi_newton_gap[0].item(),
        "quasi_newton_gap_ill": r.quasi_newton_gap[1].item(),
        "cg_after_d_ill": r.cg_deviation[1, r.dim].item(),
        "lbfgs_memory": algorithms.LBFGS_MEMORY,
        "probe_errors": ", ".join(f"{e:.3f}" for e in per_layer.tolist()),
        "model_error": r.model_error[:, d:K].mean().item(),
        "best_newton": ", ".join(f"{k:.1f}" for k in r.best_newton.double().mean(-1).tolist()),
        "best_gd": ", ".join(f"{k:.0f}" for k in r.best_gd.double().log2().mean(-1).exp2().tolist()),
        "similarity_gap_low": gap.min().item(),
        "similarity_gap_high": gap.max().item(),
        "similarity_newton_low": r.best_newton_similarity.min().item(),
        "similarity_newton_high": r.best_newton_similarity.max().item(),
        "algorithm_similarity_low": r.algorithm_similarity.max(-1).values.min().item(),
        "ill_gpt_at_2d": r.ill_gpt_error[:, 2 * d].mean().item(),
        "ill_gpt_at_2d_low": r.ill_gpt_error[:, 2 * d].min().item(),
        "ill_gpt_at_2d_high": r.ill_gpt_error[:, 2 * d].max().item(),
        "ill_best_newton": ", ".join(str(int(k)) for k in r.ill_newton_similarity.argmax(-1).tolist()),
        "ill_best_gd": ", ".join(str(int(r.gd_steps[k])) for k in r.ill_gd_similarity.argmax(-1).tolist()),
        "ill_newton_similarity": ", ".join(f"{v:.3f}" for v in r.ill_newton_similarity.max(-1).values.tolist()),
        "ill_gd_similarity": ", ".join(f"{v:.3f}" for v in r.ill_gd_similarity.max(-1).values.tolist()),
        "lstm_at_2d": r.lstm_error[:, 2 * d].mean().item(),
        "gpt_at_2d": r.model_error[:, 2 * d].mean().item(),
        "online_gd_at_2d": r.online_gd_error[2 * d].item(),
        "forget_lstm_first": r.forget_lstm[:, 0].mean().item(),
        "forget_lstm_last": r.forget_lstm[:, -1].mean().item(),
        "forget_gpt_first": r.forget_gpt[:, 0].mean().item(),
        "forget_gpt_last": r.forget_gpt[:, -1].mean().item(),
        "forget_online_first": r.forget_online_gd[0].item(),
        "forget_online_last": r.forget_online_gd[-1].item(),
        "forget_newton_first": r.forget_newton[0].item(),
        "forget_newton_last": r.forget_newton[-1].item(),
        "forget_n": config.forget_context,
        "forget_g_first": int(r.forget_gaps[0]),
        "forget_g_last": int(r.forget_gaps[-1]),
        "lstm_width": config.lstm_width,
        "lstm_layers": config.lstm_layers,
        "lstm_seeds": config.lstm_seeds,
        "n_test": config.n_test,
        "n_probe": config.n_probe,
        "n_algorithm": config.n_algorithm_test,
        "minutes": r.elapsed_seconds / 60,
    }


def key_arrays(result: IterativeNewtonResult) -> dict[str, Any]:
    """The arrays behind the figures and checks, for the chapter's JSON."""
    return {k: v for k, v in result._asdict().items() if k != "elapsed_seconds"}
