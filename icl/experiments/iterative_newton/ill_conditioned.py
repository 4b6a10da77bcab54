"""The GPT trained on ill-conditioned prompts (two-level covariances of condition number κ, a fresh eigenbasis per
prompt), on such prompts, against Newton, GD and least squares (Fu et al.'s Fig. 4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from icl import gpt, similarity, tasks
from icl.experiments.iterative_newton.algorithms import residuals, sequences

if TYPE_CHECKING:
    from icl.experiments.iterative_newton import IterativeNewtonConfig


def run(config: IterativeNewtonConfig, generator: torch.Generator, progress: bool) -> dict[str, torch.Tensor]:
    """The ill-conditioned GPT (trained now, or from the store) on ``n_test`` fresh such sequences: the result's
    ``ill_*`` fields, errors / d per position and SimE with every Newton and GD iterate."""
    model, _ = gpt.trained(config.ill_conditioned_gpt(), progress=progress)
    d, K = config.dim, config.examples
    batch = tasks.sample_two_level_regression(config.n_test, K - 1, d, config.condition_number, generator=generator)
    xs, ys = sequences(batch)
    model_residuals = gpt.predictions(model, xs, ys).double().cpu() - ys.double().cpu()  # (S, B, K)
    references = residuals(config, xs, ys)
    error = lambda r: (r**2).mean(-2) / d  # noqa: E731
    positions = slice(1, K)
    return {
        "ill_gpt_error": error(model_residuals),
        "ill_newton_error": error(references.newton),
        "ill_gd_error": error(references.gd),
        "ill_least_squares_error": error(references.least_squares),
        "ill_newton_similarity": similarity.similarity_matrix(
            model_residuals[..., positions], references.newton[..., positions]
        ),
        "ill_gd_similarity": similarity.similarity_matrix(
            model_residuals[..., positions], references.gd[..., positions]
        ),
    }
