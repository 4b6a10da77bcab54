"""A GPT trained on in-context linear regression tracks least squares: Garg et al.'s (2022) Fig. 2, with the
out-of-distribution prompts of their Sec. 4 and App. B that fit a CPU.

The trained model is the shared GPT of :mod:`icl.gpt` (x ~ N(0, I_d), w ~ N(0, I_d), prompts of 2d + 1 examples, the
loss averaged over every prefix), ``n_seeds`` members. Each member predicts at every x position of ``n_test`` fresh
prompts; position k has k labelled examples before it (k = 0 … 2d). Against it, on the same prompts: least squares
(minimum norm, ŷ = 0 at k = 0), 3-nearest-neighbours (the mean label of the 3 nearest context inputs, all of them
when k < 3), averaging (ŵ = (1/k) Σ yᵢ xᵢ), the zero predictor and, exactly, the best one-layer linear transformer at
each k (:func:`icl.theory.optimal_one_step_loss`, (d + 1)/(k + d + 1) after normalising).

Errors are squared errors divided by the zero predictor's E y² (d in distribution), so 1 is "predicting 0"
everywhere. Out of distribution, against least squares on the same prompts:

- ``skewed``: covariance with eigenvalues ∝ 1/i² (i = 1 … d) in a random eigenbasis, trace d;
- ``noisy``: labels with N(0, ``noise_std``²) noise (the least-squares error peaks at k = d: double descent);
- ``x × s``: every input scaled by s, for s in ``x_scales``;
- ``query ⊥ context`` (k < d): the query projected off the span of the k context inputs, its norm kept;
- ``query = a context input`` (k ≥ 1): the query replaced by one of the k context inputs, drawn uniformly.

Shapes in the result: ``S`` seeds, ``K = 2d + 1`` positions k = 0 … 2d, ``C`` shifted conditions.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from icl import baselines, gpt, rng, tasks, theory
from icl.checks import ClaimChecks
from icl.config import finite_float, positive_float_tuple
from icl.evaluate import mean_and_se

NAME = "gpt_least_squares"


@dataclass(frozen=True)
class GPTLeastSquaresConfig(gpt.GargExperimentConfig):
    """The experiment's parameters; every field is validated on construction. Defaults are Garg et al.'s."""

    n_test: int = 1280
    noise_std: float = 1.0
    x_scales: tuple[float, ...] = (1 / 3, 1 / 2, 2.0, 3.0)

    def __post_init__(self) -> None:
        super().__post_init__()  # the GPT's fields, max_context >= 2d
        put = self._set
        put("noise_std", finite_float("noise_std", self.noise_std, minimum=0.0))
        put("x_scales", positive_float_tuple("x_scales", self.x_scales))


CONFIG = GPTLeastSquaresConfig
# What `quick` changes against the paper (the config's defaults), and why (see icl.presets).
QUICK: dict[str, Any] = dict(**gpt.QUICK, n_test=4096)
WHY_QUICK: dict[str, str] = dict(
    **gpt.WHY_QUICK, n_test="4096 test prompts instead of 1280: the standard errors are in the checks"
)


class GPTLeastSquaresResult(NamedTuple):
    """Every number the chapter plots or checks; errors are MSE / E y² (1 = the zero predictor)."""

    examples: torch.Tensor  # (K,) k = 0 … 2d labelled examples before the query
    gpt: torch.Tensor  # (S, K) in distribution, per seed
    gpt_se: torch.Tensor  # (S, K)
    least_squares: torch.Tensor  # (K,) Monte Carlo, same prompts
    least_squares_se: torch.Tensor  # (K,)
    nearest_neighbours: torch.Tensor  # (K,) 3-NN
    averaging: torch.Tensor  # (K,)
    averaging_se: torch.Tensor  # (K,)
    linear: torch.Tensor  # (K,) the best one-layer linear transformer at each k, exact
    shifts: tuple[str, ...]  # (C,) the shifted conditions
    shifted_gpt: torch.Tensor  # (C, S, K), NaN where a condition is undefined (⊥ at k ≥ d, = at k = 0)
    shifted_gpt_se: torch.Tensor  # (C, S, K)
    shifted_least_squares: torch.Tensor  # (C, K)
    train_losses: torch.Tensor  # (T, S) the all-prefix training loss, every 10th step (not normalised)
    dim: int  # d
    elapsed_seconds: float


def averaging(X: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
    """ŷ = x_qᵀ (1/n) Σ yᵢ xᵢ: one plain GD step of size 1 from 0 (Garg et al.'s "averaging"). -> (...)."""
    return baselines.gd(X, y, x_query, 1.0)


def skewed_covariance(dim: int, generator: torch.Generator) -> torch.Tensor:
    """Garg et al.'s skewed covariance: eigenvalues ∝ 1/i² (i = 1 … d) in a random eigenbasis, trace d. (d, d)."""
    eigenvalues = 1 / torch.arange(1, dim + 1, dtype=torch.float64) ** 2
    eigenvalues *= dim / eigenvalues.sum()
    rotation = tasks.random_rotation(dim, generator=generator).to(eigenvalues.device)
    return (rotation * eigenvalues) @ rotation.T


def orthogonal_query(xs: torch.Tensor, k: int) -> torch.Tensor:
    """xs with x at position k projected off the span of x_0 … x_{k−1} and rescaled to its own norm (k < d)."""
    basis, _ = torch.linalg.qr(xs[:, :k].double().mT)  # (B, d, k) orthonormal columns spanning the context
    query = xs[:, k].double()
    projected = query - (basis @ (basis.mT @ query.unsqueeze(-1))).squeeze(-1)
    projected *= query.norm(dim=-1, keepdim=True) / projected.norm(dim=-1, keepdim=True)
    out = xs.clone()
    out[:, k] = projected.to(xs.dtype)
    return out


def _prompts(config: GPTLeastSquaresConfig, generator: torch.Generator, **kwargs: Any):
    """n_test prompts of 2d + 1 examples as sequences: xs (B, K, d), ys (B, K), w (B, d)."""
    covariance = kwargs.pop("covariance", torch.eye(config.dim))
    batch = tasks.sample_regression(config.n_test, config.examples - 1, covariance, generator=generator, **kwargs)
    xs = torch.cat([batch.X, batch.x_query.unsqueeze(-2)], -2)
    ys = torch.cat([batch.y, batch.y_query.unsqueeze(-1)], -1)
    return xs, ys, batch.w


def _per_position(model, xs: torch.Tensor, ys: torch.Tensor, w: torch.Tensor, replace, positions) -> tuple:
    """Errors of the GPT (E, B, K) and of least squares (B, K) when, for each k ≥ 1 in ``positions``, the x at position
    k is replaced by ``replace(xs, k)`` (its label recomputed from w), the prompt cut after it; NaN elsewhere."""
    E, (B, K) = model.n_models, ys.shape
    gpt_errors = torch.full((E, B, K), math.nan, dtype=torch.float64)
    ls_errors = torch.full((B, K), math.nan, dtype=torch.float64)
    for k in positions:
        shifted = replace(xs, k)[:, : k + 1]
        labels = torch.cat([ys[:, :k], (shifted[:, k] * w).sum(-1, keepdim=True)], -1)
        prediction = gpt.predictions(model, shifted, labels)[..., k]
        gpt_errors[..., k] = (prediction.double() - labels[:, k].double()) ** 2
        ls = baselines.least_squares(shifted[:, :k].double(), labels[:, :k].double(), shifted[:, k].double())
        ls_errors[:, k] = (ls - labels[:, k].double()) ** 2
    return gpt_errors, ls_errors


def run(config: GPTLeastSquaresConfig, *, progress: bool = True) -> GPTLeastSquaresResult:
    """Train the shared GPT (or load it from the store), then score it and the baselines on every condition."""
    began = time.perf_counter()
    model, training = gpt.trained(config.gpt(), progress=progress)
    d, K = config.dim, config.examples
    generator = rng.streams(config.seed, config.device).eval
    task = rng.streams(config.seed, config.device).task

    def normalised(errors: torch.Tensor, level: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position mean and standard error over the prompts (the second-to-last axis) / E y²."""
        mean, se = mean_and_se(errors.movedim(-2, -1) / level)
        return mean.cpu(), se.cpu()

    xs, ys, w = _prompts(config, generator)
    gpt_mean, gpt_se = normalised((gpt.predictions(model, xs, ys).double() - ys.double()) ** 2, d)
    xs64, ys64 = xs.double(), ys.double()
    ls_mean, ls_se = normalised(baselines.prefix_errors(baselines.least_squares, xs64, ys64), d)
    nn_mean, _ = normalised(baselines.prefix_errors(baselines.nearest_neighbours, xs64, ys64), d)
    avg_mean, avg_se = normalised(baselines.prefix_errors(averaging, xs64, ys64), d)
    eye = torch.eye(d, dtype=torch.float64)
    linear = torch.tensor(
        [1.0] + [theory.optimal_one_step_loss(eye, k).item() / d for k in range(1, K)], dtype=torch.float64
    )

    shifts, shifted_gpt, shifted_gpt_se, shifted_ls = [], [], [], []

    def add(name: str, gpt_errors: torch.Tensor, ls_errors: torch.Tensor, level: float) -> None:
        shifts.append(name)
        mean, se = normalised(gpt_errors, level)
        shifted_gpt.append(mean)
        shifted_gpt_se.append(se)
        shifted_ls.append(normalised(ls_errors, level)[0])

    def whole_prompts(xs: torch.Tensor, ys: torch.Tensor, level: float, name: str) -> None:
        gpt_errors = (gpt.predictions(model, xs, ys).double() - ys.double()) ** 2
        add(name, gpt_errors, baselines.prefix_errors(baselines.least_squares, xs.double(), ys.double()), level)

    skewed = skewed_covariance(d, task).float()
    whole_prompts(*_prompts(config, generator, covariance=skewed)[:2], d, "skewed covariance")
    noisy = _prompts(config, generator, noise_std=config.noise_std)[:2]
    whole_prompts(*noisy, d + config.noise_std**2, f"noisy labels (σ = {config.noise_std:g})")
    for scale in config.x_scales:
        whole_prompts(xs * scale, ys * scale, scale**2 * d, f"x × {scale:.3g}")
    add("query ⊥ context", *_per_position(model, xs, ys, w, orthogonal_query, range(1, d)), d)
    uniforms = torch.rand(config.n_test, K, generator=generator, device=xs.device)  # which input each k repeats

    def repeat(xs: torch.Tensor, k: int) -> torch.Tensor:
        out = xs.clone()
        out[:, k] = xs[torch.arange(len(xs), device=xs.device), (uniforms[:, k] * k).long()]
        return out

    add("query = a context input", *_per_position(model, xs, ys, w, repeat, range(1, K)), d)
    return GPTLeastSquaresResult(
        examples=torch.arange(K),
        gpt=gpt_mean,
        gpt_se=gpt_se,
        least_squares=ls_mean,
        least_squares_se=ls_se,
        nearest_neighbours=nn_mean,
        averaging=avg_mean,
        averaging_se=avg_se,
        linear=linear,
        shifts=tuple(shifts),
        shifted_gpt=torch.stack(shifted_gpt),
        shifted_gpt_se=torch.stack(shifted_gpt_se),
        shifted_least_squares=torch.stack(shifted_ls),
        train_losses=training.losses[::10].double(),
        dim=d,
        elapsed_seconds=time.perf_counter() - began,
    )


def claim_checks(result: GPTLeastSquaresResult, config: GPTLeastSquaresConfig) -> ClaimChecks:
    """What the chapter claims of Garg et al.'s Fig. 2 and of their scaled inputs, with its tolerances. Shown, not
    checked: the GPT's error at k = d and 2d against absolute bars (see the chapter)."""
    r = result
    checks = ClaimChecks()
    d, K = r.dim, len(r.examples)
    k = r.examples.double()
    ls_z = ((r.least_squares[:d] - (d - k[:d]) / d) / r.least_squares_se[:d]).abs().max().item()
    checks.at_most(
        f"harness: least squares against (d − k)/d at k < d = {d}, worst |difference| / s.e.",
        ls_z,
        4.0,
        reason="4 s.e.: the prompts, the baseline and the normalisation against the closed form",
    )
    avg_z = ((r.averaging[1:] - (d + 1) / k[1:]) / r.averaging_se[1:]).abs().max().item()
    checks.at_most(
        "harness: averaging against (d + 1)/k at every k ≥ 1, worst |difference| / s.e.",
        avg_z,
        4.0,
        reason="4 s.e.: the averaging estimator's error is exactly (d + 1)/k on these prompts",
    )
    mean = r.gpt.mean(0)
    seeds = r.gpt.shape[0]
    from_two = slice(2, K)
    checks.at_most(
        f"GPT (mean of {seeds} seeds) / the best one-layer linear transformer, worst k ≥ 2",
        (mean[from_two] / r.linear[from_two]).max().item(),
        1.0,
        reason="the best linear layer at each k is exact (chapter 02); at k = 1 it is within 7 % of least squares",
    )
    better = torch.minimum(r.nearest_neighbours[from_two], r.averaging[from_two])
    checks.at_most(
        "GPT (mean) / the better of 3-NN and averaging, worst k ≥ 2",
        (mean[from_two] / better).max().item(),
        1.0,
        reason="Garg et al.: the transformer beats both at every k",
    )
    if 3.0 in config.x_scales:
        index, at = r.shifts.index("x × 3"), 2 * d
        scaled, scaled_se = r.shifted_gpt[index, :, at], r.shifted_gpt_se[index, :, at]
        gap = scaled.mean() - mean[at]
        se = ((scaled_se**2).sum() + (r.gpt_se[:, at] ** 2).sum()).sqrt() / seeds
        checks.at_least(
            f"inputs × 3 against in distribution, k = 2d = {at}: (GPT error gap) / s.e.",
            (gap / se).item(),
            4.0,
            reason="4 s.e., one-sided: the GPT is not scale-free, least squares is (Garg et al., App. B)",
        )
    return checks


def summary(result: GPTLeastSquaresResult, config: GPTLeastSquaresConfig) -> dict[str, float]:
    """The numbers the chapter's prose quotes, by glue name (without the chapter's prefix)."""
    r = result
    d = r.dim
    mean = r.gpt.mean(0)
    values: dict[str, float] = {
        "seeds": config.n_seeds,
        "d": d,
        "two_d": 2 * d,
        "at_d": mean[d].item(),
        "at_2d": mean[2 * d].item(),
        "at_d_worst": r.gpt[:, d].max().item(),
        "at_2d_worst": r.gpt[:, 2 * d].max().item(),
        "linear_at_2d": r.linear[2 * d].item(),
        "nn_at_2d": r.nearest_neighbours[2 * d].item(),
        "averaging_at_2d": r.averaging[2 * d].item(),
        "steps": config.train_steps,
        "width": config.width,
        "layers": config.n_layers,
        "heads": config.n_heads,
        "minutes": r.elapsed_seconds / 60,
    }
    for name, key in (("x × 0.333", "third"), ("x × 0.5", "half"), ("x × 2", "double"), ("x × 3", "triple")):
        if name in r.shifts:
            values[f"scaled_{key}"] = r.shifted_gpt[r.shifts.index(name)].mean(0)[2 * d].item()
    repeat = r.shifted_gpt[r.shifts.index("query = a context input")].mean(0)
    values["repeat_at_2d"] = repeat[2 * d].item()
    orthogonal = r.shifted_gpt[r.shifts.index("query ⊥ context")].mean(0)
    values["orthogonal_low"] = orthogonal[1:d].min().item()
    values["orthogonal_high"] = orthogonal[1:d].max().item()
    return values


def key_arrays(result: GPTLeastSquaresResult) -> dict[str, Any]:
    """The arrays behind the figures and checks, for the chapter's JSON."""
    return {k: v for k, v in result._asdict().items() if k != "elapsed_seconds"}
