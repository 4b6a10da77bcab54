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
import inspect
import io
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from icl import IMPORTED_AT, __version__
from icl.checks import ClaimChecks
from icl.presets import PRESET_NAMES
from icl.store import PACKAGE, atomic_write_bytes, atomic_write_text, source_hash

RECORD_DIR_VARIABLE = "ICL_RECORD_DIR"
# 2: one elapsed time (run.seconds) and one copy of the versions (run.versions).
# 3: "schema_version" (was "schema"), "created", "source" (git commit, source hash), run.device, "array_axes".
SCHEMA_VERSION = 3
SHAPE_COMMENT = re.compile(r"^\(([^()]*)\)[:,]?\s*(.*)$")  # "(S, d, d) what it is"


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


def device_used() -> dict[str, Any]:
    """The device this process computed on: ``{"type": "cpu"}``, or for a CUDA GPU it touched its name, the CUDA
    version PyTorch was built with and the peak memory PyTorch allocated on it (MiB)."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {"type": "cpu"}
    device = torch.cuda.current_device()
    return {
        "type": "cuda",
        "gpu": torch.cuda.get_device_name(device),
        "cuda_version": torch.version.cuda,
        "gpu_peak_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
    }


def source() -> dict[str, Any]:
    """What computed the numbers: the git commit of the checkout icl is imported from ("unknown" outside one),
    whether icl/ differs from it (None when unknown), and the SHA-256 of icl's source (:func:`~icl.store.source_hash`).
    """

    def git(*arguments: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(PACKAGE.parent), *arguments], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--", str(PACKAGE)) if commit else None
    return {"commit": commit or "unknown", "modified": None if status is None else bool(status), "hash": source_hash()}


def field_descriptions(result_type: type) -> dict[str, str]:
    """The comment beside each field in the source of a result class (a NamedTuple whose fields read
    ``name: type  # (S, d, d) what it is``): field -> comment."""
    found = {}
    for line in inspect.getsource(result_type).splitlines():
        match = re.match(r"^\s+(\w+)\s*:[^#]*#\s*(.*?)\s*$", line)
        if match and match.group(1) in getattr(result_type, "_fields", ()):
            found[match.group(1)] = match.group(2)
    return found


def array_axes(arrays: Mapping[str, Any], descriptions: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """For every array: its shape, the names of its axes and what it is, the last two read from its description
    (``"(S, d, d) what it is"``; a scalar's has no shape). -> name -> {"shape", "axes", "about"}."""
    described = {}
    for name, value in arrays.items():
        match = SHAPE_COMMENT.match(descriptions.get(name, ""))
        axes = [axis.strip() for axis in match.group(1).split(",") if axis.strip()] if match else []
        about = match.group(2) if match else descriptions.get(name, "")
        described[name] = {"shape": _shape(value), "axes": axes, "about": about}
    return described


def _shape(value: Any) -> list[int] | None:
    """The shape of a tensor, number or nested list (None for a ragged list or a string list)."""
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    plain = as_plain(value)
    if isinstance(plain, (int, float, bool)) or plain is None:
        return []
    shape, level = [], plain
    while isinstance(level, list):
        shape.append(len(level))
        level = level[0] if level else None
    try:
        import numpy

        return shape if list(numpy.asarray(plain, dtype=float).shape) == shape else None
    except (ValueError, TypeError):
        return None


def write(
    slug: str,
    *,
    preset: str,
    config: Any,
    checks: ClaimChecks,
    arrays: dict[str, Any],
    described_by: type | Mapping[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the chapter's record (its resolved preset, config, every claim check, key arrays as plain lists with
    their shapes and axes, what computed them, run statistics) and write it to ``$ICL_RECORD_DIR/<slug>.json``
    atomically when that variable is set. Returns the record; :func:`validate` checks one.

    ``described_by`` gives each array's axes and meaning: the result class whose fields' comments say them
    (:func:`field_descriptions`), or a mapping name -> ``"(axes) what it is"``. ``run`` holds the seconds since
    ``icl`` was first imported in this process (the chapter's work, without the kernel's start), its peak resident
    memory, the device it computed on (:func:`device_used`) and the package versions.
    """
    if preset not in PRESET_NAMES:
        raise ValueError(
            f"preset must be one of {list(PRESET_NAMES)} (resolved by icl.presets.resolve), got {preset!r}"
        )
    if isinstance(described_by, type):
        described_by = field_descriptions(described_by)
    content = {
        "schema_version": SCHEMA_VERSION,
        "chapter": slug,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source(),
        "preset": preset,
        "config": as_plain(config),
        "passed": checks.passed,
        "claim_checks": checks.records(),
        "arrays": as_plain(arrays),
        "array_axes": array_axes(arrays, described_by or {}),
        "run": {
            "seconds": round(time.perf_counter() - IMPORTED_AT, 3),
            "peak_memory_mib": peak_memory_mib(),
            "device": device_used(),
            "versions": versions(),
        },
        **as_plain(extra or {}),
    }
    folder = os.environ.get(RECORD_DIR_VARIABLE)
    if folder:
        atomic_write_text(json.dumps(content, indent=1), Path(folder) / f"{slug}.json")
    return content


def validate(content: Mapping[str, Any]) -> None:
    """Raise ValueError naming every way ``content`` (a parsed record) departs from this schema version: a missing
    or mistyped field, a claim check without its numbers, an array whose recorded shape is not its values' or
    whose axes are not one name per dimension."""
    problems = []

    def need(where: str, value: Any, kind: type | tuple[type, ...]) -> None:
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            problems.append(f"{where} should be {getattr(kind, '__name__', kind)}, got {value!r:.60}")

    if content.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema_version should be {SCHEMA_VERSION}, got {content.get('schema_version')!r}")
    for key, kind in (("chapter", str), ("created", str), ("preset", str), ("passed", bool), ("config", dict)):
        need(key, content.get(key), kind)
    if content.get("preset") not in PRESET_NAMES:
        problems.append(f"preset should be one of {list(PRESET_NAMES)}, got {content.get('preset')!r}")
    try:
        datetime.fromisoformat(str(content.get("created")))
    except ValueError:
        problems.append(f"created should be an ISO 8601 time, got {content.get('created')!r}")
    provenance = content.get("source") or {}
    need("source.commit", provenance.get("commit"), str)
    if not re.fullmatch(r"[0-9a-f]{64}", str(provenance.get("hash"))):
        problems.append(f"source.hash should be a SHA-256 in hex, got {provenance.get('hash')!r}")
    checks = content.get("claim_checks")
    need("claim_checks", checks, list)
    for i, check in enumerate(checks or []):
        for key in ("name", "measured", "expected", "passed"):
            if key not in check:
                problems.append(f"claim_checks[{i}] has no {key!r}")
    arrays, axes = content.get("arrays") or {}, content.get("array_axes") or {}
    if set(arrays) != set(axes):
        problems.append(f"array_axes should describe exactly the arrays; differ in {sorted(set(arrays) ^ set(axes))}")
    for name in set(arrays) & set(axes):
        shape, names = axes[name].get("shape"), axes[name].get("axes")
        if shape != _shape(arrays[name]):
            problems.append(f"array_axes[{name!r}].shape is {shape}, its values have shape {_shape(arrays[name])}")
        elif shape and (not isinstance(names, list) or len(names) != len(shape)):
            problems.append(f"array_axes[{name!r}].axes should name each of its {len(shape)} axes, got {names}")
    run = content.get("run") or {}
    need("run.seconds", run.get("seconds"), (int, float))
    need("run.device.type", (run.get("device") or {}).get("type"), str)
    need("run.versions", run.get("versions"), dict)
    if problems:
        raise ValueError(
            f"record of {content.get('chapter')!r} departs from schema {SCHEMA_VERSION}: " + "; ".join(problems)
        )


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
