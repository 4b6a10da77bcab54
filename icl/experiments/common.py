"""Pieces shared by the experiments: a cached, resumable training run of an ensemble of models."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from icl import store
from icl.train import PromptSampler, TrainConfig, TrainResult, train


def validate_seed(seed: object) -> int:
    """A seed is an integer >= 0."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return seed


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
