"""The book's chapters, their parameters, and the record each chapter leaves for ``python -m icl run``.

A chapter ends by calling :func:`record`, which writes its claim checks, resolved config and key
arrays as JSON into ``$ICL_RECORD_DIR`` when that is set (the CLI sets it; a book build does not).
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icl.checks import ClaimChecks
from icl.experiments.common import as_plain
from icl.store import atomic_write_text

RECORD_DIR_VARIABLE = "ICL_RECORD_DIR"


@dataclass(frozen=True)
class Chapter:
    """A chapter file's stem, title and the experiment (key of :data:`icl.presets.REGISTRY`) it runs."""

    slug: str
    title: str
    experiment: str | None
    sizes: tuple[str, ...] = ()  # parameters that must be integers >= 1 (for chapters without an experiment config)


CHAPTERS: dict[str, Chapter] = {
    c.slug: c
    for c in (
        Chapter("01_setup_and_notation", "Setup and notation", None, sizes=("dim", "n_context")),
        Chapter("02_one_step_pgd", "One layer of linear attention is one step of preconditioned GD", "one_step_pgd"),
        Chapter("03_multi_step_pgd", "L layers of linear attention are L steps of preconditioned GD", "multi_step_pgd"),
        Chapter("04_trained_transformers_do_gd", "Trained transformers do gradient descent, and GD++", "von_oswald_gd"),
        Chapter("05_full_form_gd_plus_plus", "With the covariates trainable, L layers learn GD++", "full_form_gdpp"),
        Chapter("06_looped_transformers", "A looped layer learns multi-step GD with one preconditioner", "looped_gd"),
    )
}


def chapter_of(path: str | os.PathLike[str]) -> Chapter:
    """The chapter a file path names; raises ``ValueError`` for a missing file or an unknown chapter."""
    path = Path(path)
    if path.suffix != ".md" or path.stem not in CHAPTERS:
        raise ValueError(f"unknown chapter {str(path)!r}; choose one of {[f'book/{s}.md' for s in CHAPTERS]}")
    if not path.is_file():
        raise ValueError(f"chapter file {str(path)!r} does not exist")
    return CHAPTERS[path.stem]


def read_notebook(path: str | os.PathLike[str]) -> Any:
    """The chapter as an nbformat notebook (jupytext reads MyST text; papermill cannot)."""
    import jupytext

    return jupytext.read(str(path))


def parameters_of(notebook: Any) -> dict[str, Any]:
    """Names and default values of the cell tagged ``parameters`` (literals only, by design)."""
    for cell in notebook.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            values = {}
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    values[node.targets[0].id] = ast.literal_eval(node.value)
            return values
    raise ValueError("the chapter has no cell tagged 'parameters'")


def record(
    slug: str, *, config: Any, checks: ClaimChecks, arrays: dict[str, Any], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Build the chapter's record (config, every claim check, key arrays as plain lists) and write it
    to ``$ICL_RECORD_DIR/<slug>.json`` atomically when that variable is set. Returns the record."""
    content = {
        "chapter": slug,
        "config": as_plain(config),
        "passed": checks.passed,
        "claim_checks": checks.records(),
        "arrays": as_plain(arrays),
        **as_plain(extra or {}),
    }
    folder = os.environ.get(RECORD_DIR_VARIABLE)
    if folder:
        atomic_write_text(json.dumps(content, indent=1), Path(folder) / f"{slug}.json")
    return content
