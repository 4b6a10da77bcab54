"""Run one experiment at `quick` with any config fields changed, including those a chapter's parameters cell does not
expose (the dimension, the depth, the ensemble size), and print its summary and claim checks.

    python bench/experiment_at.py iterative_newton --set dim=8 --set n_layers=6 --set n_seeds=1 \
        --set train_steps=12000 --set curriculum_every=150 [--seed 0] [--threads 2] [--store DIR]

This is how the book measures a scale before choosing it for a chapter (`bench/README.md` lists the runs): the same
``run``, ``claim_checks`` and ``summary`` as the chapter, through :func:`icl.presets.get`, so a field name is checked
as the chapter checks it. Trained models go to ``--store`` (default: a temporary directory, removed at the end), so
that trial scales do not fill the book's store. Prints one JSON line: the run's seconds, its summary (the chapter's
glue values) and every claim check's measured value, bar and verdict.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import tempfile
import time
from typing import Any


def parse_settings(items: list[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    """``["dim=8", "loops=(1, 2)"]`` -> {"dim": 8, "loops": (1, 2)}; a value that is not a Python literal stays text."""
    settings: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--set takes NAME=VALUE, got {item!r}")
        try:
            settings[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[name] = value
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="an experiment module of icl.experiments, e.g. iterative_newton")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a config field")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads (default: PyTorch's)")
    parser.add_argument("--store", help="result store for the trained models (default: a temporary one)")
    args = parser.parse_args()
    settings = parse_settings(args.set, parser)
    store = args.store or tempfile.mkdtemp(prefix="experiment-at-")
    os.environ["ICL_STORE"] = store  # before icl reads it
    import torch

    from icl import presets

    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        config = presets.get(args.experiment, "quick", seed=args.seed, **settings)  # bad input: one line, no work
    except ValueError as error:
        parser.error(str(error))
    module = presets.experiment(args.experiment)
    began = time.perf_counter()
    try:
        result = module.run(config)
        checks = module.claim_checks(result, config)
        summary = module.summary(result, config)
    finally:
        if not args.store:
            shutil.rmtree(store, ignore_errors=True)
    print(
        json.dumps(
            {
                "experiment": args.experiment,
                "settings": {k: repr(v) for k, v in settings.items()},
                "seed": args.seed,
                "seconds": round(time.perf_counter() - began, 1),
                "summary": summary,
                "checks": checks.records(),
            },
            default=str,
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
