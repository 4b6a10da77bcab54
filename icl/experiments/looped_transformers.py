"""One linear-attention layer applied L times (a looped transformer) learns L steps of GD with one shared
preconditioner a*Σ⁻¹, and what extra loops at test time do (Gatmiry et al. 2024; papers/gatmiry2024_looped.md).

The looped model has one set of weights: P = [[0, 0], [u_Pᵀ, 1]], Q = −[[A, 0], [u_Qᵀ, 0]], with A, u_P and
u_Q trained (the ``"sparse_u"`` parameterisation, ``looped=True``). Data x ~ N(0, Σ), w ~ N(0, Σ⁻¹), noiseless.

Training runs (one ensemble per run, one model per seed, trained side by side):

- at context length ``n_context``, for every L in ``loops``: looped models on Σ = I and on a rotated Σ with
  condition number ``condition_number`` (one ensemble holds both), and untied sparse models (one A_ℓ per
  layer, Ahn et al.'s eq. 8) on Σ = I for every L >= 2;
- at every other n in ``n_sweep`` (which always holds ``n_context``), for every L in ``looping_from``: looped
  models on Σ = I.

The theory's optimum for the looped model is :func:`icl.theory.optimal_looped_step_size` (a*, exact), for the
untied one :func:`icl.theory.optimal_multi_step`. Test-time looping runs the models trained with L in
``looping_from`` for L' = 1 … ``max_test_loops`` loops, in float64, at ``n_context`` and at the largest n of
the sweep, in distribution and on test covariances with eigenvalues on geometric grids (``ood_ranges``);
the share of prompts on which looping diverges is compared with P(a λ_max(Ŝ) > 2).

Shapes in the result: ``S`` seeds, ``K`` values of L in ``loops``, ``K₂`` of them >= 2, ``N`` values of n in
``n_sweep``, ``J`` values in ``looping_from``, ``C`` = 2 context lengths looped on at test time, ``F`` test
families (in distribution first), ``T`` loops at test time, ``T'`` snapshots.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from icl import evaluate, rng, tasks, theory
from icl.checks import ClaimChecks
from icl.config import (
    LinearExperimentConfig,
    finite_float,
    int_tuple,
    positive_float_tuple,
    positive_int,
)
from icl.evaluate import monte_carlo_predictions, whiten
from icl.models import LinearTransformer
from icl.tasks import rotated_covariances
from icl.tokens import to_tokens
from icl.train import TrainConfig, fit_cached

NAME = "looped_transformers"
SNAPSHOTS = 100
LOOPING_CHUNK = 2500  # prompts per model at a time when looping on at test time (float64 tokens)
DETECTION_LOOPS = 200
DETECTION_WINDOW = 100  # a diverging prompt's update grows over this many loops
ROUND_OFF = 1e-10  # updates below this fraction of the labels' norm are float64 noise, never a divergence
"""Loops run to tell diverging prompts (see :func:`loop_trajectory`)."""


@dataclass(frozen=True)
class LoopedConfig(LinearExperimentConfig):
    """The experiment's parameters; every field is validated on construction."""

    dim: int = 10
    n_context: int = 20
    loops: tuple[int, ...] = (1, 2, 3, 5)
    condition_number: float = 4.0
    n_sweep: tuple[int, ...] = (10, 20, 40, 100)
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
    untied_optimal_steps: list[list[float]]  # per L, the untied optimum's step sizes
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
    untied_scales: list[list[list[float]]]  # per L, per seed: the layers' tr(A_ℓ)/d, sorted
    # over training (main runs), (T', K, 2S)
    snapshot_steps: torch.Tensor  # (T',)
    whitened_distance_history: torch.Tensor
    scale_history: torch.Tensor
    u_P_history: torch.Tensor
    u_Q_history: torch.Tensor
    # the sweep over n (looped, Σ = I), (N, J, S)
    sweep_optimal_step_size: torch.Tensor  # (N, J) a*(n, L)
    sweep_scale: torch.Tensor
    sweep_distance: torch.Tensor
    sweep_u_ratio: torch.Tensor  # max(‖u_P‖, ‖u_Q‖)/‖A‖_F
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


# --- training ---------------------------------------------------------------------------------------------------------


def covariances(config: LoopedConfig) -> torch.Tensor:
    """(2S, d, d) float64: S copies of I, then U diag(λ) Uᵀ (λ geometric, condition number κ) per seed."""
    spectrum = tuple(tasks.condition_number_spectrum(config.dim, config.condition_number).tolist())
    rotated = rotated_covariances(spectrum, config.n_seeds, seed=config.seed, device=config.device)
    identity = torch.eye(config.dim, dtype=torch.float64, device=config.device).expand_as(rotated)
    return torch.cat([identity, rotated])


def _part(kind: str, n: int, loops: tuple[int, ...]) -> tuple[str, int]:
    """A training run's store slug and the integer that seeds its own random streams."""
    offset = {"looped": 0, "untied": 1}[kind]
    code = int("".join(str(L) for L in loops)) if kind == "looped" else loops[0]
    return f"{kind}-n{n}-L{'-'.join(map(str, loops))}", (offset * 1000 + n) * 10**6 + code


def _train(
    config: LoopedConfig, kind: str, n: int, loops: tuple[int, ...], covariance: torch.Tensor, progress: bool
) -> tuple[LinearTransformer, Any]:
    """One ensemble: a looped model for every L in ``loops`` and every covariance (E = len(loops) · len(covariance),
    L slowest), each member looping its own number of times; or, for ``kind="untied"``, one L and one model per
    covariance."""
    slug, part = _part(kind, n, loops)
    streams = rng.streams(config.seed, config.device, part=part)
    looped = kind == "looped"
    if not looped and len(loops) != 1:
        raise ValueError(f"an untied ensemble has one depth, got {loops}")
    covariance = covariance.repeat(len(loops), 1, 1)
    counts = tuple(L for L in loops for _ in range(covariance.shape[0] // len(loops)))
    model = LinearTransformer(
        config.dim,
        max(loops),
        parameterisation="sparse_u" if looped else "sparse",
        looped=looped,
        n_models=covariance.shape[0],
        init_std=config.init_std,
        generator=streams.init,
        loop_counts=counts if looped and len(loops) > 1 else None,
    )
    if looped:  # u = 0 is stationary (the loss is even in u): start it small and random, so that its decay shows
        with torch.no_grad():
            model.u_P.normal_(0.0, config.u_init_std, generator=streams.init)
            model.u_Q.normal_(0.0, config.u_init_std, generator=streams.init)
    covariance32 = covariance.float()

    def sample(generator: torch.Generator) -> tasks.RegressionBatch:
        return tasks.sample_regression(
            config.batch_size, n, covariance32, generator=generator, task_prior="inverse_covariance"
        )

    trained = fit_cached(
        NAME,
        config,
        slug,
        model,
        sample,
        TrainConfig(steps=config.train_steps, learning_rate=config.learning_rate, clip_norm=config.clip_norm),
        generator=streams.train,
        progress=progress,
        description=f"{kind}, n = {n}, L = {', '.join(map(str, loops))}, {covariance.shape[0]} models",
        snapshot_every=max(1, config.train_steps // SNAPSHOTS) if looped and n == config.n_context else None,
    )
    return model, trained


def _members(model: LinearTransformer, start: int, count: int, loops: int) -> LinearTransformer:
    """Members start … start + count − 1 of a looped ensemble, as an ensemble of their own looping ``loops`` times."""
    subset = copy.deepcopy(model)
    subset.n_models, subset.n_layers, subset.loop_counts = count, loops, None
    for name, parameter in list(subset.named_parameters()):
        setattr(subset, name, torch.nn.Parameter(parameter.detach()[start : start + count].clone()))
    return subset


def _looped_runs(
    config: LoopedConfig, n: int, loops: tuple[int, ...], covariance: torch.Tensor, progress: bool
) -> list[tuple[int, LinearTransformer, Any]]:
    """For every L in ``loops``: the looped models (one per covariance) and their training record, trained as one
    ensemble or as one per L (:attr:`LoopedConfig.joint_loops`); the same members either way."""
    E = covariance.shape[0]
    if not config.joint_loops:
        return [(L, *_train(config, "looped", n, (L,), covariance, progress)) for L in loops]
    model, trained = _train(config, "looped", n, loops, covariance, progress)
    out = []
    for k, L in enumerate(loops):
        members = slice(k * E, (k + 1) * E)
        snapshots = {name: value[:, members] for name, value in trained.snapshots.items()}
        out.append((L, _members(model, k * E, E, L), trained._replace(snapshots=snapshots)))
    return out


def _summary(A: torch.Tensor, covariance: torch.Tensor) -> dict[str, torch.Tensor]:
    """A: (..., E, 1, d, d) looped preconditioners; covariance: (E, d, d) -> distances and scales, (..., E)."""
    whitened = whiten(evaluate.symmetric_part(A.double()), covariance)[..., 0, :, :]
    return {
        "whitened": whitened,
        "distance": evaluate.distance_to_identity(whitened),
        "scale": torch.diagonal(whitened, dim1=-2, dim2=-1).mean(-1),
    }


def _u_norm(parameters: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """‖u_P‖, ‖u_Q‖ of looped models: (..., E, 1, d) -> 2 × (..., E)."""
    return parameters["u_P"].double().norm(dim=-1)[..., 0], parameters["u_Q"].double().norm(dim=-1)[..., 0]


@torch.no_grad()
def _test_loss(
    model: LinearTransformer, covariance: torch.Tensor, n: int, config: LoopedConfig, part: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo MSE and its standard error on fresh prompts, one per model: 2 × (E,)."""
    generator = rng.streams(config.seed, config.device, part=part).eval
    predictions = monte_carlo_predictions(
        config.n_test,
        n,
        lambda size: tasks.sample_regression(
            size, n, covariance.float(), generator=generator, task_prior="inverse_covariance"
        ),
        {"model": lambda b: model.predict(b.X, b.y, b.x_query)},
    )
    squared = (predictions["model"].double() - predictions["target"].double()) ** 2
    return squared.mean(-1), squared.std(-1) / squared.shape[-1] ** 0.5


# --- test-time looping ------------------------------------------------------------------------------------------------


class Trajectory(NamedTuple):
    """Squared errors of the query after each loop, (T, E, B); with ``detect``, which prompts diverge, (E, B)."""

    squared_error: torch.Tensor
    diverging: torch.Tensor | None


@torch.no_grad()
def loop_trajectory(
    model: LinearTransformer, batch: tasks.RegressionBatch, n_loops: int, *, detect: bool = False
) -> Trajectory:
    """Run a looped model's layer ``n_loops`` times on ``batch`` (prompts (E, B, ...)) in float64, reading the
    prediction after every loop; with ``detect``, go on to :data:`DETECTION_LOOPS` loops and mark the prompts
    whose update to the context labels grew over the last :data:`DETECTION_WINDOW` loops (or overflowed).
    Prompts go in chunks.

    Why the update: the context labels follow r ← r − (1/n) X A Xᵀ (r + X u_P) (u_Q aside), so consecutive
    updates obey Δ ← (I − X A Xᵀ/n) Δ, whatever u_P: Δ grows without bound exactly when an eigenvalue of
    I − AŜ exceeds 1 in modulus. For symmetric A, ‖Δ‖² is a sum of positive terms (aλ)² c² (1 − aλ)^{2t}; a
    learned A is slightly asymmetric, its eigenvalues can come in complex pairs and ‖Δ‖ can oscillate from one
    loop to the next, hence the comparison across 100 loops rather than between consecutive ones. Factors
    within ~1e-3 of 1 can be missed. On converged prompts the update is round-off noise, so only an update
    above 1e-10 of the labels' norm counts. With u_Q ≠ 0 the layer is not linear in the labels, and on some
    prompts that GD would diverge on the growth stops at a large bounded state (a cycle): a prompt whose context
    residuals end larger than its labels counts as diverging too.
    """
    n_loops = positive_int("n_loops", n_loops)
    total = max(n_loops, DETECTION_LOOPS) if detect else n_loops
    model = copy.deepcopy(model).double()
    n = batch.X.shape[-2]
    errors, diverging = [], []
    for start in range(0, batch.X.shape[1], LOOPING_CHUNK):
        part = [t[:, start : start + LOOPING_CHUNK].double() for t in batch]
        Z = to_tokens(part[0], part[1], part[2])
        chunk_errors, history = [], {}
        for loop, labels in enumerate(model.label_rows(Z, total)):
            if loop < n_loops:
                chunk_errors.append((-labels[..., n] - part[3]) ** 2)  # ŷ = −(query's label entry)
            if loop in (total - DETECTION_WINDOW - 2, total - DETECTION_WINDOW - 1, total - 2, total - 1):
                history[loop] = labels[..., :n]
        # An overflow (inf − inf in the labels) is an infinite error, not a missing one: medians must count it.
        errors.append(torch.stack(chunk_errors).nan_to_num(nan=float("inf")))
        if detect:
            early, late = total - DETECTION_WINDOW - 1, total - 1
            before = (history[early] - history[early - 1]).norm(dim=-1)
            last = (history[late] - history[late - 1]).norm(dim=-1)
            scale = part[1].norm(dim=-1)  # the context labels' norm before any loop
            visible = last > ROUND_OFF * scale  # a converged prompt's update is round-off noise
            worse = history[late].norm(dim=-1) > scale  # the residuals ended larger than the labels themselves
            diverging.append(~torch.isfinite(last) | ((last > before) & visible) | worse)
    return Trajectory(torch.cat(errors, -1), torch.cat(diverging, -1) if detect else None)


def gd_with_shared_step(model: LinearTransformer, scale: torch.Tensor, covariance: torch.Tensor) -> LinearTransformer:
    """The looped model's GD twin: A = a Σ⁻¹ with its own learned a, u = 0. scale: (E,), covariance: (E, d, d)."""
    twin = copy.deepcopy(model).double()
    with torch.no_grad():
        twin.A.copy_((scale[:, None, None] * torch.linalg.inv(covariance.double())).unsqueeze(1))
        twin.u_P.zero_()
        twin.u_Q.zero_()
    return twin


def test_covariances(config: LoopedConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """One (d, d) float64 covariance per test family: I, then V diag(λ) Vᵀ with λ geometric over each OOD range."""
    family = [torch.eye(config.dim, dtype=torch.float64, device=config.device)]
    for low, high in zip(config.ood_ranges[::2], config.ood_ranges[1::2], strict=True):
        spectrum = torch.logspace(
            torch.log10(torch.tensor(low)), torch.log10(torch.tensor(high)), config.dim, dtype=torch.float64
        )
        family.append(tasks.covariance_from_spectrum(spectrum, generator=generator).to(config.device))
    return family


@torch.no_grad()
def _looping(
    config: LoopedConfig, model: LinearTransformer, scale: torch.Tensor, n: int, L: int, part: int
) -> dict[str, Any]:
    """Test-time looping of one trained ensemble (Σ = I) on every test family: per-loop means and medians, the
    floor that looping converges to, and the predicted share of diverging prompts (at the model's a and at a*)."""
    streams = rng.streams(config.seed, config.device, part=part)
    E = model.n_models
    identity = torch.eye(config.dim, dtype=torch.float64, device=config.device).expand(E, -1, -1)
    twin = gd_with_shared_step(model, scale.to(config.device), identity)
    keys = ("mean", "median", "gd_mean", "gd_median", "floor_mean", "floor_median")
    out: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
    u_P = model.u_P.detach().double()[:, 0]  # (E, d)
    diverging = torch.full((E,), float("nan"), dtype=torch.float64)  # detected at n_context only
    for index, covariance in enumerate(test_covariances(config, streams.task)):
        batch = tasks.sample_regression(
            config.n_looping_test,
            n,
            covariance.expand(E, -1, -1),
            generator=streams.eval,
            task_prior="identity",  # the training prior w ~ N(0, Σ_train⁻¹) = N(0, I): only the covariates shift
            dtype=torch.float64,
        )
        trajectory = loop_trajectory(model, batch, config.max_test_loops, detect=index == 0 and n == config.n_context)
        reference = loop_trajectory(twin, batch, config.max_test_loops)
        out["mean"].append(trajectory.squared_error.mean(-1))
        out["median"].append(trajectory.squared_error.median(-1).values)
        out["gd_mean"].append(reference.squared_error.mean(-1))
        out["gd_median"].append(reference.squared_error.median(-1).values)
        # Looping converges to w = w* + u_P where Ŝ is invertible (the context's values yᵢ + u_Pᵀxᵢ are then fitted
        # exactly), so each prompt's error tends to (u_Pᵀ x_q)²; u_Q's effect vanishes with the residuals.
        floor = (batch.x_query @ u_P.unsqueeze(-1)).squeeze(-1) ** 2  # (E, B)
        out["floor_mean"].append(floor.mean(-1))
        out["floor_median"].append(floor.median(-1).values)
        if trajectory.diverging is not None:
            diverging = trajectory.diverging.double().mean(-1)
    stacked = {k: torch.stack(v).cpu() for k, v in out.items()}  # (F, T, E), floors (F, E)
    optimum = theory.optimal_looped_step_size(config.dim, n, L).step_sizes[:1]
    shares, shares_se = _divergence_shares(config, n, torch.cat([scale.double().cpu(), optimum]), part)
    return {
        **stacked,
        "diverging": diverging.cpu(),
        "predicted": shares[:-1],
        "predicted_se": shares_se[:-1],
        "optimal": shares[-1],
    }


def _divergence_shares(
    config: LoopedConfig, n: int, scale: torch.Tensor, part: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """P(a λ_max(Ŝ) > 2) and its Monte Carlo s.e. for every a in ``scale`` (E,), on one set of draws of λ_max."""
    generator = rng.streams(config.seed, part=part).task  # CPU: the draws are NumPy's
    largest = theory.sample_largest_eigenvalue(config.dim, n, config.n_divergence_samples, generator=generator)
    return theory.divergence_shares(largest, scale)


# --- the experiment ---------------------------------------------------------------------------------------------------


def run(config: LoopedConfig, *, progress: bool = True) -> LoopedResult:
    """Train (or load from the store) every run, evaluate, loop on at test time, and compare with the theory."""
    start = time.perf_counter()
    S, d, n0 = config.n_seeds, config.dim, config.n_context
    covariance = covariances(config)
    identity = covariance[:S]

    main: dict[int, LinearTransformer] = {}  # the Σ = I members of every L
    rows: dict[str, list[torch.Tensor]] = {}
    snapshot_steps = torch.empty(0)
    for L, model, trained in _looped_runs(config, n0, config.loops, covariance, progress):
        final = _summary(model.A.detach(), covariance)
        history = _summary(trained.snapshots["A"].to(covariance.device), covariance)
        u_P, u_Q = _u_norm(dict(model.named_parameters()))
        h_uP, h_uQ = _u_norm(trained.snapshots)
        loss, loss_se = _test_loss(model, covariance, n0, config, _part("looped", n0, (L,))[1])
        for key, value in [
            ("whitened", final["whitened"]),
            ("distance", final["distance"]),
            ("scale", final["scale"]),
            ("A", model.A.detach().double().norm(dim=(-2, -1))[:, 0]),
            ("asymmetry", evaluate.asymmetry(model.A.detach().double())[:, 0]),
            ("uP", u_P),
            ("uQ", u_Q),
            ("u0", torch.maximum(h_uP[0], h_uQ[0])),
            ("loss", loss),
            ("loss_se", loss_se),
            ("h_distance", history["distance"]),
            ("h_scale", history["scale"]),
            ("h_uP", h_uP),
            ("h_uQ", h_uQ),
        ]:
            rows.setdefault(key, []).append(value.detach().double().cpu())
        snapshot_steps = trained.snapshot_steps
        main[L] = _members(model, 0, S, L)

    untied_loops = [L for L in config.loops if L >= 2]
    untied_loss, untied_se, untied_scales = [], [], []
    for L in untied_loops:
        model, _ = _train(config, "untied", n0, (L,), identity, progress)
        loss, loss_se = _test_loss(model, identity, n0, config, _part("untied", n0, (L,))[1])
        untied_loss.append(loss.cpu())
        untied_se.append(loss_se.cpu())
        scales = torch.diagonal(model.A.detach().double(), dim1=-2, dim2=-1).mean(-1).sort(-1).values
        untied_scales.append(scales.cpu().tolist())

    sweep: dict[str, list[list[torch.Tensor]]] = {"scale": [], "distance": [], "u": [], "optimal": []}
    looped_at: dict[tuple[int, int], tuple[LinearTransformer, torch.Tensor]] = {}
    for n in config.n_sweep:
        row: dict[str, list[torch.Tensor]] = {k: [] for k in sweep}
        runs = (
            [(L, main[L], None) for L in config.looping_from]  # at n0, the main runs' Σ = I members
            if n == n0
            else _looped_runs(config, n, config.looping_from, identity, progress)
        )
        for L, model, _ in runs:
            summary = _summary(model.A.detach(), identity)
            u_P, u_Q = _u_norm(dict(model.named_parameters()))
            ratio = torch.maximum(u_P, u_Q) / model.A.detach().double().norm(dim=(-2, -1))[:, 0]
            row["scale"].append(summary["scale"].cpu())
            row["distance"].append(summary["distance"].cpu())
            row["u"].append(ratio.cpu())
            row["optimal"].append(theory.optimal_looped_step_size(d, n, L).step_sizes[0])
            looped_at[(n, L)] = (model, summary["scale"])
        for key in sweep:
            sweep[key].append(torch.stack(row[key]))

    looping: dict[str, list[torch.Tensor]] = {}
    for n in config.looping_contexts:
        for L in config.looping_from:
            model, scale = looped_at[(n, L)]
            values = _looping(config, model, scale, n, L, _part("looped", n, (L,))[1] + 50_000_000)
            for key, value in values.items():
                looping.setdefault(key, []).append(value)
    C, J = len(config.looping_contexts), len(config.looping_from)

    def grid(key: str) -> torch.Tensor:
        stacked = torch.stack(looping[key])
        return stacked.reshape(C, J, *stacked.shape[1:])

    optima = [theory.optimal_looped_step_size(d, n0, L) for L in config.loops]
    untied_optima = [theory.optimal_multi_step(d, n0, L) for L in config.loops]
    stack = lambda key: torch.stack(rows[key])  # noqa: E731
    return LoopedResult(
        covariance=covariance.cpu(),
        optimal_step_size=torch.stack([o.step_sizes[0] for o in optima]),
        optimal_loss=torch.stack([o.loss for o in optima]),
        untied_optimal_loss=torch.stack([o.loss for o in untied_optima]),
        untied_optimal_steps=[o.step_sizes.tolist() for o in untied_optima],
        whitened=stack("whitened"),
        whitened_distance=stack("distance"),
        scale=stack("scale"),
        asymmetry=stack("asymmetry"),
        A_norm=stack("A"),
        u_P_norm=stack("uP"),
        u_Q_norm=stack("uQ"),
        u_initial_norm=stack("u0"),
        test_loss=stack("loss"),
        test_loss_se=stack("loss_se"),
        untied_loops=torch.tensor(untied_loops, dtype=torch.long),
        untied_loss=torch.stack(untied_loss) if untied_loss else torch.empty(0, S, dtype=torch.float64),
        untied_loss_se=torch.stack(untied_se) if untied_se else torch.empty(0, S, dtype=torch.float64),
        untied_scales=untied_scales,
        snapshot_steps=snapshot_steps,
        whitened_distance_history=stack("h_distance").permute(1, 0, 2),
        scale_history=stack("h_scale").permute(1, 0, 2),
        u_P_history=stack("h_uP").permute(1, 0, 2),
        u_Q_history=stack("h_uQ").permute(1, 0, 2),
        sweep_optimal_step_size=torch.stack(sweep["optimal"]).double(),
        sweep_scale=torch.stack(sweep["scale"]),
        sweep_distance=torch.stack(sweep["distance"]),
        sweep_u_ratio=torch.stack(sweep["u"]),
        looping_mean=grid("mean").double(),
        looping_median=grid("median").double(),
        looping_gd_mean=grid("gd_mean").double(),
        looping_gd_median=grid("gd_median").double(),
        floor_mean=grid("floor_mean").double(),
        floor_median=grid("floor_median").double(),
        diverging_fraction=grid("diverging"),
        predicted_fraction=grid("predicted"),
        predicted_fraction_se=grid("predicted_se"),
        optimal_fraction=grid("optimal").double(),
        elapsed_seconds=time.perf_counter() - start,
    )


# --- claim checks -----------------------------------------------------------------------------------------------------


def claim_checks(result: LoopedResult, config: LoopedConfig) -> ClaimChecks:
    """The chapter's claim checks; the chapter states the tolerances and why each can fail."""
    checks = ClaimChecks()
    u_ratio = torch.maximum(result.u_P_norm, result.u_Q_norm) / result.A_norm
    u_worst = max(u_ratio.max().item(), result.sweep_u_ratio.max().item())
    checks.at_most(
        "max over looped models of max(‖u_P‖, ‖u_Q‖) / ‖A‖_F",
        u_worst,
        0.05,
        reason=f"u → 0 (it starts at up to {result.u_initial_norm.max().item():.2f} in norm)",
    )
    distance = max(result.whitened_distance.max().item(), result.sweep_distance.max().item())
    checks.at_most("max over looped models of Dist(Σ^½ A Σ^½, I)", distance, 0.05, reason="A is a multiple of Σ⁻¹")
    main_error = (result.scale / result.optimal_step_size[:, None] - 1).abs().max().item()
    sweep_error = (result.sweep_scale / result.sweep_optimal_step_size[..., None] - 1).abs().max().item()
    checks.at_most(
        "max over looped models of |a / a*(n, L) − 1|",
        max(main_error, sweep_error),
        0.05,
        reason="a = tr(Σ^½ A Σ^½)/d; a* < 1 falls with L and rises with n",
    )
    for k, L in enumerate(config.loops):
        se = (result.test_loss_se[k] ** 2).mean().sqrt().item() / result.test_loss.shape[1] ** 0.5
        checks.close(
            f"L = {L}: looped test MSE, mean over models (s.e. {se:.4f})",
            result.test_loss[k].mean().item(),
            result.optimal_loss[k].item(),
            rtol=0.05,
            reason="against the looped optimum d·E(1 − a*λ)^{2L}",
        )
    for k, L in enumerate(result.untied_loops.tolist()):
        looped = result.test_loss[config.loops.index(L), : config.n_seeds].mean().item()
        untied = result.untied_loss[k].mean().item()
        checks.at_most(
            f"L = {L}: untied test MSE (mean over seeds, Σ = I)",
            untied,
            looped,
            reason="at or below the looped model's",
        )
        checks.close(
            f"L = {L}: untied test MSE against its optimum",
            untied,
            result.untied_optimal_loss[config.loops.index(L)].item(),
            rtol=0.10,
            reason="the untied optimum: one step size per layer",
        )
    n0, n1 = config.looping_contexts
    for j, L in enumerate(config.looping_from):
        measured, predicted = result.diverging_fraction[0, j], result.predicted_fraction[0, j]  # (S,)
        # Binomial error of the measured share; p is kept at least 1/N from 0 and 1 so that the tolerance never
        # vanishes (an undertrained model with a tiny step has p = 0, and one diverging prompt must fail it).
        floor = 1 / config.n_looping_test
        p = predicted.clamp(floor, 1 - floor)
        sampling = (p * (1 - p) / config.n_looping_test).sum().sqrt() / len(predicted)
        se = (sampling**2 + result.predicted_fraction_se[0, j].mean() ** 2).sqrt().item()
        checks.close(
            f"n = {n0}, trained with L = {L}: share of prompts on which looping diverges (mean over models)",
            measured.mean().item(),
            predicted.mean().item(),
            atol=3 * se,
            reason=f"P(a λ_max(Ŝ) > 2) at each model's own a; 3 s.e. ({se:.2%}); at a* it is "
            f"{result.optimal_fraction[0, j].item():.2%}",
        )
    last = config.max_test_loops
    for j, L in enumerate(config.looping_from):
        median, floor = result.looping_median[1, j, 0], result.floor_median[1, j, 0]  # (T, S), (S,)
        checks.at_most(
            f"n = {n1}, L = {L}: in distribution, max over models of |median at L' = {last} / (u_Pᵀx_q)² median − 1|",
            (median[-1] / floor - 1).abs().max().item(),
            0.05,
            reason="looping converges to w* + u_P: the floor is the leftover u_P",
        )
        checks.at_most(
            f"n = {n1}, L = {L}: in distribution, max ratio of consecutive medians above 10× the floor",
            _worst_rise(median, 10 * floor),
            1.0,
            reason="the median falls at every loop until it nears the floor",
        )
        checks.at_most(
            f"n = {n1}, L = {L}: in distribution, max ratio of consecutive means, L' = 1…10",
            _worst_rise(result.looping_mean[1, j, 0, :10], torch.zeros(result.looping_mean.shape[-1])),
            1.0,
            reason="the mean falls while no prompt has diverged visibly",
        )
        if len(config.families) > 1:
            checks.at_most(
                f"n = {n1}, L = {L}: {config.families[1]}, max ratio of consecutive means above 10× the floor",
                _worst_rise(result.looping_mean[1, j, 1], 10 * result.floor_mean[1, j, 1]),
                1.0,
                reason="covariates of smaller scale: looping keeps helping",
            )
    return checks


def _worst_rise(curve: torch.Tensor, floor: torch.Tensor) -> float:
    """The largest ratio curve[t+1]/curve[t] over loops t where curve[t+1] is still above ``floor``.
    curve: (T, S), floor: (S,). A NaN or infinite loss counts as a rise (inf)."""
    ratio = curve[1:] / curve[:-1]
    ratio = torch.where(torch.isfinite(ratio), ratio, torch.full_like(ratio, float("inf")))
    above = (curve[1:] > floor) | ~torch.isfinite(curve[1:])
    return ratio[above].max().item() if above.any() else 0.0


def key_arrays(result: LoopedResult) -> dict[str, Any]:
    """The arrays a reader most likely wants, for the chapter's JSON (curves over training left out)."""
    skip = ("whitened_distance_history", "scale_history", "u_P_history", "u_Q_history", "snapshot_steps")
    return {k: v for k, v in result._asdict().items() if k not in skip}
