"""The one-layer runs' shared machinery: the covariances, one ensemble trained from either start, the
preconditioner and the vanishing blocks read off the weights, and the Monte Carlo test losses."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from icl import baselines, evaluate, rng, tasks, theory
from icl.evaluate import monte_carlo_predictions
from icl.models import LinearTransformer, add_balanced_initialisation_
from icl.train import TrainConfig, fit_cached

if TYPE_CHECKING:
    from icl.experiments.one_step_pgd import OneStepPGDConfig

NAME = "one_step_pgd"  # the experiment's name, the prefix of its store keys
KINDS: tuple[str, ...] = ("isotropic", "ill-conditioned")
RANDOM_START_PART = 1000  # the random-start runs' random streams (the sweep's runs use parts 1 … N)


def covariances(config: OneStepPGDConfig, *, random_start: bool = False) -> torch.Tensor:
    """The (K=2, S, d, d) float64 covariances: I_d, and a rotated Σ of condition number κ per seed; with
    ``random_start``, the (K=2, R, d, d) ones of the random-start runs (their own stream and condition number)."""
    generator = rng.streams(config.seed, config.device, part=RANDOM_START_PART if random_start else None).task
    count = config.random_start_seeds if random_start else config.n_seeds
    kappa = config.random_start_condition_number if random_start else config.condition_number
    ill = torch.stack(
        [tasks.covariance_from_condition_number(config.dim, kappa, generator=generator) for _ in range(count)]
    ).to(config.device)
    return torch.stack([torch.eye(config.dim, dtype=torch.float64, device=config.device).expand_as(ill), ill])


class Trained(NamedTuple):
    model: LinearTransformer
    losses: torch.Tensor  # (steps, E)
    eval_generator: torch.Generator
    initial: dict[str, torch.Tensor]  # :func:`_read` of the untrained model


def train_ensemble(
    config: OneStepPGDConfig,
    covariance: torch.Tensor,
    n: int,
    part: int,
    progress: bool,
    *,
    initialisation: str | None = None,
) -> Trained:
    """Train one ensemble (one model per covariance in ``covariance``: (E, d, d)) at context length n, from
    ``initialisation`` (default: the config's)."""
    initialisation = config.initialisation if initialisation is None else initialisation
    random_start = part == RANDOM_START_PART
    streams = rng.streams(config.seed, config.device, part=part)
    model = LinearTransformer(
        config.dim,
        1,
        parameterisation="full",
        n_models=covariance.shape[0],
        init_std=config.init_std,
        generator=streams.init,
    )
    if initialisation == "balanced":
        add_balanced_initialisation_(model, config.init_scale, generator=streams.init)
    initial = read_weights(model)
    covariance32 = covariance.float()

    batch_size = max(1, round(config.batch_size * config.n_context / n))

    def sample(generator: torch.Generator) -> tasks.RegressionBatch:
        return tasks.sample_regression(batch_size, n, covariance32, generator=generator)

    train_config = TrainConfig(steps=config.train_steps, learning_rate=config.learning_rate)
    result = fit_cached(
        NAME,
        config,
        f"random-start-n{n}" if random_start else f"n{n}",
        model,
        sample,
        train_config,
        generator=streams.train,
        progress=progress,
        description=f"{'random start, ' if random_start else ''}n={n}, {covariance.shape[0]} models",
    )
    return Trained(model, result.losses, streams.eval, initial)


@torch.no_grad()
def test_losses(
    model: LinearTransformer, covariance: torch.Tensor, n: int, config: OneStepPGDConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Monte Carlo MSE and its s.e. for the model, and the MSE of the Γ* predictor, on the same prompts. -> 3 × (E,)."""
    optimal = theory_optimal(covariance, n).float().unsqueeze(1)
    predictions = monte_carlo_predictions(
        config.n_test,
        n,
        lambda size: tasks.sample_regression(size, n, covariance.float(), generator=generator),
        {
            "model": lambda b: model.predict(b.X, b.y, b.x_query),
            "optimal": lambda b: baselines.preconditioned_gd(b.X, b.y, b.x_query, optimal),
        },
    )
    model_loss = evaluate.mse(predictions["model"], predictions["target"])
    optimal_loss = evaluate.mse(predictions["optimal"], predictions["target"])
    return model_loss.mean, model_loss.standard_error, optimal_loss.mean


def read_weights(model: LinearTransformer) -> dict[str, torch.Tensor]:
    """The learned preconditioner and the ratios of the blocks theory says vanish, per model."""
    d = model.dim
    A = model.preconditioner()[:, 0].detach().double()
    P, Q = (w[:, 0].detach().double() for w in model.weights())
    return {
        "learned": evaluate.symmetric_part(A),
        "asymmetry": evaluate.asymmetry(A),
        "label_row_ratio": P[:, d, :d].norm(dim=-1) / P[:, d, d].abs(),
        "key_column_ratio": Q[:, d, :d].norm(dim=-1) / torch.linalg.matrix_norm(Q[:, :d, :d]),
    }


def theory_optimal(covariance: torch.Tensor, n: int) -> torch.Tensor:
    """Γ*(n) for each covariance: (E, d, d) -> (E, d, d)."""
    return torch.stack([theory.optimal_preconditioner(c, n) for c in covariance])
