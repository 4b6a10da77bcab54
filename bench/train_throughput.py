"""Training throughput of the (11)-form linear transformer on CPU, against the machine's matmul peak.

One timed step is what :func:`icl.train.train` does per step: fresh prompts from
:func:`icl.tasks.sample_regression` (x ~ N(0, Σ), Σ a randomly rotated covariance with condition
number κ, w ~ N(0, Σ⁻¹)), :func:`icl.tokens.to_tokens`, the forward pass, :func:`icl.tokens.read_out`,
the MSE, the backward pass and one Adam step. Warm-up steps are not timed; the script prints one JSON
line with the median seconds per step.

Model FLOPs (the O(n d²) association, w = d + 1, per prompt and layer; matmuls only):

    forward  = 2 n w²          G = (1/n) Z M Zᵀ, a (w × n)(n × w) product
             + 4 w³            P G Q, two (w × w)(w × w) products
             + 2 (n + 1) w²    (P G Q) Z, a (w × w)(w × (n+1)) product
    step     = 3 · L · B · forward

The factor 3 is the usual count for forward + backward (each product's backward is two products of
its size), as in "model FLOPs utilisation". Elementwise work, sampling, the read-out and Adam are
not counted, nor the extra arithmetic of how the layer forms P G Q for d + 1 ≤ 11 (a Kronecker
product, 2 w⁴ per prompt, which moves less memory): ``gflops`` is the useful rate. ``peak_gflops`` is the
best rate of a large square fp32 ``torch.mm`` with the same thread count, measured in the same run
(before, between and after the timed steps, as other processes may share the cores).

``--reference PATH`` also times the authors' code (a local clone of chengxiang/LinearTransformer,
imported from PATH at run time; nothing of it is copied here): their ``generate_data`` with a
rotation U and scaling D such that Σ = U D² Uᵀ is our Σ (their W = ε D⁻¹ Uᵀ then has covariance
Σ⁻¹, the same prompt law as ours), their ``Transformer_F(n_layers, 1, dim, var)`` (the (11)-form:
P = [[B, 0], [0, 1]], Q = [[A, 0], [0, 0]] in their sign convention; it forms the (n+1)×(n+1)
attention matrix, O(n² d)), their ``in_context_loss``, backward and ``torch.optim.Adam``
at the same learning rate. Their notebooks build U and D with ``.cuda()``; we build them on the CPU
and point the module's global ``device`` at the CPU. Their notebooks clip gradients per block before
the step; we do not (neither does :func:`icl.train.train`), so both sides time the same work. The two
implementations alternate step by step, the order flipping every round.

    python bench/train_throughput.py --dim 5 --n-context 20 --n-layers 3 --batch 5000 --steps 30 --threads 2 \\
        --reference /tmp/LinearTransformer
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from icl import rng, tasks
from icl.models import LinearTransformer
from icl.tokens import read_out, to_tokens

LEARNING_RATE = 1e-3  # irrelevant to the timing; small so that many steps stay finite


def model_flops(dim: int, n_context: int, n_layers: int, batch: int) -> int:
    """Forward + backward matmul FLOPs of one training step; the formula is in the module docstring."""
    w, n = dim + 1, n_context
    forward = 2 * n * w**2 + 4 * w**3 + 2 * (n + 1) * w**2
    return 3 * n_layers * batch * forward


def matmul_gflops(size: int, repeats: int) -> list[float]:
    """Rates of ``repeats`` (size × size) @ (size × size) fp32 products, in GFLOP/s."""
    a = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    b = torch.randn(size, size, generator=torch.Generator().manual_seed(1))
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)  # warm-up: MKL's first call allocates its buffers
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        rates.append(2 * size**3 / (time.perf_counter() - start) / 1e9)
    return rates


def our_step(args: argparse.Namespace) -> Callable[[], float]:
    """One training step of our (11)-form model on fresh prompts; returns the loss (a float)."""
    streams = rng.streams(args.seed)
    covariance = tasks.covariance_from_condition_number(args.dim, args.condition_number, generator=streams.task)
    covariance = covariance.float()
    model = LinearTransformer(args.dim, args.n_layers, parameterisation="eleven", generator=streams.init)
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

    def step() -> float:
        batch = tasks.sample_regression(
            args.batch, args.n_context, covariance, generator=streams.train, task_prior="inverse_covariance"
        )
        predictions = read_out(model(to_tokens(batch.X, batch.y, batch.x_query)))
        loss = ((predictions - batch.y_query) ** 2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return loss.item()

    return step


def quartiles(times: list[float]) -> list[float]:
    """The three quartiles of the step times: their spread shows how quiet the machine was."""
    return statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3


def load_reference(path: Path) -> ModuleType:
    """Import ``linear_transformer.py`` from a local clone of the authors' repository, on the CPU."""
    source = path / "linear_transformer.py"
    if not source.is_file():
        raise ValueError(f"--reference must be a clone of chengxiang/LinearTransformer; no {source}")
    spec = importlib.util.spec_from_file_location("linear_transformer", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.device = torch.device("cpu")  # their functions read this global; it is "cuda" when a GPU exists
    return module


def reference_step(args: argparse.Namespace, module: ModuleType) -> Callable[[], float]:
    """One training step of the authors' Transformer_F on fresh prompts from their generate_data."""
    streams = rng.streams(args.seed)
    covariance = tasks.covariance_from_condition_number(args.dim, args.condition_number, generator=streams.task)
    eigenvalues, rotation = torch.linalg.eigh(covariance)
    U = rotation.float()  # their x = U D ε, so Σ = U D² Uᵀ
    D = torch.diag(eigenvalues.sqrt()).float()
    # Their code draws from the global generator. Seeding it here (a benchmark, not the library) makes
    # their data reproducible; timings do not depend on it.
    torch.manual_seed(args.seed)
    model = module.Transformer_F(args.n_layers, 1, args.dim, 0.0001)
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

    def step() -> float:
        Z, y = module.generate_data("normal", args.n_context, args.dim, args.batch, 0.1, U, D)
        loss = module.in_context_loss(model, Z, y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return loss.item()

    return step


def profile(step: Callable[[], float], repeats: int, label: str) -> None:
    """Print torch.profiler's table of ``repeats`` steps (shapes recorded) to stderr."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(repeats):
            step()
    table = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=30)
    print(f"--- {label}: {repeats} steps ---\n{table}", file=sys.stderr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=5)
    parser.add_argument("--n-context", type=int, default=20)
    parser.add_argument("--n-layers", type=int, default=3)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per implementation")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per implementation first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--condition-number", type=float, default=16.0, help="κ of the rotated Σ")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-size", type=int, default=2048, help="side of the square matmul for the peak")
    parser.add_argument("--reference", type=Path, default=None, help="clone of chengxiang/LinearTransformer")
    parser.add_argument("--profile", action="store_true", help="also print a profile of 10 steps to stderr")
    args = parser.parse_args(argv)
    for name in ("dim", "n_context", "n_layers", "batch", "steps", "threads", "peak_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.condition_number < 1:
        parser.error(f"--condition-number must be >= 1, got {args.condition_number}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = {"ours": our_step(args)}
    if args.reference is not None:
        steps["reference"] = reference_step(args, load_reference(args.reference))

    peak_rates = matmul_gflops(args.peak_size, 3)
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for round_ in range(args.steps):
        for name in order if round_ % 2 == 0 else reversed(order):  # flip the order: no side always goes first
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
        if round_ == args.steps // 2:
            peak_rates += matmul_gflops(args.peak_size, 3)
    peak_rates += matmul_gflops(args.peak_size, 3)
    if args.profile:
        for name, step in steps.items():
            profile(step, 10, name)

    sec_per_step = statistics.median(times["ours"])
    flops = model_flops(args.dim, args.n_context, args.n_layers, args.batch)
    peak = max(peak_rates)
    result = {
        "timed": "icl: sample_regression(task_prior='inverse_covariance') + to_tokens + LinearTransformer("
        "parameterisation='eleven') + read_out + MSE + backward + torch.optim.Adam, CPU",
        "sec_per_step": sec_per_step,
        "steps_per_sec": 1 / sec_per_step,
        "gflops": flops / sec_per_step / 1e9,
        "peak_gflops": peak,
        "fraction_of_peak": flops / sec_per_step / 1e9 / peak,
        "model_gflop_per_step": flops / 1e9,
        "sec_per_step_quartiles": quartiles(times["ours"]),
        "peak_gflops_median": statistics.median(peak_rates),
        "dim": args.dim,
        "n_context": args.n_context,
        "n_layers": args.n_layers,
        "batch": args.batch,
        "parameterisation": "eleven",
        "task_prior": "inverse_covariance",
        "condition_number": args.condition_number,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0],  # other processes on the same cores inflate every timing
    }
    if args.reference is not None:
        reference = statistics.median(times["reference"])
        result |= {
            "reference_sec_per_step": reference,
            "reference_sec_per_step_quartiles": quartiles(times["reference"]),
            "speedup": reference / sec_per_step,
            "reference_path": str(args.reference),
            "reference_timed": "chengxiang/LinearTransformer linear_transformer.py: generate_data('normal', U, D) + "
            "Transformer_F(n_layer, n_head=1) + in_context_loss + backward + torch.optim.Adam, CPU, no clipping",
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
