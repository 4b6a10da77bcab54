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

from icl import baselines, gpt, probes, rng, similarity, tasks
from icl.checks import ClaimChecks
from icl.config import finite_float, positive_int

NAME = "iterative_newton"


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

    def __post_init__(self) -> None:
        super().__post_init__()  # the GPT's fields, max_context >= 2d
        put = self._set
        for name in ("n_probe", "newton_steps", "gd_log2_steps", "n_algorithm_test"):
            put(name, positive_int(name, getattr(self, name)))
        put("condition_number", finite_float("condition_number", self.condition_number, minimum=1.0))
        put("tolerance", finite_float("tolerance", self.tolerance, minimum=0.0, strict=True))
        if self.tolerance >= 1:
            raise ValueError(f"tolerance must be below 1 (a share of the starting deviation), got {self.tolerance}")


CONFIG = IterativeNewtonConfig
QUICK: dict[str, Any] = dict(**gpt.QUICK, n_test=2000, n_probe=8000, newton_steps=20)
WHY_QUICK: dict[str, str] = dict(
    **gpt.WHY_QUICK,
    n_test="2000 test prompts instead of 320: a 4-layer model's SimE differences are small",
    n_probe="probes fitted on 8000 training prompts (88,000 positions for 65 coefficients each)",
    newton_steps="Newton steps up to 20: at d = 5 the iterates agree with least squares to 10⁻⁹ from 2d examples on",
)
NEWTON_BUDGET = 60  # the algorithm panel's Newton steps: about log₂ κ(Ŝ)² are needed, κ(Ŝ) up to 10⁹ fits
MAX_DOUBLINGS = 16  # the algorithm panel runs GD for up to 2¹⁶ steps before calling it unconverged


class IterativeNewtonResult(NamedTuple):
    """Every number the chapter plots or checks."""

    # the algorithms alone, on Σ = I and the two-level Σ (C = 2), prompts of 2d examples
    newton_deviation: torch.Tensor  # (C, N₁) E‖ŵ_k − ŵ_LS‖² / E‖ŵ_LS‖² for k = 0 … NEWTON_BUDGET
    gd_deviation: torch.Tensor  # (C, G₁) the same for GD after 2^0 … 2^MAX_DOUBLINGS steps
    newton_to_tolerance: torch.Tensor  # (C,) steps Newton needs to reach ``tolerance`` (long; -1: not within N₁)
    gd_to_tolerance: torch.Tensor  # (C,) the first power of 2 of GD steps that reaches it (-1: none up to 2^MAX)
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
    dim: int
    elapsed_seconds: float


def _sequences(batch: tasks.RegressionBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's prompts as sequences of examples, the query last: xs (..., n + 1, d), ys (..., n + 1)."""
    return (
        torch.cat([batch.X, batch.x_query.unsqueeze(-2)], -2),
        torch.cat([batch.y, batch.y_query.unsqueeze(-1)], -1),
    )


def _first_below(deviation: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Index of the first entry of each row (…, T) at or below ``tolerance``; -1 where none is. -> (…,) long."""
    below = deviation <= tolerance
    first = below.long().argmax(-1)
    return torch.where(below.any(-1), first, -1)


def algorithms_alone(config: IterativeNewtonConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Convergence to least squares of Newton and GD on Σ = I and on the two-level Σ (fresh basis per prompt)."""
    d, n, B = config.dim, 2 * config.dim, config.n_algorithm_test
    identity = torch.eye(d, dtype=torch.float64).expand(B, d, d)
    two_level = tasks.two_level_covariances(B, d, config.condition_number, generator=generator)
    newton, gd, newton_steps, gd_steps = [], [], [], []
    for covariance in (identity, two_level):
        batch = tasks.sample_regression(1, n, covariance, generator=generator, dtype=torch.float64)
        S, h = baselines._moments(batch.X[:, 0], batch.y[:, 0])  # (B, d, d), (B, d)
        target = baselines.least_squares_weights(S, h)
        scale = (target**2).sum(-1).mean()

        def relative(w: torch.Tensor, target: torch.Tensor = target, scale: torch.Tensor = scale) -> torch.Tensor:
            return ((w - target) ** 2).sum(-1).mean(-1) / scale

        newton_curve = relative(baselines.newton_weights(S, h, range(NEWTON_BUDGET + 1)))
        newton.append(newton_curve)
        newton_steps.append(_first_below(newton_curve, config.tolerance))
        doublings = [2**j for j in range(MAX_DOUBLINGS + 1)]
        gd_curve = relative(baselines.gd_weights(S, h, doublings))
        gd.append(gd_curve)
        first = _first_below(gd_curve, config.tolerance)
        gd_steps.append(torch.where(first >= 0, 2**first, -1))
    return {
        "newton_deviation": torch.stack(newton),
        "gd_deviation": torch.stack(gd),
        "newton_to_tolerance": torch.stack(newton_steps),
        "gd_to_tolerance": torch.stack(gd_steps),
    }


def run(config: IterativeNewtonConfig, *, progress: bool = True) -> IterativeNewtonResult:
    """Load (or train) the shared GPT, fit its layer probes, and compare every layer with Newton and GD."""
    began = time.perf_counter()
    streams = rng.streams(config.seed, config.device, part=1)
    alone = algorithms_alone(config, streams.task)
    model, _ = gpt.trained(config.gpt(), progress=progress)
    d, K = config.dim, config.examples
    identity = torch.eye(d, device=config.device)

    def training_prompts(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _sequences(tasks.sample_regression(size, K - 1, identity, generator=streams.train))

    fitted = probes.fit(model, training_prompts, config.n_probe)
    xs, ys = _sequences(tasks.sample_regression(config.n_test, K - 1, identity, generator=streams.eval))
    x64, y64 = xs.double().cpu(), ys.double().cpu()
    layer_residuals = probes.predict(model, fitted, xs, ys).cpu() - y64  # (L, S, B, K)
    model_residuals = gpt.predictions(model, xs, ys).double().cpu() - y64  # (S, B, K)

    S_t, h_t = baselines.prefix_moments(x64, y64)
    newton_steps = list(range(config.newton_steps + 1))
    gd_steps = [2**j for j in range(config.gd_log2_steps + 1)]
    newton_residuals = (baselines.newton_weights(S_t, h_t, newton_steps) * x64).sum(-1) - y64  # (N, B, K)
    gd_residuals = (baselines.gd_weights(S_t, h_t, gd_steps) * x64).sum(-1) - y64  # (G, B, K)
    ls_residuals = (baselines.least_squares_weights(S_t, h_t) * x64).sum(-1) - y64  # (B, K)

    error = lambda residuals: (residuals**2).mean(-2) / d  # noqa: E731  (…, B, K) -> (…, K)
    positions = slice(1, K)  # residual vectors leave out position 0
    layers = layer_residuals[..., positions]
    newton_similarity = torch.stack(
        [similarity.similarity_matrix(layers[:, s], newton_residuals[..., positions]) for s in range(config.n_seeds)], 1
    )  # (L, S, N)
    gd_similarity = torch.stack(
        [similarity.similarity_matrix(layers[:, s], gd_residuals[..., positions]) for s in range(config.n_seeds)], 1
    )  # (L, S, G)
    best_newton, best_newton_sim = similarity.best_match(newton_similarity, newton_steps)
    best_gd, best_gd_sim = similarity.best_match(gd_similarity, gd_steps)

    algorithm_k = newton_steps[1:]
    algorithm_similarity = similarity.similarity_matrix(
        newton_residuals[1:, :, positions], gd_residuals[..., positions]
    )
    algorithm_best_gd, _ = similarity.best_match(algorithm_similarity, gd_steps)
    return IterativeNewtonResult(
        **alone,
        algorithm_newton_steps=torch.tensor(algorithm_k),
        algorithm_similarity=algorithm_similarity,
        algorithm_best_gd=algorithm_best_gd,
        examples=torch.arange(K),
        probe_error=error(layer_residuals),
        model_error=error(model_residuals),
        newton_steps=torch.tensor(newton_steps),
        gd_steps=torch.tensor(gd_steps),
        newton_error=error(newton_residuals),
        gd_error=error(gd_residuals),
        least_squares_error=error(ls_residuals),
        newton_similarity=newton_similarity,
        gd_similarity=gd_similarity,
        best_newton=best_newton,
        best_gd=best_gd,
        best_newton_similarity=best_newton_sim,
        best_gd_similarity=best_gd_sim,
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
        "probe_errors": ", ".join(f"{e:.3f}" for e in per_layer.tolist()),
        "model_error": r.model_error[:, d:K].mean().item(),
        "best_newton": ", ".join(f"{k:.1f}" for k in r.best_newton.double().mean(-1).tolist()),
        "best_gd": ", ".join(f"{k:.0f}" for k in r.best_gd.double().log2().mean(-1).exp2().tolist()),
        "similarity_gap_low": gap.min().item(),
        "similarity_gap_high": gap.max().item(),
        "similarity_newton_low": r.best_newton_similarity.min().item(),
        "similarity_newton_high": r.best_newton_similarity.max().item(),
        "algorithm_similarity_low": r.algorithm_similarity.max(-1).values.min().item(),
        "n_test": config.n_test,
        "n_probe": config.n_probe,
        "n_algorithm": config.n_algorithm_test,
        "minutes": r.elapsed_seconds / 60,
    }


def key_arrays(result: IterativeNewtonResult) -> dict[str, Any]:
    """The arrays behind the figures and checks, for the chapter's JSON."""
    return {k: v for k, v in result._asdict().items() if k != "elapsed_seconds"}
