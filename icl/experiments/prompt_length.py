"""Prediction error against prompt length (Zhang, Frei and Bartlett 2023, Thm 4.2 and Cor. 4.3).

One-layer full models (P, Q both (d+1) × (d+1)) are trained from ZFB's balanced start at every training length N in
``train_contexts`` (x ~ N(0, Λ), w ~ N(0, I_d), noiseless, Λ = diag(``spectrum``)) and tested on prompts of every
length M in ``test_contexts``. The layer normalises by the prompt's own number of examples, 1/M at test time; the
theorem's predictor ŷ = x_qᵀ Γ_N⁻¹ (1/M) Σ y_i x_i, with Γ_N from the training length, has the exact MSE
R(M, N) = a(N)/M + b(N)/N² (:func:`icl.theory.prompt_length_error`).

Every test length uses one set of fresh prompts for all models (common random numbers), so that the seeds' mean is
estimated with the standard error of its own per-prompt values, correlations included.

Shapes in the result: ``M`` test lengths, ``N`` training lengths, ``S`` seeds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from icl import rng, tasks, theory
from icl.checks import ClaimChecks, family_z
from icl.config import (
    LinearExperimentConfig,
    finite_float,
    int_tuple,
    positive_float_tuple,
)
from icl.evaluate import checked_query_weights, mean_and_se, monte_carlo_predictions, query_averaged_error
from icl.models import LinearTransformer, balanced_one_layer
from icl.train import TrainConfig, fit_cached

NAME = "prompt_length"


@dataclass(frozen=True)
class PromptLengthConfig(LinearExperimentConfig):
    """The experiment's parameters; every field is validated on construction. Training is Adam on the book's MSE
    from ZFB's balanced start of scale ``init_scale`` (see chapter 07)."""

    spectrum: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)
    train_contexts: tuple[int, ...] = (5, 10, 20, 80)
    test_contexts: tuple[int, ...] = (5, 10, 20, 40, 80, 140, 200)
    init_scale: float = 0.5
    train_steps: int = 4000
    batch_size: int = 4096
    learning_rate: float = 0.02
    init_std: float = 1e-6
    n_test: int = 400_000

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared training fields
        put = self._set
        put("spectrum", positive_float_tuple("spectrum", self.spectrum))
        put("train_contexts", int_tuple("train_contexts", self.train_contexts))
        put("test_contexts", int_tuple("test_contexts", self.test_contexts))
        for name in ("train_contexts", "test_contexts"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} must not repeat a length, got {values}")
        put("init_scale", finite_float("init_scale", self.init_scale, minimum=0.0, strict=True))

    @property
    def dim(self) -> int:
        return len(self.spectrum)


CONFIG = PromptLengthConfig
# What `quick` changes against the paper (the config's defaults), and why (see icl.presets).
QUICK: dict[str, Any] = dict(n_seeds=3, train_steps=2000, batch_size=1024, n_test=100_000)
WHY_QUICK: dict[str, str] = dict(
    n_seeds="3 seeds, the fewest the book's checks accept",
    train_steps="half the Adam steps",
    batch_size="4× smaller batches; the cosine learning-rate decay averages the extra noise",
    n_test="a quarter of the test set: wider error bars, stated in every check",
)


class PromptLengthResult(NamedTuple):
    """Every number the chapter plots or checks. Errors are MSEs (the book's scale, no ½)."""

    covariance: torch.Tensor  # (d, d) Λ
    train_contexts: torch.Tensor  # (N,)
    test_contexts: torch.Tensor  # (M,)
    theory_error: torch.Tensor  # (M, N) R(M, N)
    theory_test_term: torch.Tensor  # (N,) a(N), the coefficient of 1/M
    theory_floor: torch.Tensor  # (N,) b(N)/N², R's limit as M → ∞
    bound: torch.Tensor  # (M, N) Cor. 4.3's ε + δ
    learned: torch.Tensor  # (N, S, d, d) the trained preconditioners A = −P[d, d] Q[:d, :d]
    learned_error: torch.Tensor  # (M, N, S) exact MSE of ŷ = x_qᵀ Aᵀ h at length M (the A part of the model only)
    learned_floor: torch.Tensor  # (N, S) its limit as M → ∞
    trained_error: torch.Tensor  # (M, N, S) Monte Carlo MSE of each trained model
    trained_mean: torch.Tensor  # (M, N) Monte Carlo MSE averaged over the seeds
    trained_mean_se: torch.Tensor  # (M, N) its standard error (per-prompt seed means)
    theorem_error: torch.Tensor  # (M, N) Monte Carlo MSE of the theorem's predictor (Γ_N⁻¹, 1/M), same prompts
    theorem_error_se: torch.Tensor  # (M, N)
    fixed_normaliser_error: torch.Tensor  # (M, N) Monte Carlo MSE of the trained models kept at 1/N, seed mean
    fixed_normaliser_theory: torch.Tensor  # (M, N) its exact value with Γ_N⁻¹ in place of A: R of (M/N) Γ_N⁻¹
    final_train_loss: torch.Tensor  # (N, S) training MSE averaged over the last 5 % of steps
    elapsed_seconds: float


def covariance(config: PromptLengthConfig) -> torch.Tensor:
    """Λ = diag(spectrum), (d, d) float64."""
    return torch.diag(torch.tensor(config.spectrum, dtype=torch.float64, device=config.device))


def _train(config: PromptLengthConfig, index: int, n: int, progress: bool) -> tuple[LinearTransformer, torch.Tensor]:
    """The S models trained at length n (each seed's balanced start is the same at every n) and their final loss."""
    model = balanced_one_layer(
        config.dim,
        config.n_seeds,
        scale=config.init_scale,
        init_std=config.init_std,
        generator=rng.streams(config.seed, config.device).init,
    )
    lam32 = covariance(config).float().expand(config.n_seeds, config.dim, config.dim)  # (S, d, d): one per model
    trained = fit_cached(
        NAME,
        config,
        f"n{n}",
        model,
        lambda g: tasks.sample_regression(config.batch_size, n, lam32, generator=g),
        TrainConfig(steps=config.train_steps, learning_rate=config.learning_rate),
        generator=rng.streams(config.seed, config.device, part=1 + index).train,
        progress=progress,
        description=f"Adam, N = {n}, {config.n_seeds} models",
    )
    tail = max(1, config.train_steps // 20)
    return model, trained.losses[-tail:].mean(0)


def _model_errors(model: LinearTransformer, batch: tasks.RegressionBatch, lam: torch.Tensor, ratio: float):
    """Query-averaged errors (S, B) of the S models on the batch at its own 1/M, and with 1/N kept (the prediction
    × M/N = ``ratio``): (2, S, B)."""
    weights = checked_query_weights(model, batch)  # (S, B, d)
    return torch.stack([query_averaged_error(v, batch.w, lam) for v in (weights, ratio * weights)])


def run(config: PromptLengthConfig, *, progress: bool = True) -> PromptLengthResult:
    """Train (cached) at every N, test at every M, compare with R(M, N)."""
    began = time.perf_counter()
    lam = covariance(config)
    trains, tests = config.train_contexts, config.test_contexts
    models, final_losses = zip(*(_train(config, i, n, progress) for i, n in enumerate(trains)), strict=True)
    optima = {n: theory.optimal_preconditioner(lam, n).float() for n in trains}
    S = config.n_seeds
    generator = rng.streams(config.seed, config.device).eval

    shape = (len(tests), len(trains))
    trained_error = torch.empty(*shape, S, dtype=torch.float64)
    trained_mean, trained_se = torch.empty(shape, dtype=torch.float64), torch.empty(shape, dtype=torch.float64)
    theorem_error, theorem_se = torch.empty(shape, dtype=torch.float64), torch.empty(shape, dtype=torch.float64)
    fixed = torch.empty(shape, dtype=torch.float64)
    for i, m in enumerate(tests):
        errors: dict[str, Any] = {}
        for n, model in zip(trains, models, strict=True):
            errors[f"model{n}"] = lambda b, model=model, ratio=m / n: _model_errors(model, b, lam, ratio)
            # the theorem's predictor: v = Γ_N⁻¹ h with h = (1/M) Σ y_i x_i
            errors[f"theorem{n}"] = lambda b, n=n: query_averaged_error(
                (b.y.unsqueeze(-1) * b.X).mean(-2) @ optima[n].mT, b.w, lam
            )
        with torch.no_grad():
            out = monte_carlo_predictions(
                config.n_test,
                m,
                lambda size, m=m: tasks.sample_regression(size, m, lam.float(), generator=generator),
                errors,
            )
        for j, n in enumerate(trains):
            per_seed, at_fixed = out[f"model{n}"]  # (S, B) each
            trained_error[i, j] = per_seed.mean(-1)
            trained_mean[i, j], trained_se[i, j] = mean_and_se(per_seed.mean(0))
            theorem_error[i, j], theorem_se[i, j] = mean_and_se(out[f"theorem{n}"])
            fixed[i, j] = at_fixed.mean()

    M = torch.tensor(tests)[:, None]
    closed = theory.prompt_length_error(lam, M, torch.tensor(trains))
    learned = torch.stack([model.preconditioner()[:, 0].detach().double() for model in models])  # (N, S, d, d)
    # the layer applies Aᵀ to h = (1/M) Σ y_i x_i (icl.models.LinearTransformer.preconditioner)
    learned_error = torch.stack([theory.one_step_loss(learned.mT, lam, m) for m in tests])
    cpu = lambda x: torch.as_tensor(x).detach().double().cpu()  # noqa: E731
    return PromptLengthResult(
        covariance=cpu(lam),
        train_contexts=torch.tensor(trains),
        test_contexts=torch.tensor(tests),
        theory_error=cpu(closed.total),
        theory_test_term=cpu(closed.test_term[0]),
        theory_floor=cpu(closed.floor[0]),
        bound=cpu(theory.prompt_length_bound(lam, M, torch.tensor(trains)).total),
        learned=cpu(learned),
        learned_error=cpu(learned_error),
        learned_floor=cpu(_limit_error(learned.mT, lam)),
        trained_error=trained_error,
        trained_mean=trained_mean,
        trained_mean_se=trained_se,
        theorem_error=theorem_error,
        theorem_error_se=theorem_se,
        fixed_normaliser_error=fixed,
        fixed_normaliser_theory=cpu(
            torch.stack(
                [torch.stack([theory.one_step_loss(m / n * optima[n].double(), lam, m) for n in trains]) for m in tests]
            )
        ),
        final_train_loss=cpu(torch.stack(final_losses)),
        elapsed_seconds=time.perf_counter() - began,
    )


def _limit_error(preconditioner: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """lim_{M → ∞} of :func:`icl.theory.one_step_loss`: tr Λ − 2 tr(AΛ²) + tr(AᵀΛAΛ²), ŷ → x_qᵀ A Λ w. (..., d, d)."""
    A, lam = preconditioner, covariance
    trace = lambda X: torch.diagonal(X, dim1=-2, dim2=-1).sum(-1)  # noqa: E731
    return torch.trace(lam) - 2 * trace(A @ lam @ lam) + trace(A.mT @ lam @ A @ lam @ lam)


def claim_checks(result: PromptLengthResult) -> ClaimChecks:
    """Thm 4.2 at every (M, N), for the theorem's predictor and for the trained models, with stated tolerances."""
    r = result
    checks = ClaimChecks()
    points = r.theory_error.numel()
    z = family_z(points)
    theorem_z = ((r.theorem_error - r.theory_error) / r.theorem_error_se).abs()
    trained_z = ((r.trained_mean - r.theory_error) / r.trained_mean_se).abs()
    checks.at_most(
        f"Γ_N⁻¹ predictor: worst |MC − R(M, N)| / s.e. over {points} points",
        theorem_z.max().item(),
        z,
        reason=f"all {points} within z = {z:.2f} s.e. with probability 99 % (Bonferroni)",
    )
    checks.at_most(
        f"trained models (mean of {r.trained_error.shape[-1]} seeds): worst |MC − R(M, N)| / s.e. over {points} points",
        trained_z.max().item(),
        z,
        reason="the same bar: training must leave no error the test set can see",
    )
    longest, shortest_train = -1, 0
    ratio = (r.fixed_normaliser_error[longest, shortest_train] / r.theory_error[longest, shortest_train]).item()
    checks.at_least(
        f"1/N kept at test time (N = {r.train_contexts[0].item()}, M = {r.test_contexts[-1].item()}): error / R",
        ratio,
        2.0,
        reason="the test above can tell the right normaliser from the wrong one",
    )
    floor_error = (r.learned_floor.mean(-1) / r.theory_floor - 1).abs().max().item()
    checks.at_most(
        "trained models' M → ∞ error (exact, from A): worst relative gap to b(N)/N²",
        floor_error,
        0.05,
        reason="5 %: the floor is the part of R training must get right beyond any test length",
    )
    return checks


def summary(result: PromptLengthResult, config: PromptLengthConfig) -> dict[str, float]:
    """The numbers the chapter's prose quotes, by glue name (without the chapter's prefix). Counts and lengths stay
    ``int``, so that they print without a decimal point."""
    r = result
    trains, tests = r.train_contexts.tolist(), r.test_contexts.tolist()
    points = r.theory_error.numel()
    trained_z = ((r.trained_mean - r.theory_error) / r.trained_mean_se).abs()
    theorem_z = ((r.theorem_error - r.theory_error) / r.theorem_error_se).abs()
    bias_z = ((r.learned_error.mean(-1) - r.theory_error) / r.trained_mean_se).abs()
    epsilon_ratio = theory.prompt_length_bound(r.covariance, 1, r.train_contexts).epsilon / r.theory_floor
    return {
        "seeds": config.n_seeds,
        "n_test": config.n_test,
        "points": points,
        "z_bar": family_z(points),
        "trained_z": trained_z.max().item(),
        "theorem_z": theorem_z.max().item(),
        "within_3": int((trained_z <= 3).sum().item()),
        "bias_z": bias_z.max().item(),
        "all_within_3": 0.9973**points,  # the chance that `points` independent points all fall within 3 s.e.
        "bound_low": epsilon_ratio.min().item(),
        "bound_high": epsilon_ratio.max().item(),
        "n_first": trains[0],
        "m_last": tests[-1],
        "fixed_ratio": (r.fixed_normaliser_error[-1, 0] / r.theory_error[-1, 0]).item(),
        "n_last": trains[-1],
        "fixed_ratio_last": (r.fixed_normaliser_error[-1, -1] / r.theory_error[-1, -1]).item(),
        "floor_gap": (r.learned_floor.mean(-1) / r.theory_floor - 1).abs().max().item(),
        "minutes": r.elapsed_seconds / 60,
    }


def key_arrays(result: PromptLengthResult) -> dict[str, Any]:
    """The arrays behind the figures and checks, for the chapter's JSON."""
    return {k: v for k, v in result._asdict().items() if k not in ("learned", "elapsed_seconds")}
