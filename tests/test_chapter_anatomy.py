"""Every chapter has the book's anatomy (book/intro.md, "How to read a chapter"), read from its source: the claim
in a highlighted box citing its paper, a parameters cell, each figure folded and captioned, and a claim check
that records the chapter's numbers, offers them as a download and verifies."""

from __future__ import annotations

import ast
import re
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


# Code a reader sees without unfolding it fits the page: at the site's 1280 px layout a code block shows 77
# characters (measured in Chromium: 79 overflowed by 14 px); tests/test_site.py checks that nothing scrolls sideways.
VISIBLE_COLUMNS = 76
FOLDED = {"hide-input", "hide-cell"}


def _fenced_blocks(markdown: str) -> list[str]:
    """The fenced code blocks (``` or ~~~) of a Markdown cell, not its MyST directives ({note}, {math} …)."""
    return re.findall(r"^(```+|~~~+)[ \t]*(?!\{)[^\n]*\n(.*?)^\1[ \t]*$", markdown, re.M | re.S)


@pytest.mark.parametrize("path", sorted((ROOT / "book").glob("*.md")), ids=lambda p: p.stem)
def test_visible_code_fits_the_page(path: Path) -> None:
    too_long = []
    for cell in jupytext.read(str(path)).cells:
        if cell.cell_type == "code" and not FOLDED & set(cell.metadata.get("tags", [])):
            lines = cell.source.splitlines()
        elif cell.cell_type == "markdown":
            lines = [line for _, block in _fenced_blocks(cell.source) for line in block.splitlines()]
        else:
            continue
        too_long += [f"{len(line)}: {line}" for line in lines if len(line) > VISIBLE_COLUMNS]
    assert not too_long, f"visible code lines over {VISIBLE_COLUMNS} characters:\n  " + "\n  ".join(too_long)


def _strings(tree: ast.AST) -> list[str]:
    """Every string constant in ``tree``; an f-string as one text with □ for each replacement field."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.JoinedStr):
            found.append("".join(v.value if isinstance(v, ast.Constant) else "□" for v in node.values))
            return
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append(node.value)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def caret_outside_math(text: str) -> list[str]:
    """Super- and subscripts written as TeX (Σ^½, 2^k, x_{t+1}) outside $…$ math, with their context."""
    plain = re.sub(r"\$\$.*?\$\$|\$[^$\n]*\$|`[^`\n]*`", "", text, flags=re.S)
    return [plain[max(m.start() - 20, 0) : m.end() + 20] for m in re.finditer(r"\S\^|\^\S|_\{", plain)]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_figure_text_is_math_or_unicode(path: Path) -> None:
    """Strings in chapter code (panel titles, labels, ticks) write exponents as matplotlib mathtext ($Σ^{1/2}$) or
    Unicode (Σ⁻¹), never as a bare caret that the figure would print as it stands."""
    raw = [hit for cell in _code_cells(path) for s in _strings(ast.parse(cell.source)) for hit in caret_outside_math(s)]
    assert not raw, "TeX-like exponent in a figure string:\n  " + "\n  ".join(map(repr, raw))


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_prose_and_captions_write_exponents_as_math(path: Path) -> None:
    texts = []
    for cell in jupytext.read(str(path)).cells:
        if cell.cell_type == "markdown":
            texts.append(re.sub(r"^(```+|~~~+).*?^\1[ \t]*$", "", cell.source, flags=re.M | re.S))
        else:
            texts.append(cell.metadata.get("mystnb", {}).get("figure", {}).get("caption", ""))
    raw = [hit for text in texts for hit in caret_outside_math(text)]
    assert not raw, "exponent written with a caret outside $…$ math:\n  " + "\n  ".join(map(repr, raw))
