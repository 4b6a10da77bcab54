"""What the optimisation chapters' training costs at a preset: for every ensemble chapters 13 and 14 train, seconds per
training step on this machine (a few timed steps, after a warm-up), and the extrapolation to the run's full length.
Prints one JSON line per run and a total. Measurements (Hessians, gradient noise) are not counted.

    .venv/bin/python bench/optimisation_cost.py --preset paper --steps 5 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import torch

from icl import optimisation, presets, rng
from icl.train import train


def runs(preset: str) -> dict[str, optimisation.RunConfig]:
    """Every ensemble the two chapters train at ``preset``, once each (chapter 14 shares chapter 13's)."""
    thirteen = presets.get("adam_beats_sgd", preset, device="cpu")
    fourteen = presets.get("attention_data_depth", preset, device="cpu")
    found = {f"13 {s}": thirteen.run(s) for s in thirteen.settings}
    found["14 softmax sweep"] = fourteen.softmax_sweep()
    found["14 sphere"] = fourteen.run("sphere", clip_norm=fourteen.sphere_clip_norm)
    found |= {f"14 depth {L}": fourteen.run("gaussian", n_layers=L) for L in fourteen.depths}
    if fourteen.at_scale:
        found["14 at scale (Fig. 5)"] = fourteen.scale_run()
    unique: dict[str, optimisation.RunConfig] = {}
    for name, config in found.items():
        if config not in unique.values():
            unique[name] = config
    return unique


def seconds_per_step(config: optimisation.RunConfig, steps: int) -> float:
    """Seconds per step of the run's ensemble over ``steps`` training steps, after a one-step warm-up."""
    model = optimisation.model(config)
    generator = rng.streams(config.seed, config.device).train
    sampler = lambda g: optimisation.sample(config, config.batch_size, g)  # noqa: E731
    for count in (1, steps):
        start = time.perf_counter()
        train_config = dataclasses.replace(optimisation.train_config(config), steps=count)
        train(model, sampler, train_config, generator=generator, progress=False)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper", choices=("quick", "paper"))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run (after one warm-up)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    total = 0.0
    for name, config in runs(args.preset).items():
        per_step = seconds_per_step(config, args.steps)
        hours = per_step * config.train_steps / 3600
        total += hours
        members = config.n_arms * config.n_seeds
        print(
            json.dumps(
                {
                    "run": name,
                    "members": members,
                    "layers": config.n_layers,
                    "dim": config.dim,
                    "sec_per_step": round(per_step, 4),
                    "steps": config.train_steps,
                    "hours": round(hours, 2),
                }
            )
        )
    print(
        json.dumps(
            {
                "preset": args.preset,
                "threads": args.threads,
                "training_hours": round(total, 2),
                "load_average": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
