"""One linear-attention layer applied L times (a looped transformer) learns L steps of GD with one shared
preconditioner a*Σ⁻¹, and what extra loops at test time do (Gatmiry et al. 2024; papers/gatmiry2024_looped.md).

The looped model has one set of weights: P = [[0, 0], [u_Pᵀ, 1]], Q = −[[A, 0], [u_Qᵀ, 0]], with A, u_P and
u_Q trained (the ``"sparse_u"`` parameterisation, ``looped=True``). Data x ~ N(0, Σ), w ~ N(0, Σ⁻¹), noiseless.

Two claims, one module each: :mod:`.training` (the looped layer learns A = a*Σ⁻¹ and u → 0; the untied
comparison; the sweep over n) and :mod:`.looping` (looping the trained models beyond their training loops at
test time: where it helps, where it diverges, the predicted share of diverging prompts). This package holds the
config, the result, :func:`run`, :func:`claim_checks` and :func:`summary`.

Shapes in the result: ``S`` seeds, ``K`` values of L in ``loops``, ``K₂`` of them >= 2, ``N`` values of n in
``n_sweep``, ``J`` values in ``looping_from``, ``C`` = 2 context lengths looped on at test time, ``F`` test
families (in distribution first), ``T`` loops at test time, ``T'`` snapshots.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from icl.checks import ClaimChecks
from icl.config import (
    LinearExperimentConfig,
    finite_float,
    int_tuple,
    positive_float_tuple,
    positive_int,
)
from icl.experiments.looped_transformers import looping, training
from icl.experiments.looped_transformers.looping import (
    DETECTION_LOOPS,
    Trajectory,
    gd_with_shared_step,
    loop_trajectory,
    test_covariances,
)
from icl.experiments.looped_transformers.training import NAME, covariances

__all__ = [
    "CONFIG",
    "DETECTION_LOOPS",
    "NAME",
    "QUICK",
    "WHY_QUICK",
    "LoopedConfig",
    "LoopedResult",
    "Trajectory",
    "claim_checks",
    "covariances",
    "gd_with_shared_step",
    "key_arrays",
    "loop_trajectory",
    "run",
    "summary",
    "test_covariances",
]


@dataclass(frozen=True)
class LoopedConfig(LinearExperimentConfig):
    """The experiment's parameters; every field is validated on construction."""

    dim: int = 10
    n_context: int = 20
    loops: tuple[int, ...] = (1, 2, 3, 5)
    condition_number: float = 4.0
    n_sweep: tuple[int, ...] = (10, 20, 40, 100)
    n_underdetermined: int | None = None  # a context length below d, every L in ``loops``; None: d // 2
    underdetermined_train_steps: int | None = None  # their Adam steps; None: 3 × train_steps (the loss is flatter)
    looping_from: tuple[int, ...] = (2, 5)
    max_test_loops: int = 50
    ood_ranges: tuple[float, ...] = (0.25, 1.0, 0.5, 2.0, 0.25, 4.0)
    train_steps: int = 3000
    batch_size: int = 4096
    learning_rate: float = 0.02
    clip_norm: float = 100.0
    batch_loops: bool | None = None
    u_init_std: float = 0.05
    n_looping_test: int = 20_000
    n_divergence_samples: int = 400_000

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared training fields
        put = self._set
        for name in ("dim", "n_context"):
            put(name, positive_int(name, getattr(self, name)))
        put("loops", tuple(sorted(set(int_tuple("loops", self.loops)))))
        put("n_sweep", tuple(sorted(set(int_tuple("n_sweep", self.n_sweep)) | {self.n_context})))
        if self.dim < 2:
            raise ValueError(
                f"dim must be at least 2, so that a context length n_underdetermined < d exists, got {self.dim}"
            )
        n_under = self.dim // 2 if self.n_underdetermined is None else self.n_underdetermined
        put("n_underdetermined", positive_int("n_underdetermined", n_under))
        if self.n_underdetermined >= self.dim:
            raise ValueError(f"n_underdetermined must be below dim={self.dim}, got {self.n_underdetermined}")
        steps = 3 * self.train_steps if self.underdetermined_train_steps is None else self.underdetermined_train_steps
        put("underdetermined_train_steps", positive_int("underdetermined_train_steps", steps))
        put("looping_from", tuple(sorted(set(int_tuple("looping_from", self.looping_from)))))
        if not set(self.looping_from) <= set(self.loops):
            raise ValueError(f"looping_from must be among loops={self.loops}, got {self.looping_from}")
        put("max_test_loops", positive_int("max_test_loops", self.max_test_loops, minimum=max(self.looping_from)))
        put("condition_number", finite_float("condition_number", self.condition_number, minimum=1.0))
        ranges = positive_float_tuple("ood_ranges", self.ood_ranges)
        if len(ranges) % 2 or any(lo > hi for lo, hi in zip(ranges[::2], ranges[1::2], strict=True)):
            raise ValueError(f"ood_ranges must be pairs (lowest, highest eigenvalue), lowest <= highest, got {ranges}")
        put("ood_ranges", ranges)
        if self.batch_loops is not None and not isinstance(self.batch_loops, bool):
            raise ValueError(f"batch_loops must be True, False or None (auto), got {self.batch_loops!r}")
        for name in ("clip_norm", "u_init_std"):
            put(name, finite_float(name, getattr(self, name), minimum=0.0, strict=True))
        for name in ("n_looping_test", "n_divergence_samples"):
            put(name, positive_int(name, getattr(self, name), minimum=2))

    @property
    def joint_loops(self) -> bool:
        """Whether the values of L of one context length train as one ensemble (each member looping its own number
        of times). Exact either way; ``None`` means on a GPU only: every member then runs max(L) loops, which on 2
        CPU cores made the `quick` chapter 25 % slower (125 s against 100 s) but saves kernel launches on a GPU."""
        return self.device.startswith("cuda") if self.batch_loops is None else self.batch_loops

    @property
    def looping_contexts(self) -> tuple[int, int]:
        """The context lengths looped on at test time: ``n_context`` and the sweep's largest."""
        return (self.n_context, max(self.n_sweep))

    @property
    def families(self) -> tuple[str, ...]:
        """Names of the test families: in distribution, then one per OOD eigenvalue range."""
        ranges = zip(self.ood_ranges[::2], self.ood_ranges[1::2], strict=True)
        return ("in distribution", *(f"eigenvalues in [{lo:g}, {hi:g}]" for lo, hi in ranges))


CONFIG = LoopedConfig
# What `quick` changes against the paper (the config's defaults), and why (see icl.presets).
QUICK: dict[str, Any] = dict(
    loops=(1, 2, 3),
    looping_from=(2,),
    n_seeds=3,
    train_steps=800,
    batch_size=1024,
    learning_rate=0.05,
    n_test=50_000,
    n_looping_test=8000,
    n_divergence_samples=200_000,
)
WHY_QUICK: dict[str, str] = dict(
    loops="no 5-loop model: its heavy-tailed gradients need a lower learning rate and larger batches",
    looping_from="test-time looping of the 2-loop models only",
    n_seeds="3 seeds, the fewest the book's checks accept",
    train_steps="4× fewer Adam steps, enough for L ≤ 3 at the higher learning rate (600 are not)",
    batch_size="4× smaller batches",
    learning_rate="2.5× higher, stable for L ≤ 3",
    n_test="half the test set; standard errors are stated",
    n_looping_test="40 % of the prompts looped on: the divergence check's standard error is 1.6× larger",
    n_divergence_samples="half the Monte Carlo draws for the predicted share",
)


class LoopedResult(NamedTuple):
    """Every number the chapter plots or checks; losses are MSE (no ½)."""

    covariance: torch.Tensor  # (2S, d, d): Σ = I for the first S models of a main run, the rotated Σ after
    optimal_step_size: torch.Tensor  # (K,) a*(n_context, L)
    optimal_loss: torch.Tensor  # (K,) the looped optimum's MSE
    untied_optimal_loss: torch.Tensor  # (K,) the untied optimum's MSE (L = 1: the same model)
    untied_optimal_steps: list[list[float]]  # (K, L) per loop count L, the untied optimum's L step sizes (ragged)
    # looped models at n_context, (K, 2S): Σ = I then the rotated Σ
    whitened: torch.Tensor  # (K, 2S, d, d) Σ^{½} A Σ^{½} (symmetric part)
    whitened_distance: torch.Tensor  # (K, 2S) Dist(Σ^{½} A Σ^{½}, I)
    scale: torch.Tensor  # (K, 2S) tr(Σ^{½} A Σ^{½})/d
    asymmetry: torch.Tensor  # (K, 2S) ‖A − Aᵀ‖_F / ‖A‖_F (the summaries above use A's symmetric part)
    A_norm: torch.Tensor  # (K, 2S) ‖A‖_F
    u_P_norm: torch.Tensor  # (K, 2S)
    u_Q_norm: torch.Tensor  # (K, 2S)
    u_initial_norm: torch.Tensor  # (K, 2S) max(‖u_P‖, ‖u_Q‖) at initialisation
    test_loss: torch.Tensor  # (K, 2S) Monte Carlo MSE on n_test prompts
    test_loss_se: torch.Tensor  # (K, 2S)
    # untied sparse models at n_context on Σ = I, L >= 2
    untied_loops: torch.Tensor  # (K₂,)
    untied_loss: torch.Tensor  # (K₂, S)
    untied_loss_se: torch.Tensor  # (K₂, S)
    untied_scales: list[list[list[float]]]  # (K₂, S, L) per L ≥ 2, per seed: the layers' tr(A_ℓ)/d, sorted (ragged)
    # over training (main runs), (T', K, 2S)
    snapshot_steps: torch.Tensor  # (T',)
    whitened_distance_history: torch.Tensor  # (T', K, 2S) Dist(Σ^{½} A Σ^{½}, I)
    scale_history: torch.Tensor  # (T', K, 2S) tr(Σ^{½} A Σ^{½})/d
    u_P_history: torch.Tensor  # (T', K, 2S) ‖u_P‖
    u_Q_history: torch.Tensor  # (T', K, 2S) ‖u_Q‖
    # the sweep over n (looped, Σ = I), (N, J, S)
    sweep_optimal_step_size: torch.Tensor  # (N, J) a*(n, L)
    sweep_scale: torch.Tensor  # (N, J, S) tr(A)/d
    sweep_distance: torch.Tensor  # (N, J, S) Dist(A, I)
    sweep_u_ratio: torch.Tensor  # (N, J, S) max(‖u_P‖, ‖u_Q‖)/‖A‖_F
    # looped models at n = n_underdetermined < d on Σ = I, every L in loops
    underdetermined_optimal_step_size: torch.Tensor  # (K,) a*(n, L)
    underdetermined_optimal_loss: torch.Tensor  # (K,) the looped optimum's MSE, at least d − n
    underdetermined_scale: torch.Tensor  # (K, S) tr(A)/d
    underdetermined_distance: torch.Tensor  # (K, S) Dist(A, I)
    underdetermined_u_ratio: torch.Tensor  # (K, S) max(‖u_P‖, ‖u_Q‖)/‖A‖_F
    underdetermined_loss: torch.Tensor  # (K, S) Monte Carlo MSE on n_test prompts
    underdetermined_loss_se: torch.Tensor  # (K, S)
    # test-time looping at n ∈ looping_contexts, losses per loop L' = 1 … T
    looping_mean: torch.Tensor  # (C, J, F, T, S) mean squared error of the trained model
    looping_median: torch.Tensor  # (C, J, F, T, S)
    looping_gd_mean: torch.Tensor  # (C, J, F, T, S) GD with the model's own shared step a (A = aΣ⁻¹, u = 0)
    looping_gd_median: torch.Tensor  # (C, J, F, T, S)
    floor_mean: torch.Tensor  # (C, J, F, S) mean of (u_Pᵀ x_q)² on the same prompts: where looping converges
    floor_median: torch.Tensor  # (C, J, F, S) its median
    diverging_fraction: torch.Tensor  # (C, J, S) share of in-distribution test prompts on which looping diverges
    # (detected at n_context only: NaN at the larger n, where the predicted share is ~1e-5)
    predicted_fraction: torch.Tensor  # (C, J, S) P(a λ_max(Ŝ) > 2) at the model's own a, by Monte Carlo
    predicted_fraction_se: torch.Tensor  # (C, J, S)
    optimal_fraction: torch.Tensor  # (C, J) the same at a*
    elapsed_seconds: float


def run(config: LoopedConfig, *, progress: bool = True) -> LoopedResult:
    """Train (or load from the store) every run, evaluate, loop on at test time, and compare with the theory."""
    start = time.perf_counter()
    covariance = covariances(config)
    identity = covariance[: config.n_seeds]
    main, snapshot_steps, models = training.main_runs(config, covariance, progress)
    untied = training.untied_runs(config, identity, progress)
    sweep, looped_at = training.sweep_runs(config, models, identity, progress)
    underdetermined = training.underdetermined_runs(config, identity, progress)
    return LoopedResult(
        covariance=covariance.cpu(),
        **training.theory_columns(config),
        **main,
        **untied,
        snapshot_steps=snapshot_steps,
        **sweep,
        **underdetermined,
        **looping.looping_runs(config, looped_at),
        elapsed_seconds=time.perf_counter() - start,
    )


def claim_checks(result: LoopedResult, config: LoopedConfig) -> ClaimChecks:
    """The chapter's claim checks, the training claim's then test-time looping's; the chapter states the
    tolerances and why each can fail."""
    checks = ClaimChecks()
    training.check(checks, result, config)
    looping.check(checks, result, config)
    return checks


def summary(result: LoopedResult, config: LoopedConfig) -> dict[str, Any]:
    """Every number the chapter quotes in its text, by glue name without the chapter's prefix."""
    return {
        **training.summary(result, config),
        **looping.summary(result, config),
        "minutes": result.elapsed_seconds / 60,
    }


def key_arrays(result: LoopedResult) -> dict[str, Any]:
    """The arrays a reader most likely wants, for the chapter's JSON (curves over training left out)."""
    skip = (
        "whitened_distance_history",
        "scale_history",
        "u_P_history",
        "u_Q_history",
        "snapshot_steps",
        "elapsed_seconds",
    )
    return {k: v for k, v in result._asdict().items() if k not in skip}
