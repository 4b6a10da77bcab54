"""The book's tables (claim checks, parameter changes, a chapter's own numbers) in one form.

A :class:`Table` renders in a notebook and on the site as HTML with separated columns, rules between rows and
columns, numbers right-aligned in tabular figures, and a pass/fail mark in words (no emoji font needed); its styles
are inline, so it looks the same in JupyterLab as on the site. Outside a notebook it prints as aligned plain text.
"""

from __future__ import annotations

import html
import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass

# A cell: text as written, a number (formatted with the column's format, default ".4g"), or a verdict (a bool:
# True is "pass", False is "FAIL").
Cell = str | int | float | bool

# Text that reads as a number or a list of numbers: digits with signs, decimal points, exponents, separators,
# a ± or parenthesised spread, ×, %, ∞ or a dash for "none".
NUMERIC_TEXT = re.compile(r"[\s\d.,:;eE+\-−±()%×∞—–/|]*\d[\s\d.,:;eE+\-−±()%×∞—–/|]*|[—–∞-]")

_TABLE = "border-collapse: collapse; margin: 0.5em 0 1em 0; line-height: 1.35; font-size: 0.9em"
_CELL = "padding: 0.25em 0.5em; border: 1px solid rgba(128, 128, 128, 0.35)"
_HEAD = "border-bottom: 2px solid rgba(128, 128, 128, 0.8); vertical-align: bottom; font-weight: 600"
_NUMBER = "text-align: right; font-variant-numeric: tabular-nums"  # a number has no line break inside (UAX #14)
_VERDICT = {True: ("icl-pass", "pass", "color: #1a7f37"), False: ("icl-fail", "FAIL", "color: #cf222e")}


def _is_number(cell: Cell) -> bool:
    return isinstance(cell, numbers.Real) and not isinstance(cell, bool)


def _text(cell: Cell, spec: str) -> str:
    if isinstance(cell, bool):
        return _VERDICT[cell][1]
    if _is_number(cell):
        if math.isinf(cell):
            return "∞" if cell > 0 else "−∞"
        return format(cell, spec)
    return str(cell)


@dataclass(frozen=True)
class Table:
    """``header`` (C,) over ``rows`` (R, C) of cells; ``numeric`` (C,) says which columns align right; ``note`` is
    a sentence under the table."""

    header: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    numeric: tuple[bool, ...]
    formats: tuple[str, ...]
    note: str = ""

    def cell_text(self, row: int, column: int) -> str:
        return _text(self.rows[row][column], self.formats[column])

    def _repr_html_(self) -> str:
        def style(column: int, head: bool) -> str:
            align = _NUMBER if self.numeric[column] else "text-align: left"
            return f"{_CELL}; {align}; " + (_HEAD if head else "vertical-align: top")

        head = "".join(f'<th style="{style(c, True)}">{html.escape(h)}</th>' for c, h in enumerate(self.header))
        body = []
        for r, row in enumerate(self.rows):
            cells = []
            for c, cell in enumerate(row):
                text = html.escape(self.cell_text(r, c))
                if isinstance(cell, bool):
                    name, _, colour = _VERDICT[cell]
                    text = f'<span class="{name}" style="{colour}; font-weight: 600">{text}</span>'
                cells.append(f'<td style="{style(c, False)}">{text}</td>')
            body.append("<tr>" + "".join(cells) + "</tr>")
        note = f"<p>{html.escape(self.note)}</p>" if self.note else ""
        return (
            f'<table class="icl-table" style="{_TABLE}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>{note}"
        )

    def __repr__(self) -> str:
        texts = [list(self.header)] + [
            [self.cell_text(r, c) for c in range(len(self.header))] for r in range(len(self.rows))
        ]
        widths = [max(len(row[c]) for row in texts) for c in range(len(self.header))]

        def line(row: list[str]) -> str:
            return "  ".join(
                t.rjust(w) if self.numeric[c] else t.ljust(w) for c, (t, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([line(texts[0]), rule, *(line(row) for row in texts[1:])] + ([self.note] if self.note else []))


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    *,
    numeric: Sequence[bool] | None = None,
    formats: Sequence[str] | str = ".4g",
    note: str = "",
) -> Table:
    """A :class:`Table` of ``rows`` under ``header``.

    A column is numeric (right-aligned) when every cell in it is a number or reads as one (``NUMERIC_TEXT``)
    unless ``numeric`` says per column; ``formats`` is one format spec for every number or one per column.
    """
    header = tuple(str(h) for h in header)
    columns = len(header)
    if columns == 0:
        raise ValueError("table: header needs at least one column")
    rows = tuple(tuple(row) for row in rows)
    for i, row in enumerate(rows):
        if len(row) != columns:
            raise ValueError(f"table: row {i} has {len(row)} cells, the header {columns}")
    formats = (formats,) * columns if isinstance(formats, str) else tuple(formats)
    if len(formats) != columns:
        raise ValueError(f"table: formats has {len(formats)} entries for {columns} columns")
    if numeric is None:
        numeric = tuple(
            bool(rows)
            and all(_is_number(row[c]) or (isinstance(row[c], str) and NUMERIC_TEXT.fullmatch(row[c])) for row in rows)
            for c in range(columns)
        )
    elif len(numeric) != columns:
        raise ValueError(f"table: numeric has {len(numeric)} entries for {columns} columns")
    return Table(header, rows, tuple(bool(n) for n in numeric), formats, note)
