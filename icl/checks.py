"""Claim checks: experiment against theory, with a stated tolerance, failing loudly.

A chapter collects its checks in :class:`ClaimChecks`, shows them as a table, and ends with
``checks.verify()``, which raises :class:`ClaimCheckFailed` carrying every number if any check
failed, so that the book's build (and ``python -m icl run``) fails instead of publishing a wrong figure.

>>> checks = ClaimChecks()
>>> checks.close("loss", 1.16, 1.1538, rtol=0.02, reason="2 %: the budget's convergence").passed
True
>>> checks.at_least("margin", 3.0, 5.0, reason="tells Γ* from Σ⁻¹").passed
False
>>> checks.verify()
Traceback (most recent call last):
...
icl.checks.ClaimCheckFailed: 1 of 2 claim checks failed:
  margin: measured 3 ≥ 5 (tells Γ* from Σ⁻¹)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Literal

from icl.config import positive_int
from icl.tables import Table, table

FAMILY_FALSE_ALARM = 0.01  # the chance that a perfect model fails the every-point check somewhere, by chance
Relation = Literal["close", "at_most", "at_least"]


@dataclass(frozen=True)
class Check:
    """One comparison. ``tolerance`` is the allowed |measured − expected| for ``close``, else 0."""

    name: str
    relation: Relation
    measured: float
    expected: float
    tolerance: float
    passed: bool
    reason: str

    def describe(self) -> str:
        """One line with every number."""
        if self.relation == "close":
            body = f"measured {self.measured:.6g}, expected {self.expected:.6g} ± {self.tolerance:.3g}"
        else:
            sign = "≤" if self.relation == "at_most" else "≥"
            body = f"measured {self.measured:.6g} {sign} {self.expected:.6g}"
        return f"{self.name}: {body} ({self.reason})"


class ClaimCheckFailed(AssertionError):
    """Raised by :meth:`ClaimChecks.verify`; ``checks`` holds every check, passed or not."""

    def __init__(self, checks: list[Check]) -> None:
        self.checks = list(checks)
        failed = [c for c in self.checks if not c.passed]
        lines = "\n".join(f"  {c.describe()}" for c in failed)
        super().__init__(f"{len(failed)} of {len(self.checks)} claim checks failed:\n{lines}")


def _number(name: str, value: Any, *, finite: bool = False) -> float:
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"claim check {name!r} got NaN")
    if finite and math.isinf(value):
        raise ValueError(f"claim check {name!r} needs a finite expected value or bound, got {value}")
    return value


class ClaimChecks:
    """An ordered collection of checks; renders as a table in a notebook."""

    def __init__(self) -> None:
        self.checks: list[Check] = []

    def _add(self, check: Check) -> Check:
        if any(c.name == check.name for c in self.checks):
            raise ValueError(f"duplicate claim check name {check.name!r}")
        self.checks.append(check)
        return check

    def close(
        self, name: str, measured: float, expected: float, *, rtol: float = 0.0, atol: float = 0.0, reason: str
    ) -> Check:
        """Pass when |measured − expected| ≤ atol + rtol·|expected|."""
        measured, expected = _number(name, measured), _number(name, expected, finite=True)
        if rtol < 0 or atol < 0 or rtol + atol == 0:
            raise ValueError(f"claim check {name!r} needs rtol >= 0, atol >= 0 and one of them > 0")
        tolerance = atol + rtol * abs(expected)
        return self._add(
            Check(name, "close", measured, expected, tolerance, abs(measured - expected) <= tolerance, reason)
        )

    def at_most(self, name: str, measured: float, bound: float, *, reason: str) -> Check:
        """Pass when measured ≤ bound."""
        measured, bound = _number(name, measured), _number(name, bound, finite=True)
        return self._add(Check(name, "at_most", measured, bound, 0.0, measured <= bound, reason))

    def at_least(self, name: str, measured: float, bound: float, *, reason: str) -> Check:
        """Pass when measured ≥ bound."""
        measured, bound = _number(name, measured), _number(name, bound, finite=True)
        return self._add(Check(name, "at_least", measured, bound, 0.0, measured >= bound, reason))

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def verify(self) -> None:
        """Raise :class:`ClaimCheckFailed` unless there is at least one check and all passed."""
        if not self.checks:
            raise ValueError("no claim checks were recorded")
        if not self.passed:
            raise ClaimCheckFailed(self.checks)

    def records(self) -> list[dict[str, Any]]:
        """Every check as a plain dict (for the chapter's JSON)."""
        return [asdict(c) for c in self.checks]

    def table(self) -> Table:
        """The checks as a table: check, measured, expected (with its tolerance or bound), why, pass or FAIL."""
        rows = []
        for c in self.checks:
            relation = {"close": "±", "at_most": "≤", "at_least": "≥"}[c.relation]
            bound = f"{c.expected:.4g} ± {c.tolerance:.2g}" if c.relation == "close" else f"{relation} {c.expected:.4g}"
            rows.append((c.name, f"{c.measured:.5g}", bound, c.reason, c.passed))
        header = ("check", "measured", "expected", "tolerance: why", "result")
        return table(header, rows, numeric=(False, True, True, False, False))

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()

    def __repr__(self) -> str:
        return "\n".join(c.describe() + ("" if c.passed else "  <-- FAILED") for c in self.checks)


def family_z(points: int, false_alarm: float = FAMILY_FALSE_ALARM) -> float:
    """The two-sided normal quantile that ``points`` independent estimates all stay within with probability
    1 − ``false_alarm`` (Bonferroni): 3.29 for one point at 0.1 %, 3.57 for 28 points at 1 %."""
    return NormalDist().inv_cdf(1 - false_alarm / (2 * positive_int("points", points)))
