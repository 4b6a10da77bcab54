"""What a chapter leaves behind: one record of its run, written once.

A chapter ends by calling :func:`write`, which gathers its claim checks, resolved config, key arrays and run
statistics (seconds since ``icl`` was imported, peak memory, the GPU it used, package versions) and writes them as
``<slug>.json`` into ``$ICL_RECORD_DIR`` when that is set: ``python -m icl run`` sets it to its ``--out`` folder,
the book build (``make book``) to ``_build/records/``, where the intro and status pages read them. The chapter shows
the same record as a download link (:func:`download_link`), and its main figure as a thumbnail for the intro page
(:func:`save_thumbnail`).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from icl import IMPORTED_AT, __version__
from icl.checks import ClaimChecks
from icl.presets import PRESET_NAMES
from icl.store import atomic_write_bytes, atomic_write_text

RECORD_DIR_VARIABLE = "ICL_RECORD_DIR"
SCHEMA = 2  # 2: one elapsed time (run.seconds) and one copy of the versions (run.versions)


def as_plain(value: Any) -> Any:
    """Tensors to nested lists, tuples to lists, dataclasses to dicts, recursively (for JSON)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return as_plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_plain(v) for v in value]
    return value


def versions() -> dict[str, str]:
    """Python, icl, torch, numpy and matplotlib versions, and the platform."""
    import matplotlib
    import numpy

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
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    device = torch.cuda.current_device()
    return {
        "name": torch.cuda.get_device_name(device),
        "peak_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
    }


def write(
    slug: str,
    *,
    preset: str,
    config: Any,
    checks: ClaimChecks,
    arrays: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the chapter's record (its resolved preset, config, every claim check, key arrays as plain lists, run
    statistics) and write it to ``$ICL_RECORD_DIR/<slug>.json`` atomically when that variable is set.

    ``run`` holds the seconds since ``icl`` was first imported in this process (the chapter's work,
    without the kernel's start), its peak resident memory, the GPU it used (:func:`gpu_usage`) and the package
    versions. Returns the record.
    """
    if preset not in PRESET_NAMES:
        raise ValueError(
            f"preset must be one of {list(PRESET_NAMES)} (resolved by icl.presets.resolve), got {preset!r}"
        )
    content = {
        "schema": SCHEMA,
        "chapter": slug,
        "preset": preset,
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
