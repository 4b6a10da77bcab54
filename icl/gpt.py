"""The trained GPT the softmax chapters share: Garg et al.'s (2022) GPT-2 on in-context linear regression.

One :class:`GPTConfig` names one trained ensemble (``n_seeds`` members, independent draws of one seed's streams), and
the result store keys it by that config alone: every chapter that asks for the same configuration loads the same
weights, so a book build trains it once. Training prints a progress bar, checkpoints, and resumes after a kill
(:func:`icl.train.fit_cached`).

Prompts (Garg et al.): x ~ N(0, I_d) (``covariance="identity"``) or, for Zhang, Frei and Bartlett's (2023) Fig. 1,
a covariance diag(λ), λ ~ Exp(1), drawn per prompt (``"random_diagonal"``), or for Fu et al.'s (2024) Fig. 4 a
two-level covariance of condition number κ in a random eigenbasis per prompt (``"two_level"``); w ~ N(0, I_d);
y = ⟨w, x⟩, no noise;
``train_examples`` examples per prompt (Garg et al.: 2d + 1), the loss averaged over every x position
(:func:`icl.models.all_prefix_loss`). Garg et al.'s curriculum: with ``curriculum_start_dim`` set, the first
``curriculum_every`` steps see x with only that many non-zero coordinates and prompts of 2 · that + 1 examples, and
each further ``curriculum_every`` steps add one coordinate and two examples, up to d and ``train_examples``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from icl import rng, tasks
from icl.config import ExperimentConfig, finite_float, one_of, positive_int, validate_device, validate_seed
from icl.models import SoftmaxTransformer, all_prefix_loss
from icl.train import TrainConfig, TrainResult, fit_cached

COVARIANCES: tuple[str, ...] = ("identity", "random_diagonal", "two_level")

# The `quick` model every softmax chapter shares (their presets start from these, so the store serves one training to
# all of them), and why each value differs from Garg et al.'s.
QUICK: dict[str, Any] = dict(
    dim=5,
    max_context=20,
    width=64,
    n_layers=4,
    n_heads=4,
    train_steps=8000,
    batch_size=32,
    learning_rate=1e-3,
    curriculum_start_dim=1,
    curriculum_every=100,
)
WHY_QUICK: dict[str, str] = dict(
    dim="d = 5 instead of 20, so prompts of 2d + 1 = 11 examples instead of 41 (the paper note's CPU scale)",
    max_context="positions for prompts of up to 21 examples, as chapter 11 tests (only the first 11 train)",
    width="a 0.2M-parameter GPT-2 (width 64, 4 layers, 4 heads) instead of 9.5M (256, 12, 8)",
    n_layers="4 layers instead of 12",
    n_heads="4 heads instead of 8",
    train_steps="8000 Adam steps instead of 500,000: about 6 minutes per ensemble of 3 on 2 cores",
    batch_size="32 prompts per step instead of 64: at equal compute, twice the steps learned more (bench/README.md)",
    learning_rate="10⁻³ decayed along a cosine instead of a constant 10⁻⁴, for the short budget",
    curriculum_start_dim="from 1 coordinate and 3 examples (Garg et al.: 5 of 20, and 11), so that it still grows",
    curriculum_every="one more coordinate and two more examples every 100 steps, not every 2000",
)
EVAL_CHUNK = 512  # prompts per forward pass at evaluation: (E, 512, T, width) activations stay tens of MB


@dataclass(frozen=True)
class GPTConfig:
    """One trained ensemble; every field is validated on construction. Defaults are Garg et al.'s (d = 20)."""

    dim: int = 20
    train_examples: int = 41  # examples per training prompt, the query included (2d + 1)
    max_examples: int = 101  # the learned positions cover prompts this long; beyond train_examples they never train
    width: int = 256
    n_layers: int = 12
    n_heads: int = 8
    covariance: str = "identity"
    condition_number: float = 100.0  # κ of the "two_level" covariances (Fu et al.'s ill-conditioned prompts)
    n_seeds: int = 3
    train_steps: int = 500_000
    batch_size: int = 64
    learning_rate: float = 1e-4
    curriculum_start_dim: int | None = 5
    curriculum_every: int = 2000
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        names = ("dim", "train_examples", "width", "n_layers", "n_heads", "n_seeds", "train_steps", "batch_size")
        for name in (*names, "curriculum_every"):
            put(name, positive_int(name, getattr(self, name)))
        put("max_examples", positive_int("max_examples", self.max_examples, minimum=self.train_examples))
        if self.width % self.n_heads:
            raise ValueError(f"width ({self.width}) must be a multiple of n_heads ({self.n_heads})")
        one_of("covariance", self.covariance, COVARIANCES)
        put("condition_number", finite_float("condition_number", self.condition_number, minimum=1.0))
        put("learning_rate", finite_float("learning_rate", self.learning_rate, minimum=0.0, strict=True))
        if self.curriculum_start_dim is not None:
            put("curriculum_start_dim", positive_int("curriculum_start_dim", self.curriculum_start_dim))
        put("seed", validate_seed(self.seed))
        validate_device(self.device)

    @property
    def n_context(self) -> int:
        """N: the labelled examples before the last query of a training prompt."""
        return self.train_examples - 1


# The fields a chapter's config shares with GPTConfig, under the same names.
SHARED_FIELDS: tuple[str, ...] = (
    "dim",
    "width",
    "n_layers",
    "n_heads",
    "n_seeds",
    "train_steps",
    "batch_size",
    "learning_rate",
    "curriculum_every",
    "seed",
    "device",
)


@dataclass(frozen=True)
class GPTExperimentConfig(ExperimentConfig):
    """The fields of a chapter whose model is the shared GPT, with Garg et al.'s values as defaults (the ``paper``
    preset), validated once here; a chapter's config subclasses it, adds its own fields and validates them. The
    model's own checks (width divisible by n_heads, …) name the field as well."""

    dim: int = 20
    max_context: int = 100  # the learned positions cover prompts of max_context + 1 examples (part of the store key)
    width: int = 256
    n_layers: int = 12
    n_heads: int = 8
    n_seeds: int = 3
    train_steps: int = 500_000
    batch_size: int = 64
    learning_rate: float = 1e-4
    curriculum_start_dim: int = 5  # Garg et al.'s curriculum: x starts with this many non-zero coordinates …
    curriculum_every: int = 2000  # … and gains one (and the prompt two examples) every this many steps

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared training fields
        put = self._set
        names = ("dim", "max_context", "width", "n_layers", "n_heads", "curriculum_start_dim", "curriculum_every")
        for name in names:
            put(name, positive_int(name, getattr(self, name)))
        if self.width % self.n_heads:
            raise ValueError(f"width ({self.width}) must be a multiple of n_heads ({self.n_heads})")


@dataclass(frozen=True)
class GargExperimentConfig(GPTExperimentConfig):
    """A chapter on Garg et al.'s own prompts: 2d + 1 examples, x ~ N(0, I_d), so its model is the GPT trained on
    covariance I with prompts of that length (chapters 10 and 12 share it)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("max_context", positive_int("max_context", self.max_context, minimum=2 * self.dim))
        self.gpt()

    @property
    def examples(self) -> int:
        """Examples per prompt, in training and in the tests: 2d + 1 (Garg et al.)."""
        return 2 * self.dim + 1

    def gpt(self) -> GPTConfig:
        """The shared GPT: trained on covariance I with prompts of 2d + 1 examples."""
        return config_for(self, n_context=self.examples - 1, covariance="identity")


def config_for(chapter_config: Any, *, n_context: int, covariance: str, condition_number: float = 100.0) -> GPTConfig:
    """The GPT a chapter's config asks for: its :data:`SHARED_FIELDS`, positions for prompts of
    ``max_context + 1`` examples, training prompts of ``n_context + 1`` and the given training covariance."""
    return GPTConfig(
        train_examples=n_context + 1,
        max_examples=chapter_config.max_context + 1,
        covariance=covariance,
        condition_number=condition_number,
        curriculum_start_dim=min(chapter_config.curriculum_start_dim, chapter_config.dim),
        **{name: getattr(chapter_config, name) for name in SHARED_FIELDS},
    )


def model(config: GPTConfig) -> SoftmaxTransformer:
    """The untrained ensemble of ``config`` (its initial weights come from the seed's ``init`` stream)."""
    return SoftmaxTransformer(
        config.dim,
        width=config.width,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        max_examples=config.max_examples,
        n_models=config.n_seeds,
        generator=rng.streams(config.seed, config.device, part=_part(config)).init,
    )


def _part(config: GPTConfig) -> int:
    return COVARIANCES.index(config.covariance)  # the training distributions draw independent streams


def sample_training(config: GPTConfig, generator: torch.Generator) -> tasks.RegressionBatch:
    """One batch of training prompts per member: (E, B, N, d) contexts and their queries."""
    E, B, N, d = config.n_seeds, config.batch_size, config.n_context, config.dim
    if config.covariance == "identity":
        identity = torch.eye(d, device=generator.device).expand(E, d, d)
        return tasks.sample_regression(B, N, identity, generator=generator)
    if config.covariance == "two_level":
        return tasks.sample_two_level_regression(B, N, d, config.condition_number, generator=generator, lead=(E,))
    batch, _ = tasks.sample_random_diagonal_regression(B, N, d, generator=generator, lead=(E,))
    return batch


def train_config(config: GPTConfig) -> TrainConfig:
    """Garg et al.'s schedule at ``config``'s budget: Adam with a cosine decay, the curriculum growing x by one
    coordinate and the prompt by two examples every ``curriculum_every`` steps."""
    return TrainConfig(
        steps=config.train_steps,
        learning_rate=config.learning_rate,
        curriculum_start_dim=config.curriculum_start_dim,
        curriculum_every=config.curriculum_every,
        curriculum_examples_per_dim=2,
    )


def trained(config: GPTConfig, *, progress: bool = True) -> tuple[SoftmaxTransformer, TrainResult]:
    """The trained ensemble of ``config``, from the store or trained now (resuming a killed run), with its loss
    curves: ``losses`` (train_steps, E), the all-prefix training loss of every step."""
    gpt = model(config)
    result = fit_cached(
        "gpt",
        config,
        config.covariance,
        gpt,
        lambda g: sample_training(config, g),
        train_config(config),
        generator=rng.streams(config.seed, config.device, part=_part(config)).train,
        progress=progress,
        description=f"GPT ({config.covariance}), {config.n_seeds} seeds",
        objective=all_prefix_loss,
    )
    return gpt, result


def predictions(gpt: SoftmaxTransformer, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Every member's prediction at every x position, without gradients, a chunk of prompts at a time:
    xs (B, k, d), ys (B, k) -> (E, B, k). Position i sees the examples before it and x_i."""
    with torch.no_grad():
        return torch.cat(
            [gpt(xs[i : i + EVAL_CHUNK], ys[i : i + EVAL_CHUNK]) for i in range(0, len(xs), EVAL_CHUNK)], 1
        )
