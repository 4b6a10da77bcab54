"""Command line: ``python -m icl run`` executes a chapter with papermill; ``python -m icl list`` lists them;
``python -m icl store list|prune`` shows or cleans the store of trained models (:mod:`icl.store`).

    python -m icl run book/02_one_step_pgd.md [--preset quick|paper] [--device auto|cpu|cuda]
                      [--seed S] [-p name=value ...] [--out DIR] [--quiet]

writes ``DIR/<chapter>.ipynb`` (the executed notebook) and ``DIR/<chapter>.json`` (the chapter's record,
:mod:`icl.record`: resolved preset and config, every claim check, the key arrays, run time, peak memory, versions),
each through a temporary file and an atomic rename, and only when the chapter reached its claim checks: a run that
fails before them leaves ``DIR`` as it was. While it runs, the chapter's progress bars (training, evaluation) and
warnings stream to stderr (``--quiet``: not). Exit status: 0 when every claim check passed, 1 when a check failed, the
chapter raised or its kernel died, 2 for bad input (reported in one line, before any work, with nothing written),
130 when interrupted (Ctrl-C; one line, nothing written; trained models already stored stay).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from icl import __version__, chapters, presets, record, store
from icl.checks import ClaimCheckFailed
from icl.config import did_you_mean, positive_int
from icl.device import resolve_device
from icl.store import atomic_write_text

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
RESERVED = ("preset", "device", "seed")  # set by their own options, not by -p


class BadInput(ValueError):
    """A user error: printed as one line, exit status 2."""


def _parse_assignment(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name.isidentifier():
        raise BadInput(f"-p expects name=value, got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a plain string; the config's validation names what was expected
    if isinstance(value, tuple):
        value = list(value)  # papermill injects a tuple as its string; a list survives (configs take either)
    return name, value


def _check_out(out: Path) -> None:
    """Fail early, leaving nothing behind, if ``out`` cannot hold the results."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".icl-write-test-"):
            pass
    except OSError as error:
        raise BadInput(f"--out {str(out)!r} is not writable: {error.strerror or error}") from None


def prepare(args: argparse.Namespace) -> tuple[chapters.Chapter, Any, dict[str, Any]]:
    """Validate everything before any work: chapter, preset, parameters, device, output folder.

    Returns the chapter, its notebook, and the parameters to inject.
    """
    try:
        chapter = chapters.chapter_of(args.chapter)
        preset = presets.resolve(args.preset)
        resolve_device(args.device)
        if not args.seed.isdigit():
            raise ValueError(f"seed must be an integer >= 0, got {args.seed!r}")
        seed = int(args.seed)
        notebook = chapters.read_notebook(chapters.chapter_file(args.chapter))
        defaults = chapters.parameters_of(notebook)
        overrides = dict(_parse_assignment(p) for p in args.parameter)
        unknown = sorted(set(overrides) - set(defaults))
        if unknown:
            accepted = sorted(set(defaults) - set(RESERVED))
            raise ValueError(
                f"unknown parameter {unknown[0]!r} for {chapter.slug}; choose from {accepted}"
                f"{did_you_mean(unknown[0], accepted)}"
            )
        for reserved in RESERVED:
            if reserved in overrides:
                raise ValueError(f"set {reserved} with --{reserved}, not -p")
        parameters = {**overrides, "preset": preset, "device": args.device, "seed": seed}
        for name in chapter.sizes:
            positive_int(name, parameters.get(name, defaults.get(name)))
        if chapter.experiment is not None:
            fields = set(presets.parameter_names(chapter.experiment))
            presets.get(
                chapter.experiment, preset, **{k: v for k, v in parameters.items() if k in fields and k != "preset"}
            )
        _check_out(Path(args.out))
    except ValueError as error:
        raise BadInput(str(error)) from None
    return chapter, notebook, {k: v for k, v in parameters.items() if k in defaults}


def run(args: argparse.Namespace) -> int:
    chapter, notebook, parameters = prepare(args)
    import nbformat
    import papermill
    from nbclient.exceptions import DeadKernelError

    out = Path(args.out)
    notebook_path, json_path = out / f"{chapter.slug}.ipynb", out / f"{chapter.slug}.json"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="icl-run-") as scratch:
        executed_path, record_path = Path(scratch) / f"{chapter.slug}.ipynb", Path(scratch) / f"{chapter.slug}.json"
        error: papermill.PapermillExecutionError | None = None
        # The kernel inherits this process's environment: the chapter writes its record once, into the scratch
        # folder, and it is copied unchanged into --out below, next to the executed notebook.
        previous = os.environ.get(record.RECORD_DIR_VARIABLE)
        os.environ[record.RECORD_DIR_VARIABLE] = scratch
        try:
            papermill.execute_notebook(
                notebook,
                str(executed_path),
                parameters=parameters,
                kernel_name="python3",
                cwd=str(chapters.chapter_file(args.chapter).resolve().parent),
                progress_bar=False,
                # The chapter's stderr (its training and evaluation progress bars, warnings) as it arrives.
                stderr_file=None if args.quiet else sys.stderr,
            )
        except papermill.PapermillExecutionError as exc:
            error = exc
        except DeadKernelError:
            print(
                f"error: the kernel running {chapter.slug} died (out of memory?); nothing written. Models it "
                "finished training are in the store, and an interrupted training resumes from its checkpoint",
                file=sys.stderr,
            )
            return EXIT_FAILED
        except KeyboardInterrupt:
            print(
                f"\ninterrupted: {chapter.slug} stopped; nothing written. Models it finished training are in the "
                "store, and an interrupted training resumes from its checkpoint",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        finally:
            if previous is None:
                os.environ.pop(record.RECORD_DIR_VARIABLE, None)
            else:
                os.environ[record.RECORD_DIR_VARIABLE] = previous
        elapsed = time.perf_counter() - start
        # A failed claim check is a result (the record says so); any other error before or after the record is not.
        if not record_path.exists() or (error is not None and error.ename != ClaimCheckFailed.__name__):
            reason = f"{error.ename}: {error.evalue}" if error is not None else "no record"
            print(f"error: {chapter.slug} failed before its claim checks ({reason}); nothing written", file=sys.stderr)
            return EXIT_FAILED
        text = record_path.read_text()
        atomic_write_text(nbformat.writes(nbformat.read(executed_path, as_version=4)), notebook_path)
        atomic_write_text(text, json_path)
    content = json.loads(text)
    checks = content["claim_checks"]
    failed = [c["name"] for c in checks if not c["passed"]]
    status = "passed" if content["passed"] else f"FAILED ({', '.join(failed) or 'chapter error'})"
    print(f"{chapter.slug}: {len(checks)} claim checks {status} in {elapsed:.1f} s -> {notebook_path}, {json_path}")
    return EXIT_OK if content["passed"] else EXIT_FAILED


def list_chapters() -> int:
    """Each chapter, and every name ``-p`` accepts (its parameters cell) with its default, or what quick and paper
    set where the parameters cell leaves it to the preset."""
    for chapter in chapters.CHAPTERS.values():
        print(f"book/{chapter.slug}.md  {chapter.title}")
        path = chapters.chapter_file(chapter.slug)
        if not path.is_file():
            print("    (its notebook is not here: run from a source checkout to see its parameters)")
            continue
        names = {k: v for k, v in chapters.parameters_of(chapters.read_notebook(path)).items() if k not in RESERVED}
        if chapter.experiment is None:
            print("    no training; runs in seconds at any preset")
        quick, paper = (
            (presets.get(chapter.experiment, p, device="cpu") for p in presets.PRESET_NAMES)
            if chapter.experiment is not None
            else (None, None)
        )
        rows = []
        for name, default in names.items():
            if default is None and quick is not None and hasattr(quick, name):
                rows.append(
                    (name, f"quick {_literal(getattr(quick, name))}", f"paper {_literal(getattr(paper, name))}")
                )
            else:
                rows.append((name, f"default {default!r}", ""))
        width = max((len(name) for name, _, _ in rows), default=0)
        wide = max((len(q) for _, q, _ in rows), default=0)
        for name, first, second in rows:
            print(f"    -p {name:<{width}}  {first:<{wide}}  {second}".rstrip())
    return EXIT_OK


def _literal(value: Any) -> str:
    """A value as one would type it after ``-p name=``: ``(1, 0.25)``, ``2000``, ``balanced``."""
    if isinstance(value, tuple):
        return "(" + ", ".join(_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return f"{value:g}" if isinstance(value, float) else str(value)


def store_command(args: argparse.Namespace) -> int:
    """``store list``: every stored result and checkpoint; ``store prune``: delete what this checkout cannot serve."""
    root = store.default_root()
    if args.action == "list":
        found = store.entries(root)
        for entry in found:
            state = "current" if entry.current else "stale"
            size = f"{entry.bytes / 2**20:.1f} MiB"
            print(f"{entry.kind:<10}  {entry.created:<25}  {size:>10}  {state:<7}  {entry.name}")
        stale = [entry for entry in found if not entry.current]
        total = sum(entry.bytes for entry in found) / 2**20
        print(f"{root}: {len(found)} files, {total:.1f} MiB; {len(stale)} stale", end="")
        print(" (`python -m icl store prune` deletes them)" if stale else "")
        return EXIT_OK
    deleted = store.prune(root, everything=args.all, dry_run=args.dry_run)
    freed = sum(entry.bytes for entry in deleted) / 2**20
    for entry in deleted:
        print(f"{'would delete' if args.dry_run else 'deleted'} {entry.kind} {entry.name} ({entry.path.name})")
    print(f"{'would free' if args.dry_run else 'freed'} {freed:.1f} MiB in {len(deleted)} files under {root}")
    return EXIT_OK


EXAMPLES = """examples:
  python -m icl run book/02_one_step_pgd.md                 # quick preset, a GPU if there is one
  python -m icl run 02_one_step_pgd --preset paper --device cuda --seed 3 --out runs/
  python -m icl run book/06_looped_transformers.md -p "loops=(1, 2)" -p train_steps=400
  python -m icl list                                        # chapters and what -p accepts
  python -m icl store list                                  # stored trained models

exit status: 0 every claim check passed; 1 a check failed, the chapter raised or its kernel died;
2 bad input (one line, nothing done); 130 interrupted (Ctrl-C).
"""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m icl",
        description="Run the chapters of icl-book and look after their store of trained models.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"icl {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="{run,list,store}")
    run_parser = commands.add_parser(
        "run",
        help="execute a chapter with papermill; write its notebook and JSON",
        description="Execute a chapter and write DIR/<chapter>.ipynb and DIR/<chapter>.json (its record), only when "
        "it reached its claim checks. Its progress bars stream to stderr.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run_parser.add_argument("chapter", help="a chapter: its path (book/02_one_step_pgd.md) or name (02_one_step_pgd)")
    run_parser.add_argument(
        "--preset",
        default=None,
        metavar="{" + ",".join(presets.PRESET_NAMES) + "}",
        help="quick (a 2-core CPU in minutes) or paper (the paper's scale); default $ICL_PRESET, else quick",
    )
    run_parser.add_argument(
        "--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}", help="default auto: a GPU if there is one"
    )
    run_parser.add_argument("--seed", default="0", metavar="S", help="base seed, an integer >= 0 (default 0)")
    run_parser.add_argument(
        "-p",
        dest="parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a parameter of the chapter's parameters cell (repeatable; `python -m icl list` shows them)",
    )
    run_parser.add_argument("--out", default="runs", metavar="DIR", help="output folder (default: runs/)")
    run_parser.add_argument(
        "--quiet", action="store_true", help="do not stream the chapter's progress bars and warnings to stderr"
    )
    commands.add_parser(
        "list", help="list the chapters and the parameters -p accepts, with their quick and paper values"
    )
    store_parser = commands.add_parser(
        "store",
        help="list or prune the stored trained models and results ($ICL_STORE, else .icl-store/)",
        description="Trained models and results are stored keyed by their configuration and the source of the code "
        "that computed them. An entry is stale when that code has changed since: this checkout can never serve it.",
    )
    store_actions = store_parser.add_subparsers(dest="action", required=True)
    store_actions.add_parser("list", help="every stored file: kind, date, size, current or stale")
    prune_parser = store_actions.add_parser("prune", help="delete the stale files (with --all, every file)")
    prune_parser.add_argument("--all", action="store_true", help="delete every stored file, current ones too")
    prune_parser.add_argument("--dry-run", action="store_true", help="say what would be deleted; delete nothing")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        commands = {"run": run, "list": lambda _: list_chapters(), "store": store_command}
        return commands[args.command](args)
    except BadInput as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # the output was piped into a reader that stopped early (`| head`)
        sys.stderr.close()
        return EXIT_OK
