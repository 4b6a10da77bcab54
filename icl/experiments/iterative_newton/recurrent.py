"""The LSTM Fu et al. contrast with the GPT: trained the same way, it behaves like online GD and forgets (their Fig. 5
and Table 1)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from icl import baselines, gpt, rng, similarity, tasks
from icl.evaluate import mean_and_se
from icl.models import LSTMRegressor, all_prefix_loss
from icl.train import fit_cached

if TYPE_CHECKING:
    from icl.experiments.iterative_newton import IterativeNewtonConfig
    from icl.experiments.iterative_newton.algorithms import Residuals

NAME = "iterative_newton"
LSTM_PART = 7  # the LSTM's random streams (the GPTs use parts 0-2 of the same seed, icl.gpt)
FORGET_NEWTON_STEPS = 5  # Fu et al.'s Fig. 5 compares with Newton after 5 steps
CHUNK = 512  # prompts per LSTM forward pass at evaluation


def trained_lstm(config: IterativeNewtonConfig, progress: bool) -> LSTMRegressor:
    """The LSTM, trained exactly as the GPT is (its prompts, curriculum and schedule), from the store if there."""
    streams = rng.streams(config.seed, config.device, part=LSTM_PART)
    model = LSTMRegressor(
        config.dim,
        width=config.lstm_width,
        n_layers=config.lstm_layers,
        n_models=config.lstm_seeds,
        generator=streams.init,
    )
    shared = dataclasses.replace(config.gpt(), n_seeds=config.lstm_seeds)  # the GPT's prompts, one set per LSTM
    key = {"lstm_width": config.lstm_width, "lstm_layers": config.lstm_layers, **dataclasses.asdict(shared)}
    fit_cached(
        NAME,
        key,
        "lstm",
        model,
        lambda generator: gpt.sample_training(shared, generator),
        gpt.train_config(shared),
        generator=streams.train,
        progress=progress,
        description=f"LSTM, {config.lstm_seeds} seed(s)",
        objective=all_prefix_loss,
    )
    return model


def predictions(lstm: LSTMRegressor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Every member's prediction at every x position, without gradients: xs (B, k, d), ys (B, k) -> (M, B, k)."""
    with torch.no_grad():
        return torch.cat([lstm(xs[i : i + CHUNK], ys[i : i + CHUNK]) for i in range(0, len(xs), CHUNK)], 1)


def similarity_table(learners: list[torch.Tensor], references: Residuals, positions: slice) -> torch.Tensor:
    """Fu et al.'s Table 1: each learner's (members (M, B, K)) best SimE with Newton, with GD and with online GD,
    averaged over its members. -> (len(learners), 3)."""
    columns = [references.newton, references.gd, references.online_gd[None]]
    return torch.stack(
        [
            torch.stack(
                [
                    similarity.similarity_matrix(learner[..., positions], column[..., positions]).max(-1).values.mean()
                    for column in columns
                ]
            )
            for learner in learners
        ]
    )


def forgetting(
    config: IterativeNewtonConfig, model: Any, lstm: LSTMRegressor, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """n = ``forget_context`` examples, then a query that copies x_{n−g} for each g in ``forget_gaps``: the result's
    ``forget_*`` fields, the errors / d of the GPT, the LSTM, Newton after 5 steps and online GD, and for each
    model member the paired test of forgetting, (error at the largest g − at the smallest) / its s.e."""
    d, n = config.dim, config.forget_context
    batch = tasks.sample_regression(config.n_test, n, torch.eye(d, device=config.device), generator=generator)
    X64, y64 = batch.X.double().cpu(), batch.y.double().cpu()
    squared: dict[str, list[torch.Tensor]] = {"gpt": [], "lstm": [], "newton": [], "online_gd": []}
    for g in config.forget_gaps:
        x_query = batch.X[:, n - 1 - g]  # x_{n−g}, counting from 1; its label is y_{n−g}
        xs = torch.cat([batch.X, x_query.unsqueeze(-2)], -2)
        ys = torch.cat([batch.y, torch.zeros_like(batch.y[:, :1])], -1)
        q64, target = x_query.double().cpu(), y64[:, n - 1 - g]
        online = baselines.online_gd_weights(xs.double().cpu(), ys.double().cpu())[:, n]  # after all n examples
        for name, prediction in (
            ("gpt", gpt.predictions(model, xs, ys)[..., -1]),
            ("lstm", predictions(lstm, xs, ys)[..., -1]),
            ("newton", baselines.iterative_newton(X64, y64, q64, FORGET_NEWTON_STEPS)),
            ("online_gd", (online * q64).sum(-1)),
        ):
            squared[name].append((prediction.double().cpu() - target) ** 2 / d)  # (..., B)
    out: dict[str, torch.Tensor] = {"forget_gaps": torch.tensor(config.forget_gaps)}
    for name, values in squared.items():
        stacked = torch.stack(values, -2)  # (..., F, B)
        out[f"forget_{name}"], se = mean_and_se(stacked)
        if name in ("gpt", "lstm"):
            difference = stacked[..., -1, :] - stacked[..., 0, :]  # the same prompts at the largest and smallest g
            out[f"forget_{name}_se"] = se
            out[f"forget_{name}_z"] = difference.mean(-1) / (difference.std(-1) / difference.shape[-1] ** 0.5)
    return out
