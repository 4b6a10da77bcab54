"""Training throughput of the GPT-2-style softmax transformer (:class:`icl.models.SoftmaxTransformer`) on CPU.

One timed step is what :func:`icl.train.train` does per step for it: fresh prompts from
:func:`icl.tasks.sample_regression` (x ~ N(0, I_d), w ~ N(0, I_d)), the forward pass over the interleaved tokens, the
all-prefix loss (:func:`icl.models.all_prefix_loss`), the backward pass and one Adam step, for an ensemble of
``--members`` models. The script prints one JSON line: median seconds per step, steps and member-steps per second,
and the model's matmul FLOP rate against this machine's fp32 matmul peak.

Model FLOPs per member and step (matmuls only; T = 2k tokens, D width, L layers, B prompts):

    per token and layer   2 · (3D² + D² + 8D²) = 24 D²      QKV, attention output, MLP in and out
    attention per layer   2 · 2 · T² D / 2                  QKᵀ and (softmax) V over the causal half
    read-in, read-out     2 · T d D + 2 · k D
    step                  3 · B · [L (24 D² T + 2 T² D) + 2 T d D + 2 k D]

(the factor 3 counts forward + backward). LayerNorm, GELU, softmax, sampling and Adam are not counted, so
``fraction_of_peak`` is the useful share of the peak. The peak is the best rate of a large square fp32 ``torch.mm``
with the same thread count, measured before, between and after the timed steps.

With ``--hugging-face`` (needs ``transformers``, the ``test`` extra) the same run also times Garg et al.'s model as
they built it: a Hugging Face ``GPT2Model`` of the same configuration (tanh GELU, dropout 0, its default attention)
between a read-in ``Linear(d, width)`` and a read-out ``Linear(width, 1)``, one model per member (a Hugging Face model
has one set of weights), on the same prompts, loss and Adam; ``speedup_vs_hugging_face`` is the ratio of member-steps
per second. ``tests/test_gpt2_equivalence.py`` shows the two compute the same function on the same weights.

    python bench/softmax_throughput.py --members 3 --width 64 --layers 4 --heads 4 --examples 11 --batch 64 \
        --threads 2 --hugging-face
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import matmul_gflops, quartiles  # noqa: E402

from icl import rng, tasks  # noqa: E402
from icl.models import SoftmaxTransformer, all_prefix_loss  # noqa: E402


def model_flops(args: argparse.Namespace) -> int:
    """Forward + backward matmul FLOPs of one training step of one member; the formula is in the docstring."""
    D, L, k, d = args.width, args.layers, args.examples, args.dim
    T = 2 * k
    per_prompt = L * (24 * D**2 * T + 2 * T**2 * D) + 2 * T * d * D + 2 * k * D
    return 3 * args.batch * per_prompt


def hugging_face_member_steps_per_sec(args: argparse.Namespace) -> float:
    """Member-steps per second of Garg et al.'s model: ``transformers.GPT2Model`` with their read-in and read-out,
    one model per member trained in turn, each step on fresh prompts from the same sampler, loss and optimiser."""
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_positions=2 * args.examples,
        n_embd=args.width,
        n_layer=args.layers,
        n_head=args.heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,
        activation_function="gelu_new",
    )
    models = [
        torch.nn.ModuleList(
            [torch.nn.Linear(args.dim, args.width), transformers.GPT2Model(config), torch.nn.Linear(args.width, 1)]
        )
        for _ in range(args.members)
    ]
    optimisers = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]
    generator = rng.streams(0).train

    def step(model: torch.nn.ModuleList, optimiser: torch.optim.Optimizer) -> None:
        batch = tasks.sample_regression(args.batch, args.examples - 1, torch.eye(args.dim), generator=generator)
        xs = torch.cat([batch.X, batch.x_query.unsqueeze(-2)], -2)
        ys = torch.cat([batch.y, batch.y_query.unsqueeze(-1)], -1)
        labels = torch.zeros_like(xs)
        labels[..., 0] = ys
        tokens = torch.stack([xs, labels], dim=2).flatten(1, 2)
        read_in, backbone, read_out = model
        hidden = backbone(inputs_embeds=read_in(tokens)).last_hidden_state
        loss = ((read_out(hidden[:, 0::2]).squeeze(-1) - ys) ** 2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    def all_members() -> None:
        for model, optimiser in zip(models, optimisers, strict=True):
            step(model, optimiser)

    for _ in range(args.warmup):
        all_members()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        all_members()
        times.append(time.perf_counter() - start)
    return args.members / statistics.median(times)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=5)
    parser.add_argument("--examples", type=int, default=11, help="examples per training prompt, the query included")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--members", type=int, default=6, help="models trained side by side (seeds × regimes)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peak-size", type=int, default=2048)
    parser.add_argument("--hugging-face", action="store_true", help="also time transformers.GPT2Model (see above)")
    args = parser.parse_args(argv)
    for name in ("dim", "examples", "width", "layers", "heads", "members", "batch", "steps", "threads", "peak_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    streams = rng.streams(0)
    model = SoftmaxTransformer(
        args.dim,
        width=args.width,
        n_layers=args.layers,
        n_heads=args.heads,
        max_examples=args.examples,
        n_models=args.members,
        generator=streams.init,
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    covariance = torch.eye(args.dim).expand(args.members, args.dim, args.dim)

    def step() -> None:
        batch = tasks.sample_regression(args.batch, args.examples - 1, covariance, generator=streams.train)
        loss = all_prefix_loss(model, batch).sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    peak_rates = matmul_gflops(args.peak_size, 3)
    for _ in range(args.warmup):
        step()
    times = []
    for i in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        if i == args.steps // 2:
            peak_rates += matmul_gflops(args.peak_size, 3)
    peak_rates += matmul_gflops(args.peak_size, 3)

    hugging_face = hugging_face_member_steps_per_sec(args) if args.hugging_face else None
    sec_per_step = statistics.median(times)
    flops = model_flops(args) * args.members
    peak = max(peak_rates)
    print(
        json.dumps(
            {
                "timed": "icl: sample_regression + SoftmaxTransformer + all_prefix_loss + backward + Adam, CPU",
                "sec_per_step": sec_per_step,
                "steps_per_sec": 1 / sec_per_step,
                "member_steps_per_sec": args.members / sec_per_step,
                "gflops": flops / sec_per_step / 1e9,
                "peak_gflops": peak,
                "fraction_of_peak": flops / sec_per_step / 1e9 / peak,
                "model_gflop_per_step": flops / 1e9,
                "parameters_per_member": sum(p.numel() for p in model.parameters()) // args.members,
                "sec_per_step_quartiles": quartiles(times),
                **(
                    {
                        "hugging_face_member_steps_per_sec": hugging_face,
                        "speedup_vs_hugging_face": args.members / sec_per_step / hugging_face,
                    }
                    if hugging_face
                    else {}
                ),
                **{k: v for k, v in vars(args).items()},
                "torch": torch.__version__,
                "python": platform.python_version(),
                "cpu_count": os.cpu_count(),
                "load_average": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
