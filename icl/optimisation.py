"""What makes a linear transformer hard to train, as Ahn, Cheng, Song, Yun, Jadbabaie and Sra (2024) measure it: one
ensemble per setting trains every seed with SGD with momentum and with Adam side by side, and its landscape is then
measured from the parameters saved at every step (the paper note, ``papers/ahn2024_linear_attention.md``).

The model is the (11) form (``parameterisation="eleven"``: P = [[B, 0], [0, 1]], Q = −diag(A, 0)) with L layers,
d = 5, one head, entries N(0, 0.05²). The ensemble has one *arm* per (optimiser, learning rate) pair, by default SGD
with momentum 0.9 and then Adam with β = (0.9, 0.9), and each arm trains seeds 0 … S − 1: member a·S + s is seed s
of arm a. The arms' members of one seed start from the same weights and see the same prompts (as the authors' runs
for one seed do), so arms are compared pair by pair. Every member clips its own global gradient norm at
``clip_norm`` and keeps its learning rate constant. Shapes: ``E = A·S`` members (``2S`` by default), ``T`` saved
steps, ``P`` parameters per member.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from icl import curvature, rng, tasks
from icl.config import ExperimentConfig, finite_float, one_of, positive_int, validate_device, validate_seed
from icl.models import LinearTransformer
from icl.store import cached
from icl.tokens import read_out, to_tokens
from icl.train import TrainConfig, TrainResult, fit_cached

OPTIMISERS: tuple[str, ...] = ("sgd", "adam")  # the default arms: every seed with SGD with momentum, then with Adam
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
    # Fig. 5's larger model (d = 20, 8 layers) trains at a grid of rates the book chose; the paper gives none, so
    # these defaults are only the grid's middle.
    "long": Setting("Fig. 5: x ~ N(0, I), n = 60", 60, "gaussian", (0.01, 0.01)),
}


@dataclass(frozen=True)
class RunConfig:
    """One ensemble: a setting, a depth and an attention, ``n_seeds`` seeds × its arms (an optimiser and a learning
    rate each). The store keys its training, and each measurement, by this config alone, so chapters that ask for the
    same run share it."""

    setting: str = "gaussian"
    n_layers: int = 3
    dim: int = 5
    attention: str = "linear"
    optimisers: tuple[str, ...] = OPTIMISERS  # one arm each, in member order
    learning_rates: tuple[float, ...] | None = None  # one per arm; None: the setting's rate for each optimiser
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
        optimisers = tuple(self.optimisers) if isinstance(self.optimisers, tuple | list) else (self.optimisers,)
        if not optimisers:
            raise ValueError("optimisers must name at least one arm's optimiser, got ()")
        optimisers = tuple(one_of(f"optimisers[{i}]", o, OPTIMISERS) for i, o in enumerate(optimisers))
        object.__setattr__(self, "optimisers", optimisers)
        if self.learning_rates is not None:
            rates = tuple(
                finite_float(f"learning_rates[{i}]", r, minimum=0.0, strict=True)
                for i, r in enumerate(self.learning_rates)
            )
            if len(rates) != len(optimisers):
                raise ValueError(
                    f"learning_rates must give one rate per arm (optimisers={optimisers}), got {self.learning_rates}"
                )
            object.__setattr__(self, "learning_rates", rates)
        object.__setattr__(self, "seed", validate_seed(self.seed))
        validate_device(self.device)

    @property
    def rates(self) -> tuple[float, ...]:
        """Each arm's learning rate: the config's, or the setting's for the arm's optimiser."""
        defaults = SETTINGS[self.setting].learning_rates
        return self.learning_rates or tuple(defaults[OPTIMISERS.index(o)] for o in self.optimisers)

    @property
    def n_arms(self) -> int:
        return len(self.optimisers)

    @property
    def n_context(self) -> int:
        return SETTINGS[self.setting].n_context

    @property
    def part(self) -> str:
        """A short name of the run: ``gaussian-L3-linear``, with its arms when they are not the default two."""
        arms = "" if self.optimisers == OPTIMISERS else "-" + "-".join(self.optimisers)
        return f"{self.setting}-L{self.n_layers}-{self.attention}{arms}"


@dataclass(frozen=True)
class OptimisationExperimentConfig(ExperimentConfig):
    """The fields the optimisation chapters share, validated on construction; every default is the paper's protocol.
    A chapter's runs are :meth:`run` configs and its measurements :meth:`measures`, so that two chapters asking for
    the same run or the same measurement share it in the store. ``learning_rate`` is not used: runs train at the
    authors' rates (:data:`SETTINGS`) unless a run says otherwise."""

    n_layers: int = 3
    dim: int = 5
    n_seeds: int = 6
    train_steps: int = 10_000
    batch_size: int = 1000
    init_std: float = 0.05
    clip_norm: float = 1.0
    n_test: int = 1000
    test_every: int = 50
    hessian_every: int = 250
    hessian_until: int = 10_000
    hessian_prompts: int = 1000
    noise_samples: int = 10_000
    noise_full_batch: int = 100_000

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared training fields
        for name in ("n_layers", "dim", "test_every", "hessian_every"):
            self._set(name, positive_int(name, getattr(self, name)))
        self._set("hessian_until", positive_int("hessian_until", self.hessian_until, minimum=0))

    def run(self, setting: str, **changes: Any) -> RunConfig:
        """One ensemble: ``setting`` at ``n_layers`` with the default arms, unless ``changes`` says otherwise."""
        fields = dict(
            setting=setting,
            n_layers=self.n_layers,
            dim=self.dim,
            n_seeds=self.n_seeds,
            train_steps=self.train_steps,
            batch_size=self.batch_size,
            init_std=self.init_std,
            clip_norm=self.clip_norm,
            seed=self.seed,
            device=self.device,
        )
        return RunConfig(**(fields | changes))

    def measures(
        self, *, smoothness_until: int = 0, smoothness_every: int = 1, hessians: bool = True, noise: bool = True
    ) -> Measures:
        """The test loss, the directional smoothness up to ``smoothness_until`` (0: none), and the Hessians and the
        gradient noise unless left out."""
        return Measures(
            test_every=self.test_every,
            n_test=self.n_test,
            smoothness_until=smoothness_until,
            smoothness_every=smoothness_every,
            hessian_steps=tuple(range(0, self.hessian_until + 1, self.hessian_every)) if hessians else (),
            hessian_prompts=min(self.hessian_prompts, self.n_test),
            noise_samples=self.noise_samples if noise else 0,
            noise_full_batch=self.noise_full_batch,
        )


def model(config: RunConfig, *, twice_differentiable: bool = False, paired: bool = True) -> LinearTransformer:
    """The untrained ensemble: S initialisations, each shared by its member in every arm, (E = A·S, ...); with
    ``paired=False`` the S initialisations alone, (S, ...). The starts are the first S of 2S draws from the run's
    stream whatever the arms, so a run with other arms starts where the default one does."""
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

    drawn = build(2 * S, rng.streams(config.seed, config.device, part=_part_index(config)).init)
    copies = config.n_arms if paired else 1
    ensemble = drawn if copies == 2 else build(copies * S, torch.Generator(device=config.device))  # overwritten
    with torch.no_grad():
        for name, parameter in ensemble.named_parameters():
            start = drawn.get_parameter(name)[:S]
            parameter.copy_(start.repeat(copies, *([1] * (start.dim() - 1))))
    return ensemble


def _part_index(config: RunConfig) -> int:
    return list(SETTINGS).index(config.setting)  # settings draw independent streams; depth and attention do not


def sample(config: RunConfig, size: int, generator: torch.Generator, *, paired: bool = True) -> tasks.RegressionBatch:
    """Prompts of the setting: one batch per seed, (S, size, ...), given to its member in every arm when ``paired``
    ((A·S, size, ...))."""
    S, d = config.n_seeds, config.dim
    identity = torch.eye(d, device=generator.device).expand(S, d, d)
    law = SETTINGS[config.setting].covariate_law
    batch = tasks.sample_regression(size, config.n_context, identity, generator=generator, covariate_law=law)
    copies = config.n_arms if paired else 1
    return tasks.RegressionBatch(*(torch.cat([t] * copies) for t in batch))


def train_config(config: RunConfig) -> TrainConfig:
    S = config.n_seeds
    return TrainConfig(
        steps=config.train_steps,
        learning_rate=config.rates[-1],  # each member's own rate below is the one used
        final_learning_rate_fraction=1.0,  # constant, as in the authors' code
        betas=BETAS,
        momentum=MOMENTUM,
        member_optimisers=tuple(o for o in config.optimisers for _ in range(S)),
        member_learning_rates=tuple(r for r in config.rates for _ in range(S)),
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
        description=f"{config.part}: {config.n_arms} arms × {config.n_seeds} seeds",
        snapshot_every=config.snapshot_every,
    )
    return ensemble, result


@dataclass(frozen=True)
class Measures:
    """What to measure on a trained run, and how finely (the ``quick`` preset coarsens these). A zero
    ``smoothness_until`` or ``noise_samples``, or no ``hessian_steps``, leaves that measurement out."""

    test_every: int = 50  # test loss every this many steps, on one fixed batch of n_test prompts
    n_test: int = 1000
    smoothness_until: int = 2000  # directional smoothness along the steps taken, over the first steps
    smoothness_every: int = 1
    hessian_steps: tuple[int, ...] = tuple(range(0, 10_001, 250))
    hessian_prompts: int = 1000  # the batch the Hessians are taken on (its first prompts of the test batch)
    noise_samples: int = 10_000  # minibatch gradients at the start, against a gradient of noise_full_batch prompts
    noise_full_batch: int = 100_000

    def __post_init__(self) -> None:
        for name in ("test_every", "n_test", "smoothness_every", "hessian_prompts"):
            object.__setattr__(self, name, positive_int(name, getattr(self, name)))
        for name in ("smoothness_until", "noise_samples"):
            object.__setattr__(self, name, positive_int(name, getattr(self, name), minimum=0))
        if self.noise_samples == 1:
            raise ValueError("noise_samples must be 0 (no gradient noise) or at least 2, got 1")
        object.__setattr__(self, "noise_full_batch", positive_int("noise_full_batch", self.noise_full_batch, minimum=2))
        steps = tuple(positive_int(f"hessian_steps[{i}]", s, minimum=0) for i, s in enumerate(self.hessian_steps))
        object.__setattr__(self, "hessian_steps", steps)


def measure(config: RunConfig, measures: Measures, *, progress: bool = True) -> dict[str, torch.Tensor]:
    """The landscape of the trained run. Each measurement is stored on its own, keyed by the run and the fields of
    ``measures`` it reads, so chapters that measure the same run alike share it and a rerun costs seconds:

    - ``training_loss`` (steps, E): MSE on each step's fresh prompts;
    - ``test_steps`` (T₁,), ``test_loss`` (T₁, E): MSE on one fixed batch (its own stream);
    - ``smoothness_steps`` (T₂,), ``smoothness`` (T₂, E): (x_{t+1} − x_t)ᵀ ∇²f(x_t) (x_{t+1} − x_t) / ‖x_{t+1} − x_t‖²
      on that batch, and ``gradient_norm`` (T₂, E): ‖∇f(x_t)‖;
    - ``hessian_steps`` (H,), ``condition_eigen`` and ``condition_diagonal`` (H, E): the robust condition number
      of the Hessian on the first ``hessian_prompts`` test prompts, by eigenvalues and by the diagonal;
    - ``noise`` (K, S): ‖g_B − g‖ for K minibatch gradients g_B (``batch_size`` prompts each) at every seed's
      initialisation, g the gradient on ``noise_full_batch`` prompts.
    """
    _, result = trained(config, progress=progress)
    m = measures
    landscape = functools.cache(lambda: _Landscape(config, m, result))  # built only if something is measured
    hessian_steps = tuple(sorted(s for s in m.hessian_steps if s <= config.train_steps))

    def stored(what: str, fields: dict[str, Any], compute) -> dict[str, Any]:
        return cached(f"optimisation-{what}-{config.part}", {"run": config, **fields}, compute)

    return {
        "training_loss": result.losses.double().cpu(),
        **stored("test", dict(test_every=m.test_every, n_test=m.n_test), lambda: landscape().test_loss()),
        **stored(
            "smoothness",
            dict(n_test=m.n_test, until=m.smoothness_until, every=m.smoothness_every),
            lambda: landscape().smoothness(progress),
        ),
        **stored(
            "hessians",
            dict(n_test=m.n_test, prompts=m.hessian_prompts, steps=hessian_steps),
            lambda: landscape().hessians(hessian_steps, progress),
        ),
        **stored(
            "noise",
            dict(samples=m.noise_samples, full_batch=m.noise_full_batch),
            lambda: {"noise": gradient_noise(config, m, progress=progress)},
        ),
    }


class _Landscape:
    """The trained run's saved parameters, loaded one step at a time into a twice-differentiable copy of the model,
    and the losses on the fixed test batch."""

    def __init__(self, config: RunConfig, measures: Measures, result: TrainResult) -> None:
        self.config, self.measures, self.result = config, measures, result
        self.saved = result.snapshot_steps.tolist()
        self.probe = model(config, twice_differentiable=True)
        self.params = list(self.probe.parameters())
        streams = rng.streams(config.seed, config.device, part=_part_index(config))
        self.test = sample(config, measures.n_test, streams.eval)

    def at(self, step: int) -> None:
        index = self.saved.index(step)
        with torch.no_grad():
            for name, parameter in self.probe.named_parameters():
                parameter.copy_(self.result.snapshots[name][index])

    def losses_on(self, batch: tasks.RegressionBatch):
        tokens = to_tokens(batch.X, batch.y, batch.x_query)
        return lambda: ((read_out(self.probe(tokens)) - batch.y_query) ** 2).mean(-1)

    def rows(self, values: list[torch.Tensor]) -> torch.Tensor:
        return (
            torch.stack(values).double().cpu() if values else torch.empty(0, self.config.n_arms * self.config.n_seeds)
        )

    def test_loss(self) -> dict[str, torch.Tensor]:
        every, last = self.measures.test_every, self.config.train_steps
        steps = [s for s in self.saved if s % every == 0 or s == last]
        losses = []
        for step in steps:
            self.at(step)
            with torch.no_grad():
                losses.append(self.losses_on(self.test)())
        return {"test_steps": torch.tensor(steps), "test_loss": self.rows(losses)}

    def smoothness(self, progress: bool) -> dict[str, torch.Tensor]:
        m, every = self.measures, self.config.snapshot_every
        steps = [s for s in self.saved if s < m.smoothness_until and s % m.smoothness_every == 0]
        steps = [s for s in steps if s + every in self.saved]
        smoothness, gradient_norm = [], []
        for step in _bar(steps, progress, f"{self.config.part}: directional smoothness"):
            self.at(step + every)
            after = [p.detach().clone() for p in self.params]
            self.at(step)
            direction = [a - p.detach() for a, p in zip(after, self.params, strict=True)]
            gradient, along = curvature.gradient_and_smoothness(self.losses_on(self.test), self.params, direction)
            smoothness.append(along)
            gradient_norm.append(gradient.norm(dim=1))
        return {
            "smoothness_steps": torch.tensor(steps, dtype=torch.long),
            "smoothness": self.rows(smoothness),
            "gradient_norm": self.rows(gradient_norm),
        }

    def hessians(self, steps: tuple[int, ...], progress: bool) -> dict[str, torch.Tensor]:
        small = tasks.RegressionBatch(*(t[:, : self.measures.hessian_prompts] for t in self.test))
        eigen, diagonal = [], []
        for step in _bar(steps, progress, f"{self.config.part}: Hessians"):
            self.at(step)
            by_eigenvalues, by_diagonal = curvature.hessian_condition_numbers(
                curvature.member_hessians(self.losses_on(small), self.params)
            )
            eigen.append(by_eigenvalues)
            diagonal.append(by_diagonal)
        return {
            "hessian_steps": torch.tensor(steps, dtype=torch.long),
            "condition_eigen": self.rows(eigen),
            "condition_diagonal": self.rows(diagonal),
        }


def gradient_noise(config: RunConfig, measures: Measures, *, progress: bool = True) -> torch.Tensor:
    """‖g_B − g‖ at every seed's initialisation (the paper note's recipe): g on ``noise_full_batch`` fresh prompts (in
    chunks of ``batch_size``), then ``noise_samples`` minibatch gradients g_B of ``batch_size`` prompts. -> (K, S)
    (K = 0 when ``noise_samples`` is 0: nothing is computed)."""
    if measures.noise_samples == 0:
        return torch.empty(0, config.n_seeds, dtype=torch.float64)
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


def by_arm(values: torch.Tensor, n_arms: int = 2) -> torch.Tensor:
    """A (..., E = A·S) tensor of members as (..., A, S): arm by arm (by default SGD with momentum, then Adam)."""
    return values.unflatten(-1, (n_arms, values.shape[-1] // n_arms))


def final_loss(test_steps: torch.Tensor, test_loss: torch.Tensor) -> torch.Tensor:
    """Each member's test loss at the end of training: the median over the test points of the last 10 % of the
    steps (Adam with β₂ = 0.9 spikes now and then; one evaluation can land on a spike).
    (T,), (..., T, E) -> (..., E)."""
    late = test_steps >= 0.9 * test_steps[-1]
    return test_loss[..., late, :].median(-2).values


def adam_over_sgd(test_steps: torch.Tensor, test_loss: torch.Tensor) -> torch.Tensor:
    """Adam's seed-mean final test loss over SGD with momentum's (:func:`final_loss`), for the default arms:
    (T,), (..., T, E) -> (...)."""
    sgd, adam = by_arm(final_loss(test_steps, test_loss)).unbind(-2)
    return adam.mean(-1) / sgd.mean(-1)


def condition_ratio(condition: torch.Tensor, hessian_steps: torch.Tensor, step: int) -> torch.Tensor:
    """R_med of SGD with momentum over R_med of Adam at ``step``, seed by seed, for the default arms:
    (..., H, E) -> (..., S)."""
    sgd, adam = by_arm(condition[..., hessian_steps.tolist().index(step), :]).unbind(-2)
    return sgd / adam


def tail_ratio(noise: torch.Tensor) -> torch.Tensor:
    """q99 / q50 of ‖g_B − g‖, pooled over seeds: (..., K, S) -> (...). How far the noise's tail reaches."""
    pooled = noise.flatten(-2)
    return torch.quantile(pooled, 0.99, dim=-1) / torch.quantile(pooled, 0.5, dim=-1)


def _bar(items, progress: bool, description: str):
    from tqdm import tqdm

    return tqdm(items, desc=description, disable=not progress, mininterval=2.0)
