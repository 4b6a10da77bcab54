"""Every chapter has the book's anatomy (book/intro.md, "How to read a chapter"), read from its source: the claim
in a highlighted box citing its paper, a parameters cell, each figure folded and captioned, and a claim check
that records the chapter's numbers, offers them as a download and verifies."""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.md"))
RESULT_CHAPTERS = [p for p in CHAPTERS if not p.stem.startswith("01_")]  # 01 is notation: no claim box, no figure


def _code_cells(path: Path) -> list:
    return [c for c in jupytext.read(str(path)).cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", RESULT_CHAPTERS, ids=lambda p: p.stem)
def test_claim_box_cites_the_paper(path: Path) -> None:
    text = path.read_text()
    start = text.find(":::{admonition} Claim")
    assert start >= 0, "no Claim admonition"
    box = text[start : text.index("\n:::", start + 1)]
    assert ":class: important" in box, "the claim box is not highlighted"
    assert "{cite:" in text[start:], "the chapter cites no paper from book/references.bib"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_parameters_cell_comes_first(path: Path) -> None:
    cells = _code_cells(path)
    assert "parameters" in cells[0].metadata.get("tags", []), "the first code cell is not tagged parameters"
    assert "preset = None" in cells[0].source and 'device = "auto"' in cells[0].source


@pytest.mark.parametrize("path", RESULT_CHAPTERS, ids=lambda p: p.stem)
def test_every_figure_is_folded_and_captioned(path: Path) -> None:
    figures = [c for c in _code_cells(path) if "plt.show()" in c.source]
    assert figures, "no figure"
    for cell in figures:
        first_line = cell.source.strip().splitlines()[0]
        assert "hide-input" in cell.metadata.get("tags", []), f"plotting code not folded: {first_line}"
        figure = cell.metadata.get("mystnb", {}).get("figure", {})
        assert figure.get("name", "").startswith("fig-"), f"figure without a name: {first_line}"
        assert len(figure.get("caption", "").split()) >= 8, f"figure without a real caption: {first_line}"
    thumbnails = sum("record.save_thumbnail(" in c.source for c in figures)
    assert thumbnails == 1, "one figure should be the chapter's thumbnail on the intro page"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_claim_check_records_offers_and_verifies(path: Path) -> None:
    cells = _code_cells(path)
    record = [
        i
        for i, c in enumerate(cells)
        if f'record.write(\n    "{path.stem}"' in c.source or f'record.write("{path.stem}"' in c.source
    ]
    assert len(record) == 1, "the chapter records its numbers exactly once, under its own name"
    assert "record.download_link(" in cells[record[0]].source
    assert any(c.source.strip() == "checks.verify()" for c in cells[record[0] + 1 :]), "no checks.verify() after it"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_code_cell_stays_on_the_page(path: Path) -> None:
    """Live Code (Thebe) runs the code that is on the page, so a cell whose code is removed (``remove-cell``,
    ``remove-input``) would leave later cells without its names: code is folded (``hide-cell``, ``hide-input``)
    instead. tests/test_live_code.py runs the built pages' code as Thebe would."""
    for cell in _code_cells(path):
        removed = {"remove-cell", "remove-input"} & set(cell.metadata.get("tags", []))
        assert not removed, f"{sorted(removed)} keeps this cell's code from Live Code: {cell.source.splitlines()[0]}"
