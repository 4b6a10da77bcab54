"""Train chapter 05's models in parallel processes, filling the result store before the chapter runs.

    python bench/train_parallel.py --preset paper --device cuda --workers 7 [--seed 0] [--set name=value ...]
                                   [--fits L4 sweep-n10 ...]

Chapter 05 (``icl.experiments.full_form_gd_plus_plus``) trains its ensembles one after another: at ``paper`` that is
four depths of 100,000 Adam steps plus twelve runs of 20,000 for the context-length sweep. Each run's step is a few
hundred small kernels, so on a GPU one process is bound by Python and kernel launches and leaves the GPU mostly
idle. This script runs the same fits, with the same configuration, random streams and store keys as the chapter,
in ``--workers`` processes pulling from a queue (the longest first); the chapter then loads every model from the
store. Nothing here changes a number: a fit trained here is bit-for-bit the fit the chapter would train itself on
the same device. With CUDA's Multi-Process Service running (``bench/gpu_check.sh`` starts it), the processes' kernels
share the GPU instead of taking turns.

Prints one JSON line per finished fit (its name, seconds, steps per second) and one at the end; each fit's progress bar
goes to stderr.
"""

from __future__ import annotations

import argparse
import ast
import json
import multiprocessing
import time
from typing import Any

from icl import presets
from icl.experiments import full_form_gd_plus_plus
from icl.experiments.full_form_gd_plus_plus import context_sweep, depths

EXPERIMENT = "full_form_gd_plus_plus"


def fits(config: Any) -> list[tuple[str, float, tuple]]:
    """Every training run of the chapter as (name, relative cost, arguments), the longest first.

    A step's cost grows with depth (measured on 2 cores: 1.5 ms at L = 1, 3.0 ms at L = 4, so about 1 + L/2)."""
    runs = [(f"L{depth}", config.train_steps * (1 + depth / 2), ("depth", depth)) for depth in config.depths]
    sweep_cost = config.sweep_train_steps * (1 + config.n_layers / 2)
    for n in config.context_sweep:
        runs.append((f"sweep-n{n}", sweep_cost, ("sweep", n, config.sweep_clip_norm, context_sweep.SWEEP_PART + n)))
        if n in config.clipped_contexts:
            runs.append((f"clipped-n{n}", sweep_cost, ("sweep", n, config.clip_norm, context_sweep.CLIPPED_PART + n)))
    return sorted(runs, key=lambda run: -run[1])


def _config(preset: str, device: str, seed: int, overrides: dict[str, Any]) -> Any:
    # The chapter's own call: its parameters cell's values (``--set``, as ``-p`` gives them to the chapter).
    return presets.get(EXPERIMENT, preset, device=device, seed=seed, **overrides)


def _fit(job: tuple[str, str, int, dict[str, Any], str, tuple]) -> dict[str, Any]:
    preset, device, seed, overrides, name, arguments = job
    config = _config(preset, device, seed, overrides)
    covariance = full_form_gd_plus_plus.covariances(config)
    start = time.perf_counter()
    if arguments[0] == "depth":
        depths.fit_depth(config, covariance, arguments[1], progress=True)
        steps = config.train_steps
    else:
        _, n, clip, part = arguments
        context_sweep.fit_at(config, covariance, n, clip, part, progress=True)
        steps = config.sweep_train_steps
    seconds = time.perf_counter() - start
    return {"fit": name, "seconds": round(seconds, 1), "steps_per_second": round(steps / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a config override")
    parser.add_argument("--fits", nargs="*", default=None, help="only these fits (L4, sweep-n10, clipped-n10, ...)")
    args = parser.parse_args()
    overrides = {name: ast.literal_eval(value) for name, _, value in (item.partition("=") for item in args.set)}
    config = _config(args.preset, args.device, args.seed, overrides)  # validates everything before any process
    chosen = [fit for fit in fits(config) if args.fits is None or fit[0] in args.fits]
    if not chosen:
        parser.error(f"--fits {args.fits} names none of {[fit[0] for fit in fits(config)]}")
    jobs = [(args.preset, config.device, args.seed, overrides, name, arguments) for name, _, arguments in chosen]
    start = time.perf_counter()
    # spawn, not fork: a forked child cannot use CUDA once the parent has initialised it.
    with multiprocessing.get_context("spawn").Pool(min(args.workers, len(jobs))) as pool:
        for line in pool.imap_unordered(_fit, jobs):
            print(json.dumps({**line, "elapsed": round(time.perf_counter() - start, 1)}), flush=True)
    print(json.dumps({"fits": len(jobs), "workers": args.workers, "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
