"""The result store: compute once, key by config and source, and write atomically."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from icl import store


@dataclasses.dataclass(frozen=True)
class Config:
    dim: int = 3
    sweep: tuple[int, ...] = (5, 10)


class Counter:
    def __init__(self, value: float = 1.0) -> None:
        self.calls, self.value = 0, value

    def __call__(self) -> dict:
        self.calls += 1
        return {"weights": torch.full((2, 2), self.value), "loss": 0.5, "names": ["a", "b"]}


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("this object cannot be saved")


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_cached_computes_once_then_loads(tmp_path: Path) -> None:
    compute = Counter()
    first = store.cached("experiment", Config(), compute, root=tmp_path)
    second = store.cached("experiment", Config(), compute, root=tmp_path)
    assert compute.calls == 1
    assert torch.equal(first["weights"], second["weights"]) and second["loss"] == 0.5 and second["names"] == ["a", "b"]
    files = sorted((tmp_path / "results").iterdir())
    assert [f.suffix for f in files] == [".json", ".pt"] and files[0].stem == files[1].stem
    assert files[1].name.startswith("experiment-") and leftovers(tmp_path) == []
    about = json.loads(files[0].read_text())
    assert about["name"] == "experiment" and about["config"] == {"dim": 3, "sweep": [5, 10]}


def test_default_root_follows_icl_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICL_STORE", str(tmp_path / "elsewhere"))
    assert store.default_root() == tmp_path / "elsewhere"
    compute = Counter()
    store.cached("experiment", Config(), compute)
    assert len(list((tmp_path / "elsewhere" / "results").glob("*.pt"))) == 1
    assert store.checkpoint_path("abc", "n20") == tmp_path / "elsewhere" / "checkpoints" / "abc-n20.pt"
    assert store.checkpoint_path("abc", root=tmp_path) == tmp_path / "checkpoints" / "abc.pt"


def test_default_root_without_icl_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ICL_STORE")
    root = store.default_root()
    checkout = Path(store.__file__).resolve().parents[1]
    in_checkout = (checkout / "pyproject.toml").exists()
    expected = checkout / ".icl-store" if in_checkout else Path.home() / ".cache" / "icl-book"
    assert root == expected


def test_a_different_config_or_name_is_another_entry(tmp_path: Path) -> None:
    compute = Counter()
    store.cached("experiment", Config(), compute, root=tmp_path)
    store.cached("experiment", Config(dim=4), compute, root=tmp_path)
    store.cached("experiment", Config(sweep=(5, 20)), compute, root=tmp_path)
    store.cached("other", Config(), compute, root=tmp_path)
    assert compute.calls == 4
    keys = {
        store.config_key("experiment", Config()),
        store.config_key("experiment", Config(dim=4)),
        store.config_key("other", Config()),
    }
    assert len(keys) == 3 and all(len(k) == 24 for k in keys)
    assert store.config_key("experiment", Config()) == store.config_key("experiment", Config())


def test_a_different_source_hash_is_another_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compute = Counter()
    store.cached("experiment", Config(), compute, root=tmp_path)
    before = store.config_key("experiment", Config())
    monkeypatch.setattr(store, "source_hash", lambda modules=None: "0" * 64)
    assert store.config_key("experiment", Config()) != before
    store.cached("experiment", Config(), compute, root=tmp_path)
    assert compute.calls == 2


def copy_of_package(tmp_path: Path) -> Path:
    copy = tmp_path / "icl"
    shutil.copytree(store.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_source_hash_covers_the_package(tmp_path: Path) -> None:
    """The whole-package hash is that of the package's own files; editing, adding or renaming any module changes it."""
    copy = copy_of_package(tmp_path)
    assert store.tree_hash(copy) == store.source_hash() == store.source_hash(package=copy)
    edited = copy / "models" / "linear.py"
    edited.write_text(edited.read_text() + "# an edit\n")
    after_edit = store.tree_hash(copy)
    assert after_edit != store.source_hash()
    (copy / "extra.py").write_text("")
    with_extra = store.tree_hash(copy)
    (copy / "extra.py").rename(copy / "extra2.py")
    assert len({after_edit, with_extra, store.tree_hash(copy)}) == 3


def test_module_closure_follows_imports(tmp_path: Path) -> None:
    package = tmp_path / "icl"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("import os\nfrom icl import b\nfrom icl.sub.c import helper\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from icl import d\n")
    (package / "d.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import e\n")
    (package / "sub" / "c.py").write_text("from ..b import something\n\ndef helper(): pass\n")
    (package / "sub" / "e.py").write_text("")
    (package / "unused.py").write_text("")
    expected = ("icl", "icl.a", "icl.b", "icl.d", "icl.sub", "icl.sub.c", "icl.sub.e")
    assert store.module_closure(["icl.a"], package) == expected
    assert store.module_closure(["os", "tests.x", ""], package) == ()
    assert store.key_modules(["os"]) is None  # nothing of icl: keyed by the whole package


def test_a_training_key_ignores_plotting_and_follows_the_trainer(tmp_path: Path) -> None:
    """The modules a trained model of chapter 02 is keyed by: its experiment, the model, the trainer and what they
    import, not plotting, the site or the command line; editing a copy shows which edits change the key."""
    roots = ["icl.train", "icl.experiments.one_step_pgd", "icl.models.linear"]
    modules = store.module_closure(roots)
    assert {"icl.train", "icl.tasks", "icl.models.linear", "icl.experiments.one_step_pgd.training"} <= set(modules)
    assert not {"icl.plotting", "icl.site", "icl.cli", "icl.record", "icl.chapters"} & set(modules)
    copy = copy_of_package(tmp_path)
    before = store.source_hash(modules, copy)
    for name in ("plotting.py", "site.py", "cli.py"):
        (copy / name).write_text((copy / name).read_text() + "# an edit\n")
    assert store.source_hash(modules, copy) == before == store.source_hash(modules)
    (copy / "train.py").write_text((copy / "train.py").read_text() + "# an edit\n")
    assert store.source_hash(modules, copy) != before


def test_list_and_prune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store.cached("current", Config(), Counter(), root=tmp_path, roots=["icl.tasks"])
    store.cached("stale", Config(dim=4), Counter(), root=tmp_path, roots=["icl.rng"])
    (tmp_path / "results" / "undescribed-0.pt").write_bytes(b"from an older store")
    stale = next((tmp_path / "results").glob("stale-*.json"))
    about = json.loads(stale.read_text())
    stale.write_text(json.dumps({**about, "source": "0" * 64}))  # as if icl/rng.py had been edited since
    listed = {entry.name: entry for entry in store.entries(tmp_path)}
    assert set(listed) == {"current", "stale", "?"} and listed["current"].current
    assert not listed["stale"].current and not listed["?"].current and listed["current"].bytes > 0
    assert {e.name for e in store.prune(tmp_path, dry_run=True)} == {"stale", "?"} and len(store.entries(tmp_path)) == 3
    assert {e.name for e in store.prune(tmp_path)} == {"stale", "?"}
    assert [e.name for e in store.entries(tmp_path)] == ["current"]
    assert sorted(p.suffix for p in (tmp_path / "results").iterdir()) == [".json", ".pt"]
    assert [e.name for e in store.prune(tmp_path, everything=True)] == ["current"]
    assert list((tmp_path / "results").iterdir()) == []


def test_a_failing_compute_leaves_nothing(tmp_path: Path) -> None:
    def fails() -> dict:
        raise RuntimeError("diverged")

    with pytest.raises(RuntimeError, match="diverged"):
        store.cached("experiment", Config(), fails, root=tmp_path)
    results = tmp_path / "results"
    assert not results.exists() or list(results.iterdir()) == []
    compute = Counter()
    store.cached("experiment", Config(), compute, root=tmp_path)  # nothing stale is served
    assert compute.calls == 1


def test_an_interrupted_save_leaves_no_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(obj, path) -> None:
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(store.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.cached("experiment", Config(), Counter(), root=tmp_path)
    assert list((tmp_path / "results").glob("*.pt")) == []


def test_atomic_write_text_writes_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "folder" / "out.json"
    store.atomic_write_text("first ✓", target)
    assert target.read_text(encoding="utf-8") == "first ✓"
    store.atomic_write_text("second", target)
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


@pytest.mark.parametrize("exists", [False, True])
def test_atomic_write_text_survives_an_exception_midway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exists: bool
) -> None:
    target = tmp_path / "out.json"
    if exists:
        target.write_text("old")

    def crash(fd: int) -> None:
        raise KeyboardInterrupt  # after the bytes were written to the temporary file, before the rename

    monkeypatch.setattr(store.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        store.atomic_write_text("new content", target)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out.json"] if exists else [])
    if exists:
        assert target.read_text() == "old"


def test_atomic_torch_save_round_trip_and_failure(tmp_path: Path) -> None:
    target = tmp_path / "state.pt"
    store.atomic_torch_save({"a": torch.arange(3)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.arange(3))
    with pytest.raises(RuntimeError, match="cannot be saved"):
        store.atomic_torch_save({"a": Unpicklable()}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.arange(3))


def test_temporary_names_are_hidden_and_distinct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real_replace = os.replace

    def spy(source, destination) -> None:
        seen.append(Path(source).name)
        real_replace(source, destination)

    monkeypatch.setattr(store.os, "replace", spy)
    store.atomic_write_text("x", tmp_path / "a.json")
    store.atomic_write_text("y", tmp_path / "a.json")
    assert len(seen) == 2 and seen[0] != seen[1]
    assert all(name.startswith(".a.json.") and name.endswith(".tmp") for name in seen)


TRAIN_ONCE = """
import sys, torch
from icl import tasks
from icl.models import LinearTransformer
from icl.train import TrainConfig, fit_cached

config = TrainConfig(steps=3)
model = LinearTransformer(2, n_models=1, generator=torch.Generator().manual_seed(0))
sample = lambda g: tasks.sample_regression(8, 4, torch.eye(2).expand(1, 2, 2), generator=g)
fit_cached("probe", config, "p", model, sample, config, generator=torch.Generator().manual_seed(1), progress=False)
"""


def test_an_edit_to_plotting_keeps_a_trained_model_and_an_edit_to_the_trainer_retrains(tmp_path: Path) -> None:
    """End to end, in a copy of the package: a model trained once is served after an edit to plotting (a file its
    training does not run through) and trained again after an edit to the trainer."""
    copy = copy_of_package(tmp_path / "source")
    environment = {**os.environ, "PYTHONPATH": str(copy.parent), "ICL_STORE": str(tmp_path / "store")}

    def stored_models() -> int:
        subprocess.run([sys.executable, "-c", TRAIN_ONCE], cwd=tmp_path, env=environment, check=True, timeout=120)
        return len(list((tmp_path / "store" / "results").glob("probe-p-*.pt")))

    assert stored_models() == 1
    (copy / "plotting.py").write_text((copy / "plotting.py").read_text() + "# a new colour\n")
    assert stored_models() == 1  # served, not retrained
    (copy / "train.py").write_text((copy / "train.py").read_text() + "# a new trainer\n")
    assert stored_models() == 2
