"""What a training budget buys the shared GPT: chapter 10's errors at k = d and k = 2d, per member, for one or more
seeds at a chosen number of Adam steps.

    python bench/gpt_budget.py --seeds 0 1 --steps 16000 [--workers 2] [--threads 1] [--store DIR] [--set name=value]

Each seed trains chapter 10's ensemble (:data:`icl.experiments.gpt_least_squares.QUICK`, ``n_seeds`` members, with
``--steps`` Adam steps and the cosine schedule stretched to them; ``--set`` changes other fields) through
:func:`icl.gpt.trained`, then scores every member on the chapter's own test prompts (the first draw of the seed's
``eval`` stream). Seeds run in ``--workers`` processes of ``--threads`` threads each: on 2 cores two one-thread
processes train about 1.5 times as many member-steps per second as one process on two threads (`bench/README.md`),
and the thread count does not change a member's weights (chapter 10's seed-0 ensemble trained here on one thread is
bit-identical to the chapter's on two), so at ``--steps 8000`` these are the chapter's models.

The models go to ``--store`` (default: a temporary directory, removed at the end), so that budgets other than the
book's own do not fill the book's store. Prints one JSON line per seed and one summary line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from typing import Any

from experiment_at import parse_settings  # bench/ is on the path when a script here runs


def score(seed: int, steps: int, threads: int, overrides: dict[str, Any], store: str) -> dict[str, Any]:
    """Train (or load) one seed's ensemble and return its errors / d at k = d and k = 2d, per member."""
    os.environ["ICL_STORE"] = store  # before icl reads it
    import torch

    from icl import gpt, rng
    from icl.experiments import gpt_least_squares

    torch.set_num_threads(threads)
    config = _config(seed, steps, overrides)
    began = time.perf_counter()
    model, _ = gpt.trained(config.gpt(), progress=False)
    seconds = time.perf_counter() - began
    d = config.dim
    xs, ys, _ = gpt_least_squares._prompts(config, rng.streams(seed, config.device).eval)  # the chapter's prompts
    errors = ((gpt.predictions(model, xs, ys).double() - ys.double()) ** 2).mean(1) / d  # (E, K)
    return {
        "seed": seed,
        "steps": steps,
        "train_seconds": round(seconds, 1),
        "at_d": [round(v, 4) for v in errors[:, d].tolist()],
        "at_2d": [round(v, 4) for v in errors[:, 2 * d].tolist()],
        "mean_at_d": round(errors[:, d].mean().item(), 4),
        "mean_at_2d": round(errors[:, 2 * d].mean().item(), 4),
    }


def _config(seed: int, steps: int, overrides: dict[str, Any]) -> Any:
    """Chapter 10's `quick` config with ``overrides``, at ``seed`` and ``steps`` (validated: a bad field raises)."""
    from icl import presets

    return presets.get("gpt_least_squares", "quick", **{**overrides, "seed": seed, "train_steps": steps})


def _run(job: tuple) -> dict[str, Any]:
    return score(*job)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="processes training seeds side by side")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads per process")
    parser.add_argument("--store", help="result store for the trained models (default: a temporary one)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="another config field")
    args = parser.parse_args()
    for name, value in (("--steps", args.steps), ("--workers", args.workers), ("--threads", args.threads)):
        if value < 1:
            parser.error(f"{name} must be a positive integer, got {value}")
    overrides = parse_settings(args.set, parser)
    try:
        for seed in args.seeds:
            _config(seed, args.steps, overrides)  # bad input: one line, before any process starts
    except ValueError as error:
        parser.error(str(error))
    store = args.store or tempfile.mkdtemp(prefix="gpt-budget-")
    jobs = [(seed, args.steps, args.threads, overrides, store) for seed in args.seeds]
    began = time.perf_counter()
    try:
        with multiprocessing.get_context("spawn").Pool(min(args.workers, len(jobs))) as pool:
            rows = []
            for row in pool.imap(_run, jobs):
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        if not args.store:
            shutil.rmtree(store, ignore_errors=True)
    means_d = [row["mean_at_d"] for row in rows]
    means_2d = [row["mean_at_2d"] for row in rows]
    summary = {
        "steps": args.steps,
        "seeds": args.seeds,
        "worst_mean_at_d": max(means_d),
        "worst_mean_at_2d": max(means_2d),
        "wall_seconds": round(time.perf_counter() - began, 1),
        "workers": args.workers,
        "threads": args.threads,
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
