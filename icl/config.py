"""Validation helpers for the frozen configs of :mod:`icl.presets`.

Every check raises ``ValueError`` naming the parameter, the value it got and what is allowed,
so that bad input fails before any work starts (``assert`` would vanish under ``python -O``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

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
        raise ValueError(f"unknown {name} {value!r}; choose one of {sorted(allowed)}")
    return str(value)


def square_matrix(name: str, matrix: object) -> torch.Tensor:
    """Return ``matrix`` if it is a finite (d, d) ``torch.Tensor`` with d >= 1."""
    if not isinstance(matrix, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (d, d), got {type(matrix).__name__}")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"{name} must have shape (d, d) with d >= 1, got {tuple(matrix.shape)}")
    if not torch.isfinite(matrix).all():
        raise ValueError(f"{name} has non-finite entries")
    return matrix
