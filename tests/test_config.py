"""The validation helpers: every bad value raises ValueError naming the parameter and the value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from icl.config import finite_float, int_tuple, one_of, positive_float, positive_int


@pytest.mark.parametrize("value, minimum", [(1, 1), (7, 1), (0, 0), (np.int64(3), 1), (2, 2)])
def test_positive_int_accepts_integers_at_or_above_the_minimum(value, minimum) -> None:
    result = positive_int("dim", value, minimum=minimum)
    assert result == value and type(result) is int


@pytest.mark.parametrize("value", [0, -3, 2.5, 3.0, "3", None, True, False, float("nan")])
def test_positive_int_rejects_and_names_the_parameter(value) -> None:
    with pytest.raises(ValueError, match=r"dim must be an integer >= 1") as info:
        positive_int("dim", value)
    assert repr(value) in str(info.value)


def test_positive_int_minimum_is_respected() -> None:
    with pytest.raises(ValueError, match="n_test must be an integer >= 2, got 1"):
        positive_int("n_test", 1, minimum=2)


@pytest.mark.parametrize("value", [0.5, 3, -2.0, 0.0, np.float32(1.5)])
def test_finite_float_accepts_finite_reals(value) -> None:
    result = finite_float("learning_rate", value)
    assert result == float(value) and type(result) is float


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -math.inf, "0.1", None, True, 1j])
def test_finite_float_rejects_non_finite_and_non_numbers(value) -> None:
    with pytest.raises(ValueError, match="learning_rate must be a finite number"):
        finite_float("learning_rate", value)


def test_finite_float_minimum_inclusive_and_strict() -> None:
    assert finite_float("condition_number", 1.0, minimum=1.0) == 1.0
    with pytest.raises(ValueError, match=r"condition_number must be >= 1.0, got 0.5"):
        finite_float("condition_number", 0.5, minimum=1.0)
    with pytest.raises(ValueError, match=r"learning_rate must be > 0.0"):
        finite_float("learning_rate", 0.0, minimum=0.0, strict=True)
    assert positive_float("scale", 1e-9) == 1e-9
    with pytest.raises(ValueError, match="scale must be > 0.0"):
        positive_float("scale", 0)


@pytest.mark.parametrize("value, expected", [([5, 10], (5, 10)), ((3,), (3,)), (range(1, 3), (1, 2))])
def test_int_tuple_normalises_sequences(value, expected) -> None:
    assert int_tuple("n_context_sweep", value) == expected


@pytest.mark.parametrize("value", [(), [], "5", 5, None])
def test_int_tuple_rejects_empty_and_non_sequences(value) -> None:
    with pytest.raises(ValueError, match="n_context_sweep must be a non-empty list"):
        int_tuple("n_context_sweep", value)


def test_int_tuple_names_the_bad_element() -> None:
    with pytest.raises(ValueError, match=r"n_context_sweep\[1\] must be an integer >= 1, got 0"):
        int_tuple("n_context_sweep", (5, 0))


def test_one_of_lists_the_choices() -> None:
    assert one_of("initialisation", "random", ("balanced", "random")) == "random"
    with pytest.raises(ValueError, match=r"unknown initialisation 'zeros'; choose one of \['balanced', 'random'\]"):
        one_of("initialisation", "zeros", ("random", "balanced"))


def test_positive_float_tuple() -> None:
    from icl.config import positive_float_tuple

    assert positive_float_tuple("spectrum", [1, 0.5]) == (1.0, 0.5)
    for bad in ((), "1, 2", (1.0, 0.0), (1.0, float("nan")), 3.0):
        with pytest.raises(ValueError, match="spectrum"):
            positive_float_tuple("spectrum", bad)
