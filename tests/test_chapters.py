"""Every chapter in _toc.yml executes end to end through ``python -m icl run`` at tiny parameters.

At these sizes a training chapter is too short to reproduce its claim, so its claim checks must
fail: that is the point of the second test (a check that cannot fail protects nothing). The book
build runs every chapter at the ``quick`` preset, where the checks must pass.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from icl import record as icl_record

ROOT = Path(__file__).resolve().parents[1]
TOC_CHAPTERS = re.findall(r"^\s*-\s*file:\s*(book/\d\d_\S+)\s*$", (ROOT / "_toc.yml").read_text(), re.M)

# Small enough to run in seconds; chapters without training run at their defaults.
TINY = {
    "book/02_one_step_pgd": ["-p", "train_steps=5", "-p", "dim=3", "-p", "n_context=6"],
    "book/03_multi_step_pgd": ["-p", "train_steps=5", "-p", "spectrum=(1.0, 0.25)", "-p", "n_context=6"],
    "book/04_trained_transformers_do_gd": ["-p", "train_steps=5", "-p", "dim=3", "-p", "n_context=6"],
    "book/05_full_form_gd_plus_plus": [
        "-p",
        "sweep_train_steps=5",
        "-p",
        "train_steps=5",
        "-p",
        "spectrum=(1.0, 0.5)",
        "-p",
        "n_context=6",
        "-p",
        "n_layers=2",
    ],
    "book/06_looped_transformers": [
        "-p",
        "train_steps=5",
        "-p",
        "dim=3",
        "-p",
        "n_context=6",
        "-p",
        "n_sweep=(12,)",
        "-p",
        "loops=(1, 2)",
    ],
    "book/07_gradient_flow": ["-p", "train_steps=5", "-p", "spectrum=(1.0, 0.5)", "-p", "flow_contexts=(4,)"],
    "book/08_prompt_length": [
        "-p",
        "train_steps=5",
        "-p",
        "spectrum=(1.0, 0.5)",
        "-p",
        "train_contexts=(4,)",
        "-p",
        "test_contexts=(4, 8)",
    ],
    "book/09_distribution_shift": [
        "-p",
        "train_steps=5",
        "-p",
        "spectrum=(1.0, 1.0)",
        "-p",
        "scales=(0.5, 2.0)",
        "-p",
        "noise_stds=(0.0, 1.0)",
    ],
    "book/10_gpt_least_squares": ["-p", "train_steps=5", "-p", "dim=3", "-p", "n_test=256"],
    "book/11_softmax_covariate_shift": ["-p", "train_steps=5", "-p", "n_context=6", "-p", "max_context=12"],
    "book/12_iterative_newton": ["-p", "train_steps=5", "-p", "n_probe=600", "-p", "n_test=200"],
    "book/13_adam_beats_sgd": ["-p", "train_steps=5", "-p", "settings=('gaussian',)", "-p", "n_layers=2"],
    "book/14_attention_data_depth": [
        "-p",
        "train_steps=5",
        "-p",
        "depths=(1, 2)",
        "-p",
        "n_layers=1",
        "-p",
        "softmax_learning_rates=(0.01,)",
    ],
    "book/15_precgd_matrix_sensing": ["-p", "steps=100"],
}

pytestmark = pytest.mark.notebooks

# The device every chapter runs on here: the CPU, unless $ICL_TEST_DEVICE names another (bench/gpu_check.sh sets
# "cuda", so that on a GPU each chapter's device paths run end to end in seconds before the long runs).
DEVICE = os.environ.get("ICL_TEST_DEVICE", "cpu")


def run_chapter(chapter: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "icl", "run", f"{chapter}.md", "--device", DEVICE, "--out", str(out), *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_toc_lists_every_chapter_file() -> None:
    on_disk = sorted(f"book/{p.stem}" for p in (ROOT / "book").glob("[0-9][0-9]_*.md"))
    assert sorted(TOC_CHAPTERS) == on_disk


@pytest.mark.parametrize("chapter", [c for c in TOC_CHAPTERS if c not in TINY])
def test_chapter_without_training_passes(chapter: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICL_STORE", str(tmp_path / "store"))
    process = run_chapter(chapter, tmp_path / "out")
    assert process.returncode == 0, process.stderr[-3000:]
    record = json.loads((tmp_path / "out" / f"{Path(chapter).name}.json").read_text())
    assert record["passed"] and record["claim_checks"]
    assert all(c["passed"] for c in record["claim_checks"])
    icl_record.validate(record)
    assert (tmp_path / "out" / f"{Path(chapter).name}.ipynb").exists()


@pytest.mark.parametrize("chapter", sorted(TINY))
def test_undertrained_chapter_fails_its_claim_check(
    chapter: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICL_STORE", str(tmp_path / "store"))
    process = run_chapter(chapter, tmp_path / "out", *TINY[chapter])
    assert process.returncode == 1, process.stderr[-3000:]
    assert "FAILED" in process.stdout
    assert "%|" in process.stderr  # the chapter's training progress bars, streamed as it runs
    record = json.loads((tmp_path / "out" / f"{Path(chapter).name}.json").read_text())
    assert record["passed"] is False
    assert any(not c["passed"] for c in record["claim_checks"])
    icl_record.validate(record)  # every field of the schema, every array's shape and one name per axis
    assert record["run"]["seconds"] > 0 and record["run"]["versions"]["torch"]
    assert "elapsed_seconds" not in record["arrays"]  # one elapsed time: the run's
    name, value = TINY[chapter][1].split("=", 1)  # the first tiny parameter: the training (or iteration) budget
    assert str(record["config"][name]) == value
    # Nothing half-written: only the two results, no temporary files.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [f"{Path(chapter).name}.ipynb", f"{Path(chapter).name}.json"]
    )
