"""The book's chapters, their parameters, and the record each chapter leaves behind.

A chapter ends by calling :func:`record`, which gathers its claim checks, resolved config, key arrays
and run statistics (seconds since ``icl`` was imported, peak memory, package versions), and writes them
as JSON into ``$ICL_RECORD_DIR`` when that is set: ``python -m icl run`` sets it to a scratch folder, the
book build (``make book``) to ``_build/records/``, where the intro and status pages read them. The
chapter shows the same record as a download link (:func:`download_link`), and its main figure as a
thumbnail for the intro page (:func:`save_thumbnail`).
"""

from __future__ import annotations

import ast
import base64
import html
import io
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icl import IMPORTED_AT, __version__
from icl.checks import ClaimChecks
from icl.experiments.common import as_plain
from icl.presets import resolve_preset
from icl.store import atomic_write_bytes, atomic_write_text

RECORD_DIR_VARIABLE = "ICL_RECORD_DIR"


@dataclass(frozen=True)
class Chapter:
    """A chapter: its file's stem, title, the experiment (key of :data:`icl.presets.REGISTRY`) it runs,
    the paper result it reproduces and its claim in one line (the intro page's table shows both)."""

    slug: str
    title: str
    experiment: str | None
    paper: str
    claim: str
    sizes: tuple[str, ...] = ()  # parameters that must be integers >= 1 (for chapters without an experiment config)


CHAPTERS: dict[str, Chapter] = {
    c.slug: c
    for c in (
        Chapter(
            "01_setup_and_notation",
            "Setup and notation",
            None,
            "all",
            "the token layout, the layer, and one sparse layer as one GD step, executed",
            sizes=("dim", "n_context"),
        ),
        Chapter(
            "02_one_step_pgd",
            "One layer of linear attention is one step of preconditioned GD",
            "one_step_pgd",
            "Ahn et al. Thm 1; Zhang, Frei, Bartlett Thm 4.1",
            "a trained layer is one step of GD preconditioned by Γ*, not Σ⁻¹",
        ),
        Chapter(
            "03_multi_step_pgd",
            "L layers of linear attention are L steps of preconditioned GD",
            "multi_step_pgd",
            "Ahn et al. Thm 3, Figs 1–2",
            "L sparse layers are L steps preconditioned by a_ℓ Σ⁻¹, with exactly computable a_ℓ",
        ),
        Chapter(
            "04_trained_transformers_do_gd",
            "Trained transformers do gradient descent, and GD++",
            "von_oswald_gd",
            "von Oswald et al. Prop. 1, Figs 2, 3a",
            "a hand-built layer is GD; a trained one finds it; two tied layers learn GD++",
        ),
        Chapter(
            "05_full_form_gd_plus_plus",
            "With the covariates trainable, L layers learn GD++",
            "full_form_gdpp",
            "Ahn et al. Thm 4, Figs 3–7",
            "with covariates trainable, L layers learn GD++ (a_ℓ Σ⁻¹, b_ℓ I), far below preconditioned GD at every "
            "context length",
        ),
        Chapter(
            "06_looped_transformers",
            "A looped layer learns multi-step GD with one preconditioner",
            "looped_gd",
            "Gatmiry et al. 2024",
            "one layer looped L times learns L GD steps with one preconditioner a*Σ⁻¹ (a* < 1, exact); test-time "
            "looping helps the median, not the mean at small n/d",
        ),
        Chapter(
            "07_gradient_flow",
            "Gradient flow from a small balanced start reaches the global minimum",
            "gradient_flow",
            "Zhang, Frei, Bartlett Thm 4.1",
            "exact gradient flow reaches uU = Γ⁻¹ linearly with u² − ‖U‖²_F conserved; SGD finds the product, "
            "not the factors",
        ),
        Chapter(
            "08_prompt_length",
            "Prediction error against prompt length",
            "prompt_length",
            "Zhang, Frei, Bartlett Thm 4.2, Cor. 4.3",
            "a trained layer's error on prompts of length M is exactly a(N)/M + b(N)/N²: longer test prompts never "
            "remove what a short training length N left",
        ),
        Chapter(
            "09_distribution_shift",
            "Distribution shift: what a trained linear transformer tolerates, and what breaks it",
            "distribution_shift",
            "Zhang, Frei, Bartlett Sec. 4.2–4.3, Thm 4.5",
            "noisy labels and orthogonal queries are tolerated, scaled covariates are not (least squares is); random "
            "covariances lead to a different limit",
        ),
        Chapter(
            "10_softmax_covariate_shift",
            "A softmax transformer under covariate shift",
            "softmax_shift",
            "Zhang, Frei, Bartlett Fig. 1 (Garg et al.'s setup)",
            "a small GPT-2 learns in-context regression, fails on scaled-up covariances, and errs more beyond its "
            "training length",
        ),
    )
}


def chapter_file(name: str | os.PathLike[str]) -> Path:
    """The file of a chapter named by its path (``book/02_one_step_pgd.md``) or by its bare name
    (``02_one_step_pgd``, then the ``book/`` folder beside this package in a source checkout)."""
    path = Path(name)
    if path.suffix == "" and path.parent == Path(".") and path.name in CHAPTERS:
        return Path(__file__).resolve().parents[1] / "book" / f"{path.name}.md"
    return path


def chapter_of(path: str | os.PathLike[str]) -> Chapter:
    """The chapter a file path (or a bare chapter name, :func:`chapter_file`) names; raises ``ValueError`` for a missing
    file or an unknown chapter."""
    path = chapter_file(path)
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


def versions() -> dict[str, str]:
    """Python, icl, torch, numpy and matplotlib versions, and the platform."""
    import matplotlib
    import numpy
    import torch

    return {
        "python": platform.python_version(),
        "icl": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "matplotlib": matplotlib.__version__,
        "platform": platform.platform(),
    }


def peak_memory_mib() -> float | None:
    """This process's peak resident memory in MiB (``None`` where ``resource`` is unavailable)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def gpu_usage() -> dict[str, Any] | None:
    """The CUDA GPU this process used, if any: its name and the peak memory PyTorch allocated on it (MiB).
    ``None`` when the process never touched a GPU (its resident memory is then the whole story)."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    device = torch.cuda.current_device()
    return {
        "name": torch.cuda.get_device_name(device),
        "peak_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
    }


def record(
    slug: str,
    *,
    preset: str | None,
    config: Any,
    checks: ClaimChecks,
    arrays: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the chapter's record (preset, config, every claim check, key arrays as plain lists, run
    statistics) and write it to ``$ICL_RECORD_DIR/<slug>.json`` atomically when that variable is set.

    ``run`` holds the seconds since ``icl`` was first imported in this process (the chapter's work,
    without the kernel's start), its peak resident memory, the GPU it used (:func:`gpu_usage`) and the package
    versions. Returns the record.
    """
    content = {
        "chapter": slug,
        "preset": resolve_preset(preset),
        "config": as_plain(config),
        "passed": checks.passed,
        "claim_checks": checks.records(),
        "arrays": as_plain(arrays),
        "run": {
            "seconds": round(time.perf_counter() - IMPORTED_AT, 3),
            "peak_memory_mib": peak_memory_mib(),
            "gpu": gpu_usage(),
            "versions": versions(),
        },
        **as_plain(extra or {}),
    }
    folder = os.environ.get(RECORD_DIR_VARIABLE)
    if folder:
        atomic_write_text(json.dumps(content, indent=1), Path(folder) / f"{slug}.json")
    return content


def save_thumbnail(slug: str, figure: Any, *, width_inches: float = 3.2, dpi: int = 160) -> None:
    """Save a small copy of ``figure`` (a matplotlib Figure) as ``$ICL_RECORD_DIR/<slug>.png`` for the intro
    page's table; does nothing when that variable is unset. The figure itself is left as it was."""
    folder = os.environ.get(RECORD_DIR_VARIABLE)
    if not folder:
        return
    buffer = io.BytesIO()
    width, _ = figure.get_size_inches()
    figure.savefig(buffer, format="png", dpi=dpi * width_inches / width, bbox_inches="tight")
    atomic_write_bytes(buffer.getvalue(), Path(folder) / f"{slug}.png")


class DownloadLink:
    """A notebook output: a link that downloads a JSON document embedded in the page itself (a data URI),
    so the numbers offered are exactly those of the executed page."""

    def __init__(self, content: dict[str, Any], filename: str, label: str) -> None:
        self.text = json.dumps(content, separators=(",", ":"))
        self.filename, self.label = filename, label

    def _repr_html_(self) -> str:
        data = base64.b64encode(self.text.encode()).decode()
        size = len(self.text) / 1024
        return (
            f'<p class="icl-download"><a download="{html.escape(self.filename)}" '
            f'href="data:application/json;base64,{data}">⬇ {html.escape(self.label)}</a> '
            f"({html.escape(self.filename)}, {size:.0f} KiB)</p>"
        )

    def __repr__(self) -> str:
        return f"{self.label}: {self.filename} ({len(self.text) / 1024:.0f} KiB of JSON)"


def download_link(content: dict[str, Any]) -> DownloadLink:
    """The chapter's record as a download link (see :class:`DownloadLink`)."""
    slug = content["chapter"]
    return DownloadLink(content, f"{slug}.json", "this chapter's numbers: claim checks, config and key arrays")
