"""A result store: results cached on disk, keyed by the resolved config and a hash of the source that computes them.

A cached result is served only if it was computed from the same configuration by the same library code: the
source of every ``icl`` module its computation imports (a trained model: the experiment that samples its prompts,
the model, the trainer, and what they import), found by reading their imports. A rebuild after a prose edit, or
after an edit to plotting, the site or the command line, costs seconds; a change to the code that computes a result
never serves a stale one. Each stored file has a description beside it (``<file>.json``) from which
``python -m icl store list`` and ``prune`` tell the files this checkout can still serve from those it never will.
Every file is written to a temporary name and renamed into place (``os.replace`` is atomic), so a
killed run leaves either nothing or a complete file, never half of one.

Location: ``$ICL_STORE`` if set, else ``.icl-store/`` beside ``pyproject.toml`` in a source checkout,
else ``~/.cache/icl-book``.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

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


PACKAGE = Path(__file__).resolve().parent  # the icl package this store belongs to


def module_closure(roots: Iterable[str], package: Path = PACKAGE) -> tuple[str, ...]:
    """The ``icl`` modules that importing ``roots`` (dotted names) runs: the roots, every ``icl`` module they
    import, directly or through another, and the packages above each, found by reading the sources under
    ``package`` (imports under ``TYPE_CHECKING`` count too). Names outside ``icl`` are ignored. -> sorted names."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        path = _module_file(name, package)
        if name in seen or path is None:
            continue  # already read, outside icl, or a name imported from a module rather than a module
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        anchor = parts if path.name == "__init__.py" else parts[:-1]  # what a relative import starts from
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(anchor[: len(anchor) - node.level + 1]) if node.level else ""
                module = ".".join(filter(None, [base, node.module or ""]))
                todo += [module, *(f"{module}.{alias.name}" for alias in node.names)]
    return tuple(sorted(seen))


def _module_file(name: str, package: Path) -> Path | None:
    """The source file of ``icl`` module ``name`` under ``package``, or None when there is none."""
    parts = name.split(".")
    if parts[0] != "icl" or not all(part.isidentifier() for part in parts):
        return None
    folder = package.joinpath(*parts[1:])
    for candidate in (folder / "__init__.py", folder.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def source_hash(modules: tuple[str, ...] | None = None, package: Path = PACKAGE) -> str:
    """SHA-256 over the relative path and bytes of the source files of ``modules`` (names from
    :func:`module_closure`), or of every ``.py`` file of the package when ``modules`` is None. Computed once per
    process for the installed package (its source does not change under a running experiment)."""
    return _installed_hash(modules) if package == PACKAGE else _hash(modules, package)


@lru_cache(maxsize=64)
def _installed_hash(modules: tuple[str, ...] | None) -> str:
    return _hash(modules, PACKAGE)


def _hash(modules: tuple[str, ...] | None, package: Path) -> str:
    if modules is None:
        return tree_hash(package)
    files = [_module_file(name, package) for name in modules]
    return _files_hash(package, [path for path in files if path is not None])


def tree_hash(package: Path) -> str:
    """SHA-256 over the relative path and bytes of every ``.py`` file under ``package``."""
    return _files_hash(package, list(package.rglob("*.py")))


def _files_hash(package: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(files):
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


def key_modules(roots: Iterable[str]) -> tuple[str, ...] | None:
    """The modules a key hashes: the closure of ``roots`` (:func:`module_closure`), or None (the whole package)
    when ``roots`` names no ``icl`` module (a result computed outside icl, or from unknown code, is keyed by all)."""
    return module_closure(roots) or None


def config_key(name: str, config: Any, modules: tuple[str, ...] | None = None) -> str:
    """A hex key for experiment ``name`` run with the frozen dataclass ``config`` by the source of ``modules``
    (:func:`key_modules`; None: the whole package)."""
    payload = json.dumps(
        {"name": name, "config": _plain_config(config), "source": source_hash(modules)}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _plain_config(config: Any) -> Any:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config


def checkpoint_path(key: str, part: str = "", root: Path | None = None) -> Path:
    """Where the training checkpoint of run ``key`` (and sub-run ``part``) lives while it trains."""
    suffix = f"-{part}" if part else ""
    return (root or default_root()) / "checkpoints" / f"{key}{suffix}.pt"


def describe(path: Path, name: str, config: Any, modules: tuple[str, ...] | None) -> None:
    """Write the description of the stored file ``path`` (``<path>.json``: what it is, from which configuration
    and which source) that ``python -m icl store list`` and ``prune`` read."""
    entry = {
        "name": name,
        "config": _plain_config(config),
        "modules": list(modules) if modules is not None else None,
        "source": source_hash(modules),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_text(json.dumps(entry, indent=1, default=str), path.with_suffix(".json"))


def cached(
    name: str,
    config: Any,
    compute: Callable[[], dict[str, Any]],
    *,
    root: Path | None = None,
    roots: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Return the stored result of ``compute()`` for (``name``, ``config``, source), computing it if absent.

    ``compute`` returns a dict of tensors, numbers, strings and lists/dicts of them (what
    ``torch.load(weights_only=True)`` can read back). ``root=None`` uses :func:`default_root`. The source that
    keys the result is that of the ``icl`` modules importing ``roots`` runs (:func:`key_modules`; default: the module
    defining ``compute``), so that an edit elsewhere (plotting, the site, the command line) keeps it.
    """
    closure = key_modules(roots if roots is not None else [getattr(compute, "__module__", None) or ""])
    path = (root or default_root()) / "results" / f"{name}-{config_key(name, config, closure)}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    result = compute()
    describe(path, name, config, closure)  # first, so that a stored result always has its description
    atomic_torch_save(result, path)
    return result


class Entry(NamedTuple):
    """One file of the store: a result, or the checkpoint of a training still under way (or killed)."""

    path: Path
    kind: str  # "result" or "checkpoint"
    name: str  # the experiment and part, or "?" for a file without its description
    bytes: int
    created: str  # UTC, ISO 8601; "?" without a description
    current: bool  # False: the source that keyed it has changed since, so this checkout can never serve it


def entries(root: Path | None = None) -> list[Entry]:
    """Every stored result and checkpoint under ``root`` (default :func:`default_root`), oldest first."""
    found = []
    for kind, folder in (("result", "results"), ("checkpoint", "checkpoints")):
        for path in sorted(((root or default_root()) / folder).glob("*.pt")):
            try:
                about = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
                modules = tuple(about["modules"]) if about["modules"] is not None else None
                current = about["source"] == source_hash(modules)
                name, created = about["name"], about["created"]
            except (OSError, ValueError, KeyError, TypeError):
                name, created, current = "?", "?", False  # written before descriptions, or damaged: not servable
            found.append(Entry(path, kind, name, path.stat().st_size, created, current))
    return sorted(found, key=lambda entry: entry.created)


def prune(root: Path | None = None, *, everything: bool = False, dry_run: bool = False) -> list[Entry]:
    """Delete the stored files this checkout can no longer serve (:attr:`Entry.current` false), or with
    ``everything`` all of them, each with its description; ``dry_run`` deletes nothing. -> the entries deleted."""
    doomed = [entry for entry in entries(root) if everything or not entry.current]
    if not dry_run:
        for entry in doomed:
            entry.path.unlink(missing_ok=True)
            entry.path.with_suffix(".json").unlink(missing_ok=True)
    return doomed
