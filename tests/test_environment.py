"""Binder's environment.yml names the same packages at the same versions as pyproject.toml.

pyproject.toml is the one list (its dependencies and the [book] extra); environment.yml repeats it
under conda-forge names for Binder, where pyproject.toml is not installed with its dependencies.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CONDA_NAME = {"torch": "pytorch-cpu"}  # PyPI name -> conda-forge name, where they differ
CONDA_ONLY = {"python", "pip"}  # environment.yml entries with no counterpart in the dependency lists


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def pyproject_pins(text: str) -> dict[str, str]:
    """``{conda name: version}`` for the dependencies and the [book] extra, each pinned with ``==``."""
    project = tomllib.loads(text)["project"]
    pins = {}
    for requirement in project["dependencies"] + project["optional-dependencies"]["book"]:
        name, sep, version = requirement.partition("==")
        if not sep:
            raise ValueError(f"pyproject.toml: {requirement!r} is not pinned with ==")
        pins[CONDA_NAME.get(_normalise(name), _normalise(name))] = version.strip()
    return pins


def environment_pins(text: str) -> dict[str, str]:
    """``{name: version}`` for the top-level entries of ``dependencies:`` (``""`` when unpinned)."""
    pins, in_dependencies = {}, False
    for line in text.splitlines():
        line = line.split("#", 1)[0].rstrip()
        if not line:
            continue
        if not line[0].isspace():  # a top-level key
            in_dependencies = line == "dependencies:"
            continue
        entry = re.fullmatch(r"\s*-\s*([A-Za-z0-9_.-]+)\s*(?:=+\s*(\S+))?", line)
        if in_dependencies and entry:
            pins[_normalise(entry[1])] = entry[2] or ""
    return pins


def differences(pyproject_text: str, environment_text: str) -> list[str]:
    """Every package missing from one file or pinned to another version; empty when they agree."""
    wanted = pyproject_pins(pyproject_text)
    found = {k: v for k, v in environment_pins(environment_text).items() if k not in CONDA_ONLY}
    problems = [
        f"{name}: pyproject.toml {wanted[name]}, environment.yml {found[name] or 'unpinned'}"
        for name in sorted(wanted.keys() & found.keys())
        if wanted[name] != found[name]
    ]
    problems += [f"{name}: missing from environment.yml" for name in sorted(wanted.keys() - found.keys())]
    problems += [f"{name}: not in pyproject.toml" for name in sorted(found.keys() - wanted.keys())]
    return problems


def test_environment_yml_matches_pyproject() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    environment = (ROOT / "environment.yml").read_text()
    assert differences(pyproject, environment) == []
    python = environment_pins(environment)["python"]
    assert re.search(rf">=\s*{re.escape(python)}\b", tomllib.loads(pyproject)["project"]["requires-python"])


def test_differences_reports_each_kind_of_mismatch() -> None:
    pyproject = """
[project]
dependencies = ["torch==2.13.0", "numpy==2.4.6", "tqdm==4.70.1"]
[project.optional-dependencies]
book = ["jupyter_book==1.0.4.post1"]
"""
    environment = """
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pytorch-cpu=2.12.0   # another version
  - numpy==2.4.6
  - Jupyter-Book=1.0.4.post1
  - seaborn=0.13.2
  - pip
"""
    assert differences(pyproject, environment) == [
        "pytorch-cpu: pyproject.toml 2.13.0, environment.yml 2.12.0",
        "tqdm: missing from environment.yml",
        "seaborn: not in pyproject.toml",
    ]
    agreeing = environment.replace("2.12.0", "2.13.0").replace("seaborn", "tqdm").replace("0.13.2", "4.70.1")
    assert differences(pyproject, agreeing) == []


def constraints_pins(text: str) -> dict[str, str]:
    """``{name: version}`` of a pip constraints file; every line that is not a comment must be ``name==version``."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        entry = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+!-]+)", line)
        if entry is None:
            raise ValueError(f"constraints.txt: {line!r} is not name==version")
        pins[_normalise(entry[1])] = entry[2]
    return pins


def test_the_lock_pins_what_pyproject_pins() -> None:
    """constraints.txt, which `make` installs with, holds every dependency of pyproject.toml (all extras) at the
    version pyproject pins, and nothing unpinned; environment.yml agrees with pyproject (above), so with it too."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    locked = constraints_pins((ROOT / "constraints.txt").read_text())
    wanted = {_normalise(r.partition("==")[0]): r.partition("==")[2].split(";")[0].strip() for r in requirements}
    assert {name: locked.get(name) for name in wanted} == wanted
    assert "icl" not in locked  # the project itself is installed from the checkout
    with pytest.raises(ValueError, match="is not name==version"):
        constraints_pins("numpy>=2\n")
