"""Claim checks pass and fail as stated, and a failure carries every number."""

from __future__ import annotations

import doctest
import math

import pytest

import icl.checks as checks_module
from icl.checks import Check, ClaimCheckFailed, ClaimChecks


def test_close_passes_and_fails_at_the_tolerance() -> None:
    checks = ClaimChecks()
    assert checks.close("inside", 1.019, 1.0, rtol=0.02, reason="r").passed
    assert checks.close("edge", 1.25, 1.0, atol=0.25, reason="r").passed  # exact in binary
    assert not checks.close("outside", 1.021, 1.0, rtol=0.02, reason="r").passed
    assert not checks.close("below", 0.97, 1.0, rtol=0.02, reason="r").passed
    both = checks.close("both", 1.5, 1.0, rtol=0.2, atol=0.3, reason="r")
    assert both.passed and both.tolerance == pytest.approx(0.5)
    assert checks.close("negative expected", -1.01, -1.0, rtol=0.02, reason="r").passed


def test_at_most_and_at_least() -> None:
    checks = ClaimChecks()
    assert checks.at_most("a", 0.01, 0.02, reason="r").passed
    assert checks.at_most("b", 0.02, 0.02, reason="r").passed
    assert not checks.at_most("c", 0.03, 0.02, reason="r").passed
    assert checks.at_least("d", 6.0, 5.0, reason="r").passed
    assert checks.at_least("e", 5.0, 5.0, reason="r").passed
    assert not checks.at_least("f", 4.9, 5.0, reason="r").passed


def test_verify_passes_silently_when_all_pass() -> None:
    checks = ClaimChecks()
    checks.close("loss", 1.16, 1.1538, rtol=0.02, reason="2 %")
    checks.at_least("margin", 7.0, 5.0, reason="tells Γ* from Σ⁻¹")
    assert checks.passed
    checks.verify()


def test_verify_raises_with_every_number() -> None:
    checks = ClaimChecks()
    checks.close("loss", 1.16, 1.1538, rtol=0.02, reason="budget")
    checks.at_least("margin", 3.0, 5.0, reason="tells Γ* from Σ⁻¹")
    checks.at_most("error", 0.5, 0.02, reason="2 %")
    assert not checks.passed
    with pytest.raises(ClaimCheckFailed) as info:
        checks.verify()
    failure = info.value
    assert isinstance(failure, AssertionError)
    assert [c.name for c in failure.checks] == ["loss", "margin", "error"]  # passed ones too
    assert [c.passed for c in failure.checks] == [True, False, False]
    assert (failure.checks[1].measured, failure.checks[1].expected) == (3.0, 5.0)
    message = str(failure)
    assert message.startswith("2 of 3 claim checks failed")
    assert "margin: measured 3 ≥ 5 (tells Γ* from Σ⁻¹)" in message
    assert "error: measured 0.5 ≤ 0.02 (2 %)" in message
    assert "loss" not in message  # only the failed checks are listed


def test_failed_close_message_names_measured_expected_and_tolerance() -> None:
    checks = ClaimChecks()
    checks.close("test MSE", 1.3, 1.1538, rtol=0.02, reason="2 % of f*")
    with pytest.raises(ClaimCheckFailed, match=r"test MSE: measured 1\.3, expected 1\.1538 ± 0\.0231 \(2 % of f\*\)"):
        checks.verify()


def test_no_checks_is_an_error() -> None:
    checks = ClaimChecks()
    assert not checks.passed
    with pytest.raises(ValueError, match="no claim checks"):
        checks.verify()


@pytest.mark.parametrize("method", ["close", "at_most", "at_least"])
def test_nan_is_rejected(method: str) -> None:
    checks = ClaimChecks()
    kwargs = {"rtol": 0.1} if method == "close" else {}
    for measured, expected in ((math.nan, 1.0), (1.0, math.nan)):
        with pytest.raises(ValueError, match="'x' got NaN"):
            getattr(checks, method)("x", measured, expected, reason="r", **kwargs)
    assert checks.checks == []


@pytest.mark.parametrize("method", ["close", "at_most"])
def test_an_infinite_expected_value_or_bound_cannot_pass(method: str) -> None:
    checks = ClaimChecks()
    kwargs = {"rtol": 0.02} if method == "close" else {}
    try:
        check = getattr(checks, method)("overflowed theory", 1e300, math.inf, reason="r", **kwargs)
    except ValueError:
        return  # rejecting it is fine too
    assert not check.passed


def test_infinite_measured_value_fails() -> None:
    checks = ClaimChecks()
    assert not checks.close("a", math.inf, 1.0, rtol=0.5, reason="r").passed
    assert not checks.at_most("b", math.inf, 1.0, reason="r").passed


def test_duplicate_names_are_rejected() -> None:
    checks = ClaimChecks()
    checks.at_most("error", 0.01, 0.02, reason="r")
    with pytest.raises(ValueError, match="duplicate claim check name 'error'"):
        checks.at_least("error", 0.01, 0.02, reason="r")
    assert len(checks.checks) == 1


@pytest.mark.parametrize("tolerances", [dict(), dict(rtol=0.0, atol=0.0), dict(rtol=-0.1), dict(atol=-1.0, rtol=0.1)])
def test_close_needs_a_positive_tolerance(tolerances: dict) -> None:
    with pytest.raises(ValueError, match="rtol >= 0, atol >= 0"):
        ClaimChecks().close("x", 1.0, 1.0, reason="r", **tolerances)


def test_numbers_are_converted_to_float() -> None:
    import torch

    check = ClaimChecks().close("t", torch.tensor(1.0, dtype=torch.float64), 1, atol=0.1, reason="r")
    assert type(check.measured) is float and type(check.expected) is float


def test_records_and_html_table() -> None:
    checks = ClaimChecks()
    checks.close("loss <Γ*>", 1.16, 1.1538, rtol=0.02, reason="2 % & more")
    checks.at_least("margin", 3.0, 5.0, reason="tells Γ* from Σ⁻¹")
    records = checks.records()
    assert records[0] == {
        "name": "loss <Γ*>",
        "relation": "close",
        "measured": 1.16,
        "expected": 1.1538,
        "tolerance": pytest.approx(0.023076),
        "passed": True,
        "reason": "2 % & more",
    }
    assert records[1]["passed"] is False
    html = checks._repr_html_()
    assert html.startswith('<table class="icl-table"') and html.endswith("</table>")
    assert html.count("<tr>") == 3  # header and two rows
    assert "loss &lt;Γ*&gt;" in html and "2 % &amp; more" in html  # escaped
    assert ">pass</span>" in html and ">FAIL</span>" in html
    assert "1.154 ± 0.023" in html and "≥ 5" in html
    text = repr(checks)
    assert text.count("<-- FAILED") == 1 and "margin" in text.splitlines()[1]


def test_check_describe() -> None:
    check = Check("x", "at_most", 0.5, 0.25, 0.0, False, "why")
    assert check.describe() == "x: measured 0.5 ≤ 0.25 (why)"


def test_docstring_examples() -> None:
    result = doctest.testmod(checks_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
