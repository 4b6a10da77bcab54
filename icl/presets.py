"""Presets: ``quick`` (a 2-core CPU, minutes) and ``paper`` (the paper's own scale), for every experiment.

An experiment is a module of :mod:`icl.experiments`, named after its chapter, that declares beside its config:

- ``CONFIG``: the frozen config dataclass, whose defaults *are* the paper's values (the ``paper`` preset);
- ``QUICK``: what ``quick`` changes against the paper, field by field;
- ``WHY_QUICK``: for each of those fields, why (the chapter prints it under its configuration).

``get(experiment, preset, **overrides)`` returns the validated config. The preset defaults to ``$ICL_PRESET`` and
then to ``"quick"``, so that ``ICL_PRESET=paper make book`` builds the whole site at paper scale. Overrides of
``None`` mean "from the preset" (a chapter's parameters cell passes ``n_context=None`` unless the reader sets it).
This module finds experiments by name; it imports none of them itself.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from icl.config import did_you_mean
from icl.device import resolve_device
from icl.tables import Table, table

PRESET_NAMES: tuple[str, ...] = ("quick", "paper")


def resolve(preset: str | None) -> str:
    """``None`` -> ``$ICL_PRESET`` if set, else ``"quick"``; anything else must be a known preset name."""
    source = ""
    if preset is None:
        preset, source = os.environ.get("ICL_PRESET") or "quick", " (from $ICL_PRESET)"
    if preset not in PRESET_NAMES:
        hint = did_you_mean(preset, PRESET_NAMES)
        raise ValueError(f"unknown preset {preset!r}{source}; choose one of {list(PRESET_NAMES)}{hint}")
    return preset


def experiments() -> tuple[str, ...]:
    """The experiments: every module of :mod:`icl.experiments` (they are named after their chapters)."""
    import icl.experiments

    return tuple(sorted(m.name for m in pkgutil.iter_modules(icl.experiments.__path__) if not m.name.startswith("_")))


def experiment(name: str) -> ModuleType:
    """The experiment module ``name``; an unknown name fails with the list of known ones."""
    if name not in experiments():
        hint = did_you_mean(name, experiments())
        raise ValueError(f"unknown experiment {name!r}; choose one of {list(experiments())}{hint}")
    return importlib.import_module(f"icl.experiments.{name}")


def parameter_names(name: str) -> tuple[str, ...]:
    """The config fields of experiment ``name``: its own first, then the training fields every experiment shares."""
    config = experiment(name).CONFIG
    fields = [f.name for f in dataclasses.fields(config)]
    own = [f for f in vars(config).get("__annotations__", {}) if f in fields]  # in the order the config declares
    return (*own, *(f for f in fields if f not in own))


def get(name: str, preset: str | None = None, **overrides: Any) -> Any:
    """The validated, frozen config of experiment ``name`` at ``preset`` with ``overrides`` applied.

    The device is resolved here (``"auto"`` becomes ``"cpu"`` or ``"cuda:0"``), so a config names
    where it runs and a request for a missing GPU fails before any work.
    """
    module = experiment(name)
    preset = resolve(preset)
    allowed = parameter_names(name)
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        hint = did_you_mean(unknown[0], allowed)
        raise ValueError(f"unknown parameter {unknown[0]!r} for {name}; choose from {sorted(allowed)}{hint}")
    values: dict[str, Any] = dict(module.QUICK) if preset == "quick" else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["device"] = str(resolve_device(values.get("device", "auto")))
    return module.CONFIG(**values)


@dataclass(frozen=True)
class ChangesTable:
    """Parameter | this run | paper | why ``quick`` differs; renders as a table in a notebook."""

    rows: tuple[tuple[str, str, str, str], ...]

    def table(self) -> Table:
        return table(("parameter", "this run", "paper", "why quick differs"), self.rows)

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()

    def __repr__(self) -> str:
        return repr(self.table())


def changes(config: Any) -> ChangesTable:
    """Every parameter of ``config`` beside the paper's value (the config's default), with the reason ``quick``
    differs (its experiment's ``WHY_QUICK``)."""
    module = importlib.import_module(type(config).__module__)
    paper = type(config)(device="cpu")
    rows = []
    for name in parameter_names(module.__name__.rpartition(".")[2]):
        if name in ("device", "seed"):
            continue
        this, reference = getattr(config, name), getattr(paper, name)
        why = module.WHY_QUICK.get(name, "") if this != reference else ""
        rows.append((name, show(this), show(reference), why))
    return ChangesTable(tuple(rows))


def show(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(show(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
