"""Pieces shared by the experiments: a cached, resumable training run of an ensemble of models, and Monte Carlo
evaluation in chunks."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from icl import rng, store, tasks
from icl.config import positive_int
from icl.models import LinearTransformer, add_balanced_initialisation_
from icl.train import Objective, PromptSampler, TrainConfig, TrainResult, query_loss, train

EVAL_CONTEXT_EXAMPLES = 400_000


def eval_chunk(n_context: int) -> int:
    """Prompts per evaluation chunk: 20,000 up to n = 20, fewer beyond, so that a chunk holds at most 400,000 context
    examples. Evaluating 20,000 prompts of length 80 at once took chapter 02's kernel to 1.9 GB, near Binder's 2 GB."""
    return max(1, min(20_000, EVAL_CONTEXT_EXAMPLES // n_context))


@torch.no_grad()
def monte_carlo_predictions(
    n_test: int,
    n_context: int,
    sample: Callable[[int], tasks.RegressionBatch],
    predictors: Mapping[str, Callable[[tasks.RegressionBatch], torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Every predictor's predictions, and the targets (key ``"target"``), on ``n_test`` fresh prompts drawn by
    ``sample(size)`` in chunks of :func:`eval_chunk` prompts. Each output (..., n_test) is a tensor allocated once and
    filled chunk by chunk: a list of per-chunk tensors, kept alive between each chunk's large temporaries, fragments
    glibc's heap (chapter 02's evaluation once took its kernel from 0.3 to 1.1 GB that way)."""
    out: dict[str, torch.Tensor] = {}
    chunk = eval_chunk(n_context)
    for start in range(0, n_test, chunk):
        size = min(chunk, n_test - start)
        batch = sample(size)
        values = {"target": batch.y_query} | {name: predict(batch) for name, predict in predictors.items()}
        for name, value in values.items():
            if name not in out:
                out[name] = torch.empty((*value.shape[:-1], n_test), dtype=value.dtype, device=value.device)
            out[name][..., start : start + size] = value
    return out


def checked_query_weights(model: LinearTransformer, batch: tasks.RegressionBatch) -> torch.Tensor:
    """The weights v (ŷ = vᵀx_q) of every member of a one-layer model on each prompt of a batch shared by the members
    (X (B, n, d)): (E, B, d), from :meth:`~icl.models.LinearTransformer.query_weights`, after checking them against
    the model's forward pass on the batch's own queries."""
    E = model.n_models
    weights = model.query_weights(batch.X, batch.y)  # (E, B, d)
    expand = lambda t: t.expand(E, *t.shape)  # noqa: E731
    forward = model.predict(expand(batch.X), expand(batch.y), expand(batch.x_query))
    if not torch.allclose(forward, (weights * batch.x_query).sum(-1), rtol=1e-4, atol=1e-4):
        raise RuntimeError("the model's forward pass disagrees with its query weights")
    return weights


def query_averaged_error(weights: torch.Tensor, w: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """E over x_q ~ N(0, Σ) of (vᵀx_q − wᵀx_q)² = (v − w)ᵀ Σ (v − w), per prompt. (..., d) × 2, (d, d) -> (...).

    The Monte Carlo mean of these over prompts estimates the same MSE as the squared errors on sampled queries,
    with the query's share of the variance removed (Rao–Blackwell)."""
    delta = (weights - w).double()
    return ((delta @ covariance.double()) * delta).sum(-1)


def mean_and_se(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of per-prompt values (..., B) and its standard error, each (...)."""
    return values.mean(-1), values.std(-1) / math.sqrt(values.shape[-1])


def validate_seed(seed: object) -> int:
    """A seed is an integer >= 0."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return seed


def validate_device(device: object) -> str:
    """A config's device is a string (resolved from "auto" by :func:`icl.presets.get`)."""
    if not isinstance(device, str):
        raise ValueError(f"device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
    return device


def rotated_covariances(spectrum: tuple[float, ...], n_seeds: int, *, seed: int, device: str) -> torch.Tensor:
    """(S, d, d) float64: U diag(spectrum) Uᵀ with a random rotation U per seed, from the seed's task stream."""
    generator = rng.streams(seed, device).task
    eigenvalues = torch.tensor(spectrum, dtype=torch.float64)
    return torch.stack([tasks.covariance_from_spectrum(eigenvalues, generator=generator) for _ in range(n_seeds)]).to(
        device
    )


def balanced_one_layer(
    dim: int, n_models: int, *, scale: float, init_std: float, generator: torch.Generator
) -> LinearTransformer:
    """``n_models`` one-layer full models at Zhang, Frei and Bartlett's balanced start of scale ``scale`` (one Θ per
    model), every other entry N(0, init_std²): the start of chapters 07 and 08."""
    model = LinearTransformer(
        dim, 1, parameterisation="full", n_models=n_models, init_std=init_std, generator=generator
    )
    add_balanced_initialisation_(model, scale, generator=generator)
    return model


def fit_cached(
    name: str,
    config: Any,
    part: str,
    model: torch.nn.Module,
    sample: PromptSampler,
    train_config: TrainConfig,
    *,
    generator: torch.Generator,
    progress: bool,
    description: str = "",
    snapshot_every: int | None = None,
    objective: Objective = query_loss,
) -> TrainResult:
    """Train ``model`` in place, or load its trained weights from the store; returns the loss curves (steps, E)
    and, with ``snapshot_every``, the parameters over training (see :class:`icl.train.TrainResult`).

    The store key is (``name``-``part``, ``config``, icl's source hash); ``part`` is a short slug
    naming the sub-run (``"n20"``). While training, a checkpoint
    under the same key lets a killed run resume; the trained state is stored only once complete.
    """
    key = f"{name}-{part}"

    def compute() -> dict[str, Any]:
        checkpoint = store.checkpoint_path(store.config_key(key, config))
        result = train(
            model,
            sample,
            train_config,
            generator=generator,
            checkpoint=checkpoint,
            progress=progress,
            description=description or part,
            snapshot_every=snapshot_every,
            objective=objective,
        )
        return {"state": model.state_dict(), **result._asdict()}

    stored = store.cached(key, config, compute)
    # Only now, with the trained state stored, may the checkpoint go: a kill before this line resumes.
    store.checkpoint_path(store.config_key(key, config)).unlink(missing_ok=True)
    model.load_state_dict(stored["state"])
    return TrainResult(*(stored[field] for field in TrainResult._fields))


def downsample_curve(curve: torch.Tensor, points: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    """Average a (steps, ...) curve over consecutive windows; returns (step at each window's end, mean)."""
    steps = curve.shape[0]
    window = max(1, steps // points)
    usable = (steps // window) * window
    means = curve[:usable].reshape(usable // window, window, *curve.shape[1:]).mean(1)
    ends = torch.arange(window, usable + 1, window)
    return ends, means


def as_plain(value: Any) -> Any:
    """Tensors to nested lists, tuples to lists, dataclasses to dicts, recursively (for JSON)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return as_plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_plain(v) for v in value]
    return value


def best_shared_step_size(
    predict: Callable[[float], torch.Tensor], targets: torch.Tensor, n_steps: int, *, scale: float = 1.0
) -> tuple[float, float]:
    """The step η minimising the MSE of ``n_steps`` GD-like steps that all use η, and that MSE.

    K steps of one size η from w = 0 (GD, preconditioned GD, GD++) predict ŷ(η) = Σ_{k=1}^{K} c_k η^k
    exactly: the residuals after k steps are polynomials of degree k in η. K evaluations at
    η = scale·(1 … K) give the c_k (one Vandermonde solve per prompt), a further evaluation checks the form,
    and the MSE is a polynomial of degree 2K whose real critical points are compared.
    ``predict(η)``: (B,) predictions on fixed prompts with targets (B,).
    """
    n_steps = positive_int("n_steps", n_steps)
    points = torch.tensor([scale * (k + 1) for k in range(n_steps)], dtype=torch.float64)
    # On the CPU, in float64: the (K, K) Vandermonde system lives there whatever the predictor's device.
    values = torch.stack([predict(p.item()).double().cpu() for p in points])  # (K, B)
    vandermonde = points[:, None] ** torch.arange(1, n_steps + 1, dtype=torch.float64)  # (K, K)
    coefficients = torch.linalg.solve(vandermonde, values)  # (K, B): c_1 … c_K per prompt
    check_at = scale * (n_steps + 0.5)
    expected = (check_at ** torch.arange(1, n_steps + 1, dtype=torch.float64))[:, None].mul(coefficients).sum(0)
    checked = predict(check_at).double().cpu()
    if not torch.allclose(checked, expected, rtol=1e-6, atol=1e-8 * expected.abs().max().item()):
        raise ValueError(f"the predictor is not a polynomial of degree {n_steps} in its step size")
    y = targets.double().cpu()
    # MSE(η) = E (Σ_k c_k η^k − y)², coefficients by powers of η: E y², −2 E c_k y, Σ_{j+k} E c_j c_k.
    polynomial = [0.0] * (2 * n_steps + 1)
    polynomial[0] = (y * y).mean().item()
    for k in range(n_steps):
        polynomial[k + 1] -= 2 * (coefficients[k] * y).mean().item()
        for j in range(n_steps):
            polynomial[j + k + 2] += (coefficients[j] * coefficients[k]).mean().item()
    loss = np.polynomial.Polynomial(polynomial)
    roots = loss.deriv().roots()
    real = roots[np.abs(roots.imag) <= 1e-9 * max(1.0, np.abs(roots).max())].real
    best = real[np.argmin(loss(real))]
    return float(best), float(loss(best))
