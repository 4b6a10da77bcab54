"""The experiments' configs: the training fields they all share, and the validation helpers every config uses.

Every check raises ``ValueError`` naming the parameter, the value it got and what is allowed,
so that bad input fails before any work starts (``assert`` would vanish under ``python -O``).
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch


def positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    """Return ``value`` if it is an integer >= ``minimum`` (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def finite_float(name: str, value: object, *, minimum: float | None = None, strict: bool = False) -> float:
    """Return ``value`` as a float if it is a finite real number (>= or > ``minimum`` when given)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if minimum is not None and (value <= minimum if strict else value < minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {minimum}, got {value!r}")
    return value


def positive_float(name: str, value: object) -> float:
    """Return ``value`` as a float if it is finite and > 0."""
    return finite_float(name, value, minimum=0.0, strict=True)


def int_tuple(name: str, value: object, *, minimum: int = 1) -> tuple[int, ...]:
    """Return a non-empty sequence of integers >= ``minimum`` as a tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"{name} must be a non-empty list of integers >= {minimum}, got {value!r}")
    return tuple(positive_int(f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(value))


def positive_float_tuple(name: str, value: object) -> tuple[float, ...]:
    """Return a non-empty sequence of finite numbers > 0 as a tuple of floats (a covariance spectrum)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"{name} must be a non-empty list of positive numbers, got {value!r}")
    return tuple(positive_float(f"{name}[{i}]", v) for i, v in enumerate(value))


def one_of(name: str, value: object, allowed: Sequence[str]) -> str:
    """Return ``value`` if it is one of the ``allowed`` strings."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {sorted(allowed)}{did_you_mean(value, allowed)}")
    return str(value)


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the choice closest to a misspelt ``name``, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def square_matrix(name: str, matrix: object) -> torch.Tensor:
    """Return ``matrix`` if it is a finite (d, d) ``torch.Tensor`` with d >= 1."""
    if not isinstance(matrix, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (d, d), got {type(matrix).__name__}")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"{name} must have shape (d, d) with d >= 1, got {tuple(matrix.shape)}")
    if not torch.isfinite(matrix).all():
        raise ValueError(f"{name} has non-finite entries")
    return matrix


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


@dataclass(frozen=True)
class ExperimentConfig:
    """The fields every experiment's config shares, validated once here. An experiment's config subclasses this
    (or :class:`LinearExperimentConfig`), declares its own fields and redeclares the defaults it needs: every
    default is the paper's value (the ``paper`` preset, :mod:`icl.presets`).

    ``n_seeds`` models are trained side by side (an ensemble, one per seed), each for ``train_steps`` steps of
    ``batch_size`` fresh prompts at ``learning_rate``; ``n_test`` fresh prompts score them. ``seed`` is the base seed
    of every random stream (:mod:`icl.rng`); ``device`` is resolved by :func:`icl.presets.get`."""

    n_seeds: int = 5
    train_steps: int = 1000
    batch_size: int = 1024
    learning_rate: float = 1e-2
    n_test: int = 100_000
    seed: int = 0
    device: str = "cpu"

    def _set(self, name: str, value: object) -> None:
        """Keep a field's normalised value (int, float, tuple), so that equal configs have equal store keys."""
        object.__setattr__(self, name, value)

    def __post_init__(self) -> None:
        for name in ("n_seeds", "train_steps", "batch_size"):
            self._set(name, positive_int(name, getattr(self, name)))
        self._set("learning_rate", finite_float("learning_rate", self.learning_rate, minimum=0.0, strict=True))
        self._set("n_test", positive_int("n_test", self.n_test, minimum=2))
        self._set("seed", validate_seed(self.seed))
        validate_device(self.device)


@dataclass(frozen=True)
class LinearExperimentConfig(ExperimentConfig):
    """:class:`ExperimentConfig` for the linear transformers, which start from small Gaussian entries of std
    ``init_std``."""

    init_std: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("init_std", finite_float("init_std", self.init_std, minimum=0.0, strict=True))
