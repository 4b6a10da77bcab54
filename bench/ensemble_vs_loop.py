"""Training E models as one batched ensemble against a Python loop of E single-model runs.

Both sides do the same work per model: ``--steps`` steps of :func:`icl.train.train` on fresh prompts from
:func:`icl.tasks.sample_regression` (batch ``--batch``, x ~ N(0, I), w ~ N(0, I)), forward, MSE, backward and one
Adam step. The ensemble stacks the E models along the leading axis of every parameter (one optimiser state per
member, Adam's update being elementwise), so each member trains exactly as it would alone; the loop builds E
one-model ensembles and trains them one after the other. The script prints one JSON line: wall-clock seconds of
each side (the median of ``--repeats`` interleaved rounds) and the speed-up.

    python bench/ensemble_vs_loop.py --models 6 --dim 5 --n-context 20 --n-layers 3 --parameterisation eleven \\
        --batch 1024 --steps 200 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from icl import tasks
from icl.models import PARAMETERISATIONS, LinearTransformer
from icl.train import TrainConfig, train


def time_training(models: int, args: argparse.Namespace, seed: int) -> float:
    """Seconds to train one ensemble of ``models`` members for ``args.steps`` steps."""
    generator = torch.Generator().manual_seed(seed)
    model = LinearTransformer(
        args.dim,
        args.n_layers,
        parameterisation=args.parameterisation,
        n_models=models,
        init_std=1e-3,
        generator=generator,
    )
    covariance = torch.eye(args.dim).expand(models, args.dim, args.dim)

    def sample(g: torch.Generator) -> tasks.RegressionBatch:
        return tasks.sample_regression(args.batch, args.n_context, covariance, generator=g)

    start = time.perf_counter()
    train(model, sample, TrainConfig(steps=args.steps, learning_rate=1e-3), generator=generator, progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=6, help="ensemble size E (seeds, covariances, ...)")
    parser.add_argument("--dim", type=int, default=5)
    parser.add_argument("--n-context", type=int, default=20)
    parser.add_argument("--n-layers", type=int, default=3)
    parser.add_argument("--parameterisation", choices=PARAMETERISATIONS, default="eleven")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for name in ("models", "dim", "n_context", "n_layers", "batch", "steps", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)

    time_training(args.models, argparse.Namespace(**{**vars(args), "steps": 5}), seed=0)  # warm-up
    ensemble, loop = [], []
    for round_ in range(args.repeats):  # interleaved, so that machine noise hits both sides alike
        ensemble.append(time_training(args.models, args, seed=round_))
        loop.append(sum(time_training(1, args, seed=round_ * 1000 + e) for e in range(args.models)))
    result = {
        "models": args.models,
        "dim": args.dim,
        "n_context": args.n_context,
        "n_layers": args.n_layers,
        "parameterisation": args.parameterisation,
        "batch": args.batch,
        "steps": args.steps,
        "threads": args.threads,
        "ensemble_seconds": statistics.median(ensemble),
        "loop_seconds": statistics.median(loop),
        "speedup": statistics.median(loop) / statistics.median(ensemble),
        "load_average": os.getloadavg()[0],
        "machine": platform.machine(),
        "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
