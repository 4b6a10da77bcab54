"""Live Code runs a chapter from its page: the code cells of each built chapter page, taken as Thebe takes them,
execute in order in a fresh kernel, at tiny parameters, without a NameError or any other error before the claim check.

Thebe (sphinx-thebe's ``thebe_selector`` ``.thebe,.cell`` and ``thebe_selector_input`` ``pre``) makes the first
``<pre>`` of every cell on the page executable, in page order; code that is not on the page (a ``remove-cell`` or
``remove-input`` tag) never runs. This test reads the built page (``make book``; ``$ICL_SITE`` points elsewhere) the
same way, adds the tiny parameters of tests/test_chapters.py in a cell after the parameters cell (the reader would
edit the parameters cell itself), and runs the cells with nbclient. A chapter that trains fails its claim check at
tiny parameters (its own test says so); that is the only error allowed. Skipped without a built site, unless
``$ICL_SITE_TEST=required``.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from test_chapters import TINY

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("ICL_SITE", ROOT / "_build" / "html"))
REQUIRED = os.environ.get("ICL_SITE_TEST") == "required"
CHAPTERS = sorted(p.stem for p in (ROOT / "book").glob("[0-9][0-9]_*.md"))

pytestmark = pytest.mark.notebooks


def page_code(html: str) -> list[tuple[list[str], str]]:
    """The code Thebe would make executable on a page, in page order: (the cell's classes, its code)."""
    import bs4

    cells = []
    for cell in bs4.BeautifulSoup(html, "html.parser").select(".thebe, .cell"):
        pre = cell.find("pre")
        if pre is not None:
            cells.append((cell.get("class", []), pre.get_text()))
    return cells


def tiny_assignments(chapter: str) -> str:
    """The tiny parameters of tests/test_chapters.py as Python assignments, on the CPU."""
    pairs = TINY.get(f"book/{chapter}", [])
    lines = [pairs[i + 1].replace("=", " = ", 1) for i in range(0, len(pairs), 2)]
    return "\n".join([*lines, 'device = "cpu"'])


def test_page_code_is_what_thebe_selects() -> None:
    html = (
        '<div class="cell tag_parameters"><div class="cell_input"><pre>preset = None</pre></div></div>'
        '<div class="cell tag_hide-cell"><details><div class="cell_input"><pre>x = 1</pre></div></details></div>'
        '<div class="cell tag_remove-input"><div class="cell_output"><p>table</p></div></div>'
        '<div class="cell"><div class="cell_input"><pre><span>print</span>(x)</pre></div>'
        '<div class="cell_output"><pre>1</pre></div></div>'
    )
    assert page_code(html) == [
        (["cell", "tag_parameters"], "preset = None"),
        (["cell", "tag_hide-cell"], "x = 1"),
        (["cell"], "print(x)"),
    ]
    assert tiny_assignments("04_trained_transformers_do_gd").splitlines()[:2] == ["train_steps = 5", "dim = 3"]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_a_chapter_runs_from_its_page(chapter: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = SITE / "book" / f"{chapter}.html"
    if not page.is_file():
        if REQUIRED:
            pytest.fail(f"ICL_SITE_TEST=required, but {page} is not built (run `make book`)")
        pytest.skip(f"no built page {page} (run `make book`)")
    code = page_code(page.read_text(encoding="utf-8"))
    parameters = [i for i, (classes, _) in enumerate(code) if "tag_parameters" in classes]
    assert parameters == [0], f"the page's first code cell should be its parameters cell, got cells {parameters}"
    sources = [code[0][1], tiny_assignments(chapter), *(source for _, source in code[1:])]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
    monkeypatch.setenv("ICL_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("ICL_RECORD_DIR", raising=False)
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(ROOT / "book")}},
    ).execute()
    errors = [
        (index, output["ename"], output["evalue"])
        for index, cell in enumerate(notebook.cells)
        for output in cell.get("outputs", [])
        if output["output_type"] == "error"
    ]
    verify = [i for i, source in enumerate(sources) if source.strip() == "checks.verify()"]
    if f"book/{chapter}" in TINY:  # undertrained: its claim check fails, and nothing before it may
        assert [(index, name) for index, name, _ in errors] == [(verify[-1], "ClaimCheckFailed")], errors
    else:
        assert errors == [], errors
