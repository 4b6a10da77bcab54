"""``python -m icl``: ``list`` works; bad input exits 2 with one line naming the parameter, before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import icl
from icl import chapters, cli, presets

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "book/02_one_step_pgd.md"
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here")


@pytest.fixture(autouse=True)
def from_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # chapter paths are relative to the checkout, as in the README
    monkeypatch.delenv("ICL_PRESET", raising=False)


def python_m_icl(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "icl", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ICL_PRESET": ""},
    )


def assert_bad_input(code: int, stderr: str, name: str, out: Path) -> None:
    lines = stderr.strip().splitlines()
    assert code == cli.EXIT_BAD_INPUT == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert name in lines[0], stderr
    assert "Traceback" not in stderr
    assert not out.exists() or list(out.iterdir()) == []


def test_list_as_a_subprocess() -> None:
    process = python_m_icl("list")
    assert process.returncode == 0, process.stderr
    assert "book/01_setup_and_notation.md" in process.stdout and CHAPTER in process.stdout
    assert "-p train_steps" in process.stdout and "20000" in process.stdout
    assert process.stderr == ""


def test_no_command_is_a_usage_error() -> None:
    process = python_m_icl()
    assert process.returncode == 2 and "usage:" in process.stderr


@pytest.mark.parametrize(
    "arguments, name",
    [
        (["book/99_nope.md"], "book/99_nope.md"),
        ([CHAPTER, "-p", "dim=abc"], "dim"),
        ([CHAPTER, "--device", "gpu"], "device"),
    ],
)
def test_bad_input_as_a_subprocess(arguments: list[str], name: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = python_m_icl("run", *arguments, "--out", str(out))
    assert_bad_input(process.returncode, process.stderr, name, out)
    assert process.stdout == ""


def run_in_process(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str]:
    code = cli.main(["run", *arguments])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments, name",
    [
        (["book/99_nope.md"], "unknown chapter 'book/99_nope.md'"),
        (["book/02_one_step_pgd.txt"], "unknown chapter"),
        (["elsewhere/02_one_step_pgd.md"], "does not exist"),
        ([CHAPTER, "--preset", "huge"], "unknown preset 'huge'"),
        ([CHAPTER, "-p", "n_ctx=5"], "unknown parameter 'n_ctx'"),
        ([CHAPTER, "-p", "n_context=-3"], "n_context"),
        ([CHAPTER, "-p", "n_context=0"], "n_context"),
        ([CHAPTER, "-p", "dim=0"], "dim"),
        ([CHAPTER, "-p", "dim=2.5"], "dim"),
        ([CHAPTER, "-p", "dim=abc"], "dim"),
        ([CHAPTER, "-p", "dim=True"], "dim"),
        ([CHAPTER, "-p", "train_steps=-1"], "train_steps"),
        ([CHAPTER, "-p", "condition_number=0.5"], "condition_number"),
        ([CHAPTER, "-p", "condition_number=nan"], "condition_number"),
        ([CHAPTER, "-p", "dim"], "-p expects name=value"),
        ([CHAPTER, "-p", "=3"], "-p expects name=value"),
        ([CHAPTER, "-p", "preset=paper"], "--preset"),
        ([CHAPTER, "-p", "device=cpu"], "--device"),
        ([CHAPTER, "--seed", "-1"], "seed"),
        ([CHAPTER, "--device", "gpu"], "device"),
    ],
)
def test_bad_input_in_process(
    arguments: list[str], name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stderr = run_in_process(capsys, *arguments, "--out", str(out))
    assert_bad_input(code, stderr, name, out)
    assert not out.exists()  # validation fails before the output folder is made


@no_gpu
def test_cuda_without_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, stderr = run_in_process(capsys, CHAPTER, "--device", "cuda", "--out", str(out))
    assert_bad_input(code, stderr, "cuda", out)


def test_out_under_a_regular_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "runs"
    code, stderr = run_in_process(capsys, CHAPTER, "--device", "cpu", "--out", str(out))
    assert_bad_input(code, stderr, "--out", out)
    assert "is not writable" in stderr and blocker.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_out_is_a_regular_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    out.write_text("a file")
    code, stderr = run_in_process(capsys, CHAPTER, "--device", "cpu", "--out", str(out))
    assert code == 2 and "--out" in stderr and len(stderr.strip().splitlines()) == 1
    assert out.read_text() == "a file"


def test_out_in_a_read_only_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: chmod does not block writes")
        code, stderr = run_in_process(capsys, CHAPTER, "--device", "cpu", "--out", str(locked / "runs"))
        assert_bad_input(code, stderr, "--out", locked / "runs")
    finally:
        locked.chmod(0o700)


def test_prepare_accepts_good_input_and_returns_the_parameters(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = cli.parser().parse_args(
        [
            "run",
            CHAPTER,
            "--device",
            "cpu",
            "--seed",
            "4",
            "-p",
            "n_context=40",
            "-p",
            "train_steps=10",
            "--out",
            str(out),
        ]
    )
    chapter, notebook, parameters = cli.prepare(args)
    assert chapter.slug == "02_one_step_pgd" and chapter.experiment == "one_step_pgd"
    assert parameters == {"n_context": 40, "train_steps": 10, "preset": "quick", "device": "cpu", "seed": 4}
    assert any("parameters" in cell.get("metadata", {}).get("tags", []) for cell in notebook.cells)
    assert out.is_dir() and list(out.iterdir()) == []  # the write test leaves nothing behind


def test_a_chapter_by_its_bare_name_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the name resolves to the checkout's book/, not to the working directory
    args = cli.parser().parse_args(["run", "02_one_step_pgd", "--device", "cpu", "--out", str(tmp_path / "out")])
    chapter, notebook, _ = cli.prepare(args)
    assert chapter.slug == "02_one_step_pgd"
    assert [c.source for c in notebook.cells] == [c.source for c in chapters.read_notebook(ROOT / CHAPTER).cells]
    with pytest.raises(cli.BadInput, match="unknown chapter '99_nope'"):
        cli.prepare(cli.parser().parse_args(["run", "99_nope", "--out", str(tmp_path / "out2")]))


def test_chapter_without_experiment_validates_its_parameters(tmp_path: Path) -> None:
    args = cli.parser().parse_args(
        ["run", "book/01_setup_and_notation.md", "-p", "dim=0", "--out", str(tmp_path / "out")]
    )
    with pytest.raises(cli.BadInput, match="dim"):
        cli.prepare(args)


def test_list_shows_only_what_p_accepts_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("book/01_setup_and_notation.md")
    chapter = lines.index(next(line for line in lines if line.startswith(CHAPTER)))
    block = lines[chapter + 1 : chapter + 6]
    accepted = chapters.parameters_of(chapters.read_notebook(ROOT / CHAPTER))
    assert [line.split()[1] for line in block] == [n for n in accepted if n not in cli.RESERVED]
    assert block[3].split() == ["-p", "train_steps", "quick", "2000", "paper", "20000"]
    assert not any("n_seeds" in line or "batch_size" in line for line in lines)  # config fields -p rejects


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["one_step_pgd"], "did you mean 'book/02_one_step_pgd.md'?"),
        (
            [CHAPTER, "-p", "n_contxt=3"],
            "unknown parameter 'n_contxt' for 02_one_step_pgd; choose from ['condition_number'",
        ),
        ([CHAPTER, "-p", "n_contxt=3"], "did you mean 'n_context'?"),
        (
            [CHAPTER, "--preset", "papr"],
            "unknown preset 'papr'; choose one of ['quick', 'paper']; did you mean 'paper'?",
        ),
    ],
)
def test_a_misspelt_name_gets_a_suggestion(
    arguments: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", *arguments, "--out", str(tmp_path / "out")]) == cli.EXIT_BAD_INPUT
    assert message in capsys.readouterr().err


def test_a_bad_preset_from_the_environment_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ICL_PRESET", "quik")
    assert cli.main(["run", CHAPTER, "--out", str(tmp_path / "out")]) == cli.EXIT_BAD_INPUT
    assert "unknown preset 'quik' (from $ICL_PRESET)" in capsys.readouterr().err


def test_help_has_examples_exit_codes_and_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "130 interrupted" in text and "{quick,paper}" in text and ".. " not in text
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"icl {icl.__version__}"


def test_a_tuple_parameter_reaches_the_chapter_as_a_list(tmp_path: Path) -> None:
    """papermill writes a tuple into the notebook as its string; the CLI passes a list, which configs accept."""
    args = cli.parser().parse_args(
        ["run", "book/03_multi_step_pgd.md", "--device", "cpu", "-p", "spectrum=(1.0, 0.25)", "--out", str(tmp_path)]
    )
    parameters = cli.prepare(args)[2]
    assert parameters["spectrum"] == [1.0, 0.25]
    assert presets.get("multi_step_pgd", "quick", device="cpu", spectrum=parameters["spectrum"]).spectrum == (1.0, 0.25)


def test_store_list_and_prune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from icl import store

    monkeypatch.setenv("ICL_STORE", str(tmp_path))
    store.cached("kept", {"dim": 2}, lambda: {"x": torch.zeros(3)}, roots=["icl.tasks"])
    (tmp_path / "results" / "from-an-older-store.pt").write_bytes(b"no description")
    assert cli.main(["store", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and "current  kept" in out[0] + out[1] and "stale    ?" in out[0] + out[1]
    assert out[2].endswith("2 files, 0.0 MiB; 1 stale (`python -m icl store prune` deletes them)")
    assert cli.main(["store", "prune", "--dry-run"]) == 0 and len(list((tmp_path / "results").iterdir())) == 3
    assert "would free" in capsys.readouterr().out
    assert cli.main(["store", "prune"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "deleted result ? (from-an-older-store.pt)"
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "results").iterdir()) == ["kept", "kept"]
    assert cli.main(["store", "prune", "--all"]) == 0 and list((tmp_path / "results").iterdir()) == []


@pytest.mark.parametrize(
    ("failure", "code", "message"),
    [
        ("DeadKernelError", 1, "error: the kernel running 02_one_step_pgd died"),
        ("KeyboardInterrupt", 130, "interrupted"),
    ],
)
def test_a_dead_kernel_or_ctrl_c_ends_in_one_line(
    failure: str, code: int, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import papermill
    from nbclient.exceptions import DeadKernelError

    def execute(*args, **kwargs) -> None:
        raise DeadKernelError("Kernel died") if failure == "DeadKernelError" else KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    assert cli.main(["run", CHAPTER, "--device", "cpu", "--out", str(tmp_path / "out")]) == code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert list((tmp_path / "out").iterdir()) == []  # nothing written
