"""Presets: quick and paper configs, $ICL_PRESET, overrides, and validation that names the parameter."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch

from icl import chapters, presets, store
from icl.config import ExperimentConfig
from icl.experiments import one_step_pgd
from icl.experiments.one_step_pgd import OneStepPGDConfig

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here")


@pytest.fixture(autouse=True)
def no_preset_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Makefile exports ICL_PRESET; these tests set it themselves."""
    monkeypatch.delenv("ICL_PRESET", raising=False)


def test_paper_preset_is_the_papers_setup() -> None:
    config = presets.get("one_step_pgd", "paper")
    assert isinstance(config, OneStepPGDConfig)
    assert (config.dim, config.n_context, config.condition_number) == (5, 20, 16.0)
    assert (config.train_steps, config.batch_size, config.n_seeds, config.n_test) == (20_000, 8192, 5, 400_000)
    assert config.device == ("cuda:0" if torch.cuda.is_available() else "cpu")


def test_quick_preset_changes_only_what_it_says() -> None:
    quick, paper = presets.get("one_step_pgd", "quick"), presets.get("one_step_pgd", "paper")
    changed = {f.name for f in dataclasses.fields(quick) if getattr(quick, f.name) != getattr(paper, f.name)}
    assert changed == set(one_step_pgd.QUICK) == set(one_step_pgd.WHY_QUICK)
    assert quick.train_steps < paper.train_steps and quick.n_test <= paper.n_test


def test_preset_none_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert presets.resolve(None) == "quick"
    assert presets.get("one_step_pgd").train_steps == presets.get("one_step_pgd", "quick").train_steps
    monkeypatch.setenv("ICL_PRESET", "paper")
    assert presets.resolve(None) == "paper"
    assert presets.get("one_step_pgd", None) == presets.get("one_step_pgd", "paper")
    quick_steps = one_step_pgd.QUICK["train_steps"]
    assert quick_steps != 20_000
    assert presets.get("one_step_pgd", "quick").train_steps == quick_steps  # an explicit preset wins
    monkeypatch.setenv("ICL_PRESET", "")
    assert presets.resolve(None) == "quick"
    monkeypatch.setenv("ICL_PRESET", "huge")
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        presets.get("one_step_pgd")


def test_overrides_apply_and_none_means_from_the_preset() -> None:
    config = presets.get("one_step_pgd", "quick", n_context=40, dim=None, seed=3, n_context_sweep=[5, 10])
    assert config.n_context == 40 and config.dim == 5 and config.seed == 3
    assert config.n_context_sweep == (5, 10)  # a list becomes a tuple


def test_configs_are_frozen_and_hashable() -> None:
    config = presets.get("one_step_pgd", "quick")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dim = 3  # type: ignore[misc]
    assert hash(config) == hash(presets.get("one_step_pgd", "quick"))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: presets.get("one_step_pgd", "huge"), r"unknown preset 'huge'; choose one of \['quick', 'paper'\]"),
        (
            lambda: presets.get("nope", "quick"),
            r"unknown experiment 'nope'; choose one of \['adam_beats_sgd', .*'trained_transformers_do_gd'\]",
        ),
        (lambda: presets.get("one_step_pgd", "quick", n_ctx=5), r"unknown parameter 'n_ctx' for one_step_pgd"),
        (lambda: presets.get("one_step_pgd", "quick", n_ctx=None), r"unknown parameter 'n_ctx'"),
        (lambda: presets.parameter_names("nope"), "unknown experiment 'nope'"),
    ],
)
def test_unknown_names(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    "name, value",
    [
        ("dim", -3),
        ("dim", 0),
        ("dim", 2.5),
        ("dim", "abc"),
        ("dim", True),
        ("n_context", -3),
        ("condition_number", 0.5),
        ("condition_number", math.inf),
        ("n_context_sweep", ()),
        ("n_context_sweep", (5, 0)),
        ("n_context_sweep", "5"),
        ("learning_rate", float("nan")),
        ("learning_rate", 0.0),
        ("train_steps", 0),
        ("batch_size", 1.5),
        ("n_seeds", 0),
        ("n_test", 1),
        ("init_std", 0.0),
        ("init_scale", -1.0),
        ("initialisation", "zeros"),
        ("random_start_seeds", 0),
        ("random_start_condition_number", 0.5),
        ("seed", -1),
        ("seed", 1.5),
        ("device", "gpu"),
    ],
)
def test_bad_values_name_the_parameter(name: str, value) -> None:
    with pytest.raises(ValueError, match=name):
        presets.get("one_step_pgd", "quick", **{name: value})


@no_gpu
def test_cuda_without_a_gpu_fails_before_any_work() -> None:
    with pytest.raises(ValueError, match="device 'cuda' was requested but no CUDA GPU"):
        presets.get("one_step_pgd", "quick", device="cuda")


def test_device_is_resolved() -> None:
    assert presets.get("one_step_pgd", "quick", device="cpu").device == "cpu"
    assert presets.get("one_step_pgd", "quick", device="auto").device in ("cpu", "cuda:0")


def test_changes_lists_what_quick_changes_and_why() -> None:
    table = presets.changes(presets.get("one_step_pgd", "quick", n_context=40))
    rows = {row[0]: row for row in table.rows}
    assert "device" not in rows and "seed" not in rows
    assert set(rows) == set(presets.parameter_names("one_step_pgd")) - {"device", "seed"}
    quick = one_step_pgd.QUICK
    why = one_step_pgd.WHY_QUICK
    assert rows["train_steps"][1:] == (f"{quick['train_steps']:,}", "20,000", why["train_steps"])
    assert rows["condition_number"][1:] == (f"{quick['condition_number']:g}", "16", why["condition_number"])
    assert rows["n_context"][1:3] == ("40", "20")  # an override shows, though quick gives no reason for it
    assert rows["n_context_sweep"][1] == "5, 10, 20, 40, 80"
    assert rows["dim"] == ("dim", "5", "5", "")
    differing = {name for name, row in rows.items() if row[1] != row[2]}
    assert differing == set(quick) | {"n_context"}
    assert all(rows[name][3] == why[name] for name in quick)
    html = table._repr_html_()
    assert html.startswith('<table class="icl-table"') and html.count("<tr>") == len(rows) + 1
    assert re.search(rf"^train_steps +{quick['train_steps']:,} +20,000 +", repr(table), re.M)


def test_changes_of_the_paper_preset_gives_no_reasons() -> None:
    table = presets.changes(presets.get("one_step_pgd", "paper"))
    assert all(row[1] == row[2] and row[3] == "" for row in table.rows)


def test_equal_configs_share_a_store_key() -> None:
    integer = presets.get("one_step_pgd", "quick", condition_number=4)
    real = presets.get("one_step_pgd", "quick", condition_number=4.0)
    assert integer == real
    assert store.config_key("one_step_pgd", integer) == store.config_key("one_step_pgd", real)


def test_every_experiment_declares_its_presets_beside_its_config() -> None:
    """The paper's values are the config's defaults (one place); QUICK and WHY_QUICK name the same fields. Every
    transformer experiment's config is an ExperimentConfig; one without prompts or training (matrix sensing) has its
    own frozen config, with the seed and device every config carries."""
    assert presets.experiments() == tuple(sorted(c.experiment for c in chapters.CHAPTERS.values() if c.experiment))
    for name in presets.experiments():
        module = presets.experiment(name)
        assert dataclasses.is_dataclass(module.CONFIG) and module.CONFIG.__dataclass_params__.frozen
        fields = {f.name for f in dataclasses.fields(module.CONFIG)}
        assert issubclass(module.CONFIG, ExperimentConfig) or name == "precgd_matrix_sensing", name
        assert {"seed", "device"} <= fields, name
        assert set(module.QUICK) == set(module.WHY_QUICK) <= set(presets.parameter_names(name)), name
        assert presets.get(name, "paper", device="cpu") == module.CONFIG(device="cpu")


def test_the_presets_module_imports_no_experiment_by_name() -> None:
    source = Path(presets.__file__).read_text()
    assert "icl.experiments import" not in source and "from icl.experiments." not in source


def test_an_unknown_experiment_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown experiment 'nope'; choose one of .*one_step_pgd"):
        presets.get("nope")


def test_parameter_names_put_the_experiments_own_fields_first() -> None:
    names = presets.parameter_names("one_step_pgd")
    assert names[:2] == ("dim", "n_context") and names[-2:] == ("seed", "device")
