"""What makes a linear transformer hard to train, as Ahn, Cheng, Song, Yun, Jadbabaie and Sra (2024) measure it: one
ensemble per setting trains every seed with SGD with momentum and with Adam side by side, and its landscape is then
measured from the parameters saved at every step (the paper note, ``papers/ahn2024_linear_attention.md``).

The model is the (11) form (``parameterisation="eleven"``: P = [[B, 0], [0, 1]], Q = −diag(A, 0)) with L layers,
d = 5, one head, entries N(0, 0.05²). Members: SGD with momentum 0.9 for seeds 0 … S − 1, then Adam with
β = (0.9, 0.9) for the same seeds: member s and member S + s start from the same weights and see the same prompts
(as the authors' runs for one seed do), so the two optimisers are compared pair by pair. Both clip each member's
global gradient norm at ``clip_norm`` and keep their learning rate constant. Shapes: ``E = 2S`` members, ``T`` saved
steps, ``P`` parameters per member.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from icl import curvature, rng, tasks
from icl.config import finite_float, one_of, positive_int, validate_device, validate_seed
from icl.models import LinearTransformer
from icl.store import cached
from icl.tokens import read_out, to_tokens
from icl.train import TrainConfig, TrainResult, fit_cached

OPTIMISERS: tuple[str, ...] = ("sgd", "adam")  # member order: every seed with SGD with momentum, then with Adam
MOMENTUM, BETAS = 0.9, (0.9, 0.9)


class Setting(NamedTuple):
    """One of the paper's data settings (Table 1, d = 5) with its code's learning rates (SGD with momentum, Adam)."""

    label: str
    n_context: int
    covariate_law: str
    learning_rates: tuple[float, float]

    def zero_loss(self, dim: int) -> float:
        """The zero predictor's MSE, E y² = E‖x‖² (w ~ N(0, I)): d for Gaussian x, 1 on the sphere and 1 for the
        Gamma radius at the authors' scale (k = 0.1: E G = √(10k))."""
        return float(dim) if self.covariate_law == "gaussian" else 1.0


SETTINGS: dict[str, Setting] = {
    "gaussian": Setting("Setting 1: x ~ N(0, I), n = 20", 20, "gaussian", (0.02, 0.02)),
    "short": Setting("Setting 2: x ~ N(0, I), n = 5", 5, "gaussian", (0.01, 0.005)),
    "gamma": Setting("Setting 3: Gamma-radius x, n = 20", 20, "gamma", (0.02, 0.02)),
    "sphere": Setting("x on the sphere, n = 20", 20, "sphere", (5.0, 0.1)),
}


@dataclass(frozen=True)
class RunConfig:
    """One ensemble: a setting, a depth and an attention, ``n_seeds`` seeds × both optimisers. The store keys its
    training by this config alone, so chapters that ask for the same run share it."""

    setting: str = "gaussian"
    n_layers: int = 3
    dim: int = 5
    attention: str = "linear"
    learning_rates: tuple[float, float] | None = None  # (SGD, Adam); None: the setting's
    n_seeds: int = 6
    train_steps: int = 10_000
    batch_size: int = 1000
    init_std: float = 0.05
    clip_norm: float = 1.0
    snapshot_every: int = 1
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        one_of("setting", self.setting, tuple(SETTINGS))
        one_of("attention", self.attention, ("linear", "softmax"))
        for name in ("n_layers", "dim", "n_seeds", "train_steps", "batch_size", "snapshot_every"):
            object.__setattr__(self, name, positive_int(name, getattr(self, name)))
        for name in ("init_std", "clip_norm"):
            object.__setattr__(self, name, finite_float(name, getattr(self, name), minimum=0.0, strict=True))
        if self.learning_rates is not None:
            rates = tuple(
                finite_float(f"learning_rates[{i}]", r, strict=True) for i, r in enumerate(self.learning_rates)
            )
            if len(rates) != 2:
                raise ValueError(f"learning_rates must be (SGD's, Adam's), got {self.learning_rates}")
            object.__setattr__(self, "learning_rates", rates)
        object.__setattr__(self, "seed", validate_seed(self.seed))
        validate_device(self.device)

    @property
    def rates(self) -> tuple[float, float]:
        return self.learning_rates or SETTINGS[self.setting].learning_rates

    @property
    def n_context(self) -> int:
        return SETTINGS[self.setting].n_context

    @property
    def part(self) -> str:
        return f"{self.setting}-L{self.n_layers}-{self.attention}"


def model(config: RunConfig, *, twice_differentiable: bool = False, paired: bool = True) -> LinearTransformer:
    """The untrained ensemble: S initialisations, each shared by its SGD and its Adam member, (E = 2S, ...); with
    ``paired=False`` the S initialisations alone, (S, ...)."""
    S = config.n_seeds

    def build(n_models: int, generator: torch.Generator) -> LinearTransformer:
        return LinearTransformer(
            config.dim,
            config.n_layers,
            parameterisation="eleven",
            n_models=n_models,
            init_std=config.init_std,
            generator=generator,
            attention=config.attention,
            twice_differentiable=twice_differentiable,
        )

    ensemble = build(2 * S, rng.streams(config.seed, config.device, part=_part_index(config)).init)
    with torch.no_grad():
        for parameter in ensemble.parameters():
            parameter[S:] = parameter[:S]
    if paired:
        return ensemble
    starts = build(S, torch.Generator(device=config.device))  # its own draws are replaced at once
    starts.load_state_dict({name: value[:S] for name, value in ensemble.state_dict().items()})
    return starts


def _part_index(config: RunConfig) -> int:
    return list(SETTINGS).index(config.setting)  # settings draw independent streams; depth and attention do not


def sample(config: RunConfig, size: int, generator: torch.Generator, *, paired: bool = True) -> tasks.RegressionBatch:
    """Prompts of the setting: one batch per seed, (S, size, ...), given to both of its members when ``paired``
    ((2S, size, ...))."""
    S, d = config.n_seeds, config.dim
    identity = torch.eye(d, device=generator.device).expand(S, d, d)
    law = SETTINGS[config.setting].covariate_law
    batch = tasks.sample_regression(size, config.n_context, identity, generator=generator, covariate_law=law)
    return tasks.RegressionBatch(*(torch.cat([t, t]) for t in batch)) if paired else batch


def train_config(config: RunConfig) -> TrainConfig:
    sgd, adam = config.rates
    return TrainConfig(
        steps=config.train_steps,
        learning_rate=adam,
        final_learning_rate_fraction=1.0,  # constant, as in the authors' code
        betas=BETAS,
        momentum=MOMENTUM,
        member_optimisers=("sgd",) * config.n_seeds + ("adam",) * config.n_seeds,
        member_learning_rates=(sgd,) * config.n_seeds + (adam,) * config.n_seeds,
        clip_norm=config.clip_norm,
        clip_scope="global",
    )


def trained(config: RunConfig, *, progress: bool = True) -> tuple[LinearTransformer, TrainResult]:
    """The trained ensemble of ``config`` and its training losses (steps, E) and parameters at every
    ``snapshot_every``-th step (from the store, or trained now, resuming a killed run)."""
    ensemble = model(config)
    result = fit_cached(
        "optimisation",
        config,
        config.part,
        ensemble,
        lambda g: sample(config, config.batch_size, g),
        train_config(config),
        generator=rng.streams(config.seed, config.device, part=_part_index(config)).train,
        progress=progress,
        description=f"{config.part}: SGD with momentum and Adam, {config.n_seeds} seeds",
        snapshot_every=config.snapshot_every,
    )
    return ensemble, result


@dataclass(frozen=True)
class Measures:
    """What to measure on a trained run, and how finely (the ``quick`` preset coarsens these)."""

    test_every: int = 50  # test loss every this many steps, on one fixed batch of n_test prompts
    n_test: int = 1000
    smoothness_until: int = 2000  # directional smoothness along the steps taken, over the first steps
    smoothness_every: int = 1
    hessian_steps: tuple[int, ...] = tuple(range(0, 10_001, 250))
    hessian_prompts: int = 1000  # the batch the Hessians are taken on (its first prompts of the test batch)
    noise_samples: int = 10_000  # minibatch gradients at the start, against a gradient of noise_full_batch prompts
    noise_full_batch: int = 100_000

    def __post_init__(self) -> None:
        for name in ("test_every", "n_test", "smoothness_until", "smoothness_every", "hessian_prompts"):
            object.__setattr__(self, name, positive_int(name, getattr(self, name)))
        for name in ("noise_samples", "noise_full_batch"):
            object.__setattr__(self, name, positive_int(name, getattr(self, name), minimum=2))
        steps = tuple(positive_int(f"hessian_steps[{i}]", s, minimum=0) for i, s in enumerate(self.hessian_steps))
        object.__setattr__(self, "hessian_steps", steps)


def measure(config: RunConfig, measures: Measures, *, progress: bool = True) -> dict[str, torch.Tensor]:
    """The landscape of the trained run (stored, so a chapter's rerun costs seconds):

    - ``training_loss`` (steps, E): MSE on each step's fresh prompts;
    - ``test_steps`` (T₁,), ``test_loss`` (T₁, E): MSE on one fixed batch (its own stream);
    - ``smoothness_steps`` (T₂,), ``smoothness`` (T₂, E): (x_{t+1} − x_t)ᵀ ∇²f(x_t) (x_{t+1} − x_t) / ‖x_{t+1} − x_t‖²
      on that batch, and ``gradient_norm`` (T₂, E): ‖∇f(x_t)‖;
    - ``hessian_steps`` (H,), ``condition_eigen`` and ``condition_diagonal`` (H, E): the robust condition number
      of the Hessian on the first ``hessian_prompts`` test prompts, by eigenvalues and by the diagonal;
    - ``noise`` (K, S): ‖g_B − g‖ for K minibatch gradients g_B (``batch_size`` prompts each) at every seed's
      initialisation, g the gradient on ``noise_full_batch`` prompts.
    """
    steps = sorted(s for s in measures.hessian_steps if s <= config.train_steps)
    key = {"run": config, "measures": measures}
    return cached(f"optimisation-measures-{config.part}", key, lambda: _measure(config, measures, steps, progress))


def _measure(config: RunConfig, measures: Measures, hessian_steps: list[int], progress: bool) -> dict[str, Any]:
    _, result = trained(config, progress=progress)
    every = config.snapshot_every
    saved = result.snapshot_steps.tolist()
    probe = model(config, twice_differentiable=True)
    streams = rng.streams(config.seed, config.device, part=_part_index(config))
    test = sample(config, measures.n_test, streams.eval)
    small = tasks.RegressionBatch(*(t[:, : measures.hessian_prompts] for t in test))

    def at(step: int) -> None:
        index = saved.index(step)
        with torch.no_grad():
            for name, parameter in probe.named_parameters():
                parameter.copy_(result.snapshots[name][index])

    def losses_on(batch: tasks.RegressionBatch):
        tokens = to_tokens(batch.X, batch.y, batch.x_query)
        return lambda: ((read_out(probe(tokens)) - batch.y_query) ** 2).mean(-1)

    params = list(probe.parameters())
    test_steps = [s for s in saved if s % measures.test_every == 0 or s == config.train_steps]
    test_loss = []
    for step in test_steps:
        at(step)
        with torch.no_grad():
            test_loss.append(losses_on(test)())
    smooth_steps = [s for s in saved if s < measures.smoothness_until and s % measures.smoothness_every == 0]
    smooth_steps = [s for s in smooth_steps if s + every in saved]
    smoothness, gradient_norm = [], []
    for step in _bar(smooth_steps, progress, f"{config.part}: directional smoothness"):
        at(step + every)
        after = [p.detach().clone() for p in params]
        at(step)
        direction = [a - p.detach() for a, p in zip(after, params, strict=True)]
        gradient, along = curvature.gradient_and_smoothness(losses_on(test), params, direction)
        smoothness.append(along)
        gradient_norm.append(gradient.norm(dim=1))
    eigen, diagonal = [], []
    for step in _bar(hessian_steps, progress, f"{config.part}: Hessians"):
        at(step)
        by_eigenvalues, by_diagonal = curvature.hessian_condition_numbers(
            curvature.member_hessians(losses_on(small), params)
        )
        eigen.append(by_eigenvalues)
        diagonal.append(by_diagonal)
    rows = lambda values: torch.stack(values).double().cpu() if values else torch.empty(0, 2 * config.n_seeds)  # noqa: E731
    return {
        "training_loss": result.losses.double().cpu(),
        "test_steps": torch.tensor(test_steps),
        "test_loss": rows(test_loss),
        "smoothness_steps": torch.tensor(smooth_steps),
        "smoothness": rows(smoothness),
        "gradient_norm": rows(gradient_norm),
        "hessian_steps": torch.tensor(hessian_steps),
        "condition_eigen": rows(eigen),
        "condition_diagonal": rows(diagonal),
        "noise": gradient_noise(config, measures, progress=progress),
    }


def gradient_noise(config: RunConfig, measures: Measures, *, progress: bool = True) -> torch.Tensor:
    """‖g_B − g‖ at every seed's initialisation (the paper note's recipe): g on ``noise_full_batch`` fresh prompts (in
    chunks of ``batch_size``), then ``noise_samples`` minibatch gradients g_B of ``batch_size`` prompts. -> (K, S)."""
    start = model(config, paired=False)
    params = list(start.parameters())
    generator = rng.streams(config.seed, config.device, part=100 + _part_index(config)).eval

    def gradient(size: int) -> torch.Tensor:
        batch = sample(config, size, generator, paired=False)
        losses = lambda: ((start.predict(batch.X, batch.y, batch.x_query) - batch.y_query) ** 2).mean(-1)  # noqa: E731
        return curvature.member_gradients(losses, params).double()

    chunks = math.ceil(measures.noise_full_batch / config.batch_size)
    full = sum(gradient(config.batch_size) for _ in range(chunks)) / chunks
    draws = [gradient(config.batch_size) for _ in _bar(range(measures.noise_samples), progress, "gradient noise")]
    return (torch.stack(draws) - full).norm(dim=-1).cpu()


def _bar(items, progress: bool, description: str):
    from tqdm import tqdm

    return tqdm(items, desc=description, disable=not progress, mininterval=2.0)
