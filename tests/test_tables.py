"""The book's one table form: separated, aligned columns, a verdict in words, plain text outside a notebook."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from icl.checks import ClaimChecks
from icl.tables import table


def test_numbers_align_right_and_text_left() -> None:
    t = table(("name", "value", "spread"), [("a", 1.23456, "0.5 (0.1)"), ("b", np.float64(2.0), "—")])
    assert t.numeric == (False, True, True)
    rendered = t._repr_html_()
    assert rendered.count("text-align: right") == 2 * 3  # two numeric columns: header and two rows
    assert "<td" in rendered and "padding" in rendered and "border" in rendered
    assert ">1.235<" in rendered  # the default format, .4g


def test_a_column_with_words_is_text() -> None:
    assert table(("x",), [("1.5",), ("Gaussian",)]).numeric == (False,)


def test_formats_per_column_and_infinity() -> None:
    t = table(("L", "loss"), [(3, 0.123456), (4, math.inf)], formats=("d", ".2f"))
    assert [t.cell_text(0, 0), t.cell_text(0, 1), t.cell_text(1, 1)] == ["3", "0.12", "∞"]


def test_verdicts_are_words_not_emoji() -> None:
    rendered = table(("check", "result"), [("a", True), ("b", False)])._repr_html_()
    assert 'class="icl-pass"' in rendered and ">pass<" in rendered
    assert 'class="icl-fail"' in rendered and ">FAIL<" in rendered
    assert not re.search(r"[\U0001F300-\U0001FAFF\u2705\u274C]", rendered)


def test_cells_are_escaped() -> None:
    assert "&lt;b&gt;" in table(("x",), [("<b>",)])._repr_html_()


def test_plain_text_is_aligned() -> None:
    lines = repr(table(("name", "value"), [("a", 1.5), ("longer", 22.25)], note="a note")).splitlines()
    assert lines[0].startswith("name    ") and lines[1].startswith("------  -----")
    assert lines[2].endswith("  1.5") and lines[3].endswith("22.25") and lines[-1] == "a note"


@pytest.mark.parametrize(
    ("header", "rows", "kwargs", "words"),
    [
        ((), [], {}, "at least one column"),
        (("a", "b"), [(1,)], {}, "row 0 has 1 cells"),
        (("a",), [(1,)], {"formats": (".2f", "d")}, "formats has 2 entries"),
        (("a",), [(1,)], {"numeric": (True, False)}, "numeric has 2 entries"),
    ],
)
def test_malformed_tables_are_refused(header: tuple, rows: list, kwargs: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        table(header, rows, **kwargs)


def test_claim_checks_render_through_the_table() -> None:
    checks = ClaimChecks()
    checks.at_most("small", 0.01, 0.02, reason="why")
    checks.at_least("large", 1.0, 2.0, reason="why not")
    t = checks.table()
    assert t.header[-1] == "result" and [row[-1] for row in t.rows] == [True, False]
    assert checks._repr_html_() == t._repr_html_()
