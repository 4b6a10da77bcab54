"""What both claims share: the covariances, the prompts, one ensemble's training run and the test set.

Random streams, all from ``config.seed``: training part ``depth`` (the depth runs), ``SWEEP_PART + n`` and
``CLIPPED_PART + n`` (the context sweep, :mod:`.context_sweep`); validation prompts from the eval stream of
part ``None`` (depths) and ``SWEEP_PART + n`` (the sweep); test prompts from the eval stream of
``TEST_PART + part``, where ``part`` is the training run's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from icl import rng, tasks
from icl.evaluate import monte_carlo_predictions
from icl.models import LinearTransformer
from icl.tasks import rotated_covariances
from icl.train import TrainConfig, TrainResult, fit_cached

if TYPE_CHECKING:
    from icl.experiments.full_form_gd_plus_plus import FullFormConfig

NAME = "full_form_gd_plus_plus"
SNAPSHOTS = 200
EVAL_CHUNK = 20_000
TEST_PART = 10_000  # test prompts of the run with training part p: the eval stream of part TEST_PART + p

Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (X, y, x_query) -> ŷ


def covariances(config: FullFormConfig) -> torch.Tensor:
    """(S, d, d) float64: U diag(spectrum) Uᵀ, one random rotation per seed (shared by every run)."""
    return rotated_covariances(config.spectrum, config.n_seeds, seed=config.seed, device=config.device)


def sample(
    config: FullFormConfig,
    covariance: torch.Tensor,
    size: int,
    generator: torch.Generator,
    dtype: torch.dtype,
    n: int | None = None,
) -> tasks.RegressionBatch:
    """``size`` noiseless prompts per seed with n (default n_context) context points, w ~ N(0, Σ⁻¹)."""
    return tasks.sample_regression(
        size,
        config.n_context if n is None else n,
        covariance.to(dtype),
        generator=generator,
        task_prior="inverse_covariance",
        dtype=dtype,
    )


def fit(
    config: FullFormConfig,
    covariance: torch.Tensor,
    *,
    depth: int,
    n: int,
    clip: float,
    steps: int,
    batch_size: int,
    slug: str,
    part: int,
    progress: bool,
    snapshots: bool = False,
) -> tuple[LinearTransformer, TrainResult]:
    """Train (or load) one ensemble of (11)-form models, one per seed, with the random streams of ``part``."""
    streams = rng.streams(config.seed, config.device, part=part)
    model = LinearTransformer(
        config.dim,
        depth,
        parameterisation="eleven",
        n_models=config.n_seeds,
        init_std=config.init_std,
        generator=streams.init,
    )
    trained = fit_cached(
        NAME,
        config,
        slug,
        model,
        lambda g: sample(config, covariance, batch_size, g, torch.float32, n=n),
        TrainConfig(steps=steps, learning_rate=config.learning_rate, clip_norm=clip),
        generator=streams.train,
        progress=progress,
        description=f"{depth} layers, n = {n}, cap {clip:g}, {config.n_seeds} models",
        snapshot_every=max(1, steps // SNAPSHOTS) if snapshots else None,
    )
    return model, trained


@torch.no_grad()
def squared_errors(
    predictors: dict[str, Predictor],
    config: FullFormConfig,
    covariance: torch.Tensor,
    part: int,
    n: int | None = None,
) -> dict[str, torch.Tensor]:
    """Squared errors (S, n_test), float64, of every predictor on the same n_test float32 test prompts: those of the
    training run with streams ``part`` (a test set per depth, or per n)."""
    n = config.n_context if n is None else n
    generator = rng.streams(config.seed, config.device, part=TEST_PART + part).eval
    predictions = monte_carlo_predictions(
        config.n_test,
        n,
        lambda size: sample(config, covariance, size, generator, torch.float32, n=n),
        {name: lambda batch, p=predict: p(batch.X, batch.y, batch.x_query) for name, predict in predictors.items()},
        chunk=EVAL_CHUNK,
    )
    target = predictions.pop("target").double()
    return {name: (value.double() - target) ** 2 for name, value in predictions.items()}
