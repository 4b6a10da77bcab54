"""A result store: results cached on disk, keyed by the resolved config and a hash of icl's source.

A cached result is served only if it was computed from the same configuration by the same library
code, so a rebuild after a prose edit costs seconds and a code change never serves a stale figure.
Every file is written to a temporary name and renamed into place (``os.replace`` is atomic), so a
killed run leaves either nothing or a complete file, never half of one.

Location: ``$ICL_STORE`` if set, else ``.icl-store/`` beside ``pyproject.toml`` in a source checkout,
else ``~/.cache/icl-book``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def atomic_write_bytes(data: bytes, path: Path) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(text: str, path: Path) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(text.encode("utf-8"), path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@lru_cache(maxsize=1)
def source_hash() -> str:
    """SHA-256 over the path and bytes of every ``.py`` file of the installed ``icl`` package."""
    return tree_hash(Path(__file__).resolve().parent)


def tree_hash(package: Path) -> str:
    """SHA-256 over the relative path and bytes of every ``.py`` file under ``package``."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def default_root() -> Path:
    """The store's folder (see the module docstring)."""
    if os.environ.get("ICL_STORE"):
        return Path(os.environ["ICL_STORE"])
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").exists():
        return checkout / ".icl-store"
    return Path.home() / ".cache" / "icl-book"


def config_key(name: str, config: Any) -> str:
    """A hex key for experiment ``name`` run with the frozen dataclass ``config`` by this source."""
    fields = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    payload = json.dumps({"name": name, "config": fields, "source": source_hash()}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def checkpoint_path(key: str, part: str = "", root: Path | None = None) -> Path:
    """Where the training checkpoint of run ``key`` (and sub-run ``part``) lives while it trains."""
    suffix = f"-{part}" if part else ""
    return (root or default_root()) / "checkpoints" / f"{key}{suffix}.pt"


def cached(
    name: str,
    config: Any,
    compute: Callable[[], dict[str, Any]],
    *,
    root: Path | None = None,
) -> dict[str, Any]:
    """Return the stored result of ``compute()`` for (``name``, ``config``, source), computing it if absent.

    ``compute`` returns a dict of tensors, numbers, strings and lists/dicts of them (what
    ``torch.load(weights_only=True)`` can read back). ``root=None`` uses :func:`default_root`.
    """
    path = (root or default_root()) / "results" / f"{name}-{config_key(name, config)}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    result = compute()
    atomic_torch_save(result, path)
    return result
