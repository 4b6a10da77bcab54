"""A plain training loop: fresh prompts every step, Adam, a cosine learning-rate decay.

The loop knows nothing of the model beyond its ``objective`` (by default :func:`query_loss`, ``model(Z)`` read by
:func:`icl.tokens.read_out`). With an
ensemble of E models the objective is the *sum* of their mean squared errors: Adam's update is
elementwise, so each model trains exactly as it would alone (no global gradient clipping).

Checkpoints (model, optimiser, loss history, the training generator's state) are written
atomically every ``checkpoint_every`` steps and after the last; a run restarted with the same
checkpoint path resumes bit-for-bit where the last checkpoint left it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm import tqdm

from icl import store
from icl.config import finite_float, one_of, positive_int
from icl.optimisers import MemberwiseOptimiser
from icl.store import atomic_torch_save
from icl.tasks import RegressionBatch, restrict_dimensions, truncate_prompts
from icl.tokens import read_out, to_tokens

PromptSampler = Callable[[torch.Generator], RegressionBatch]
OPTIMISERS: tuple[str, ...] = ("adam", "sgd")
CLIP_SCOPES: tuple[str, ...] = ("parameter", "global")
"""Draws one training batch: X (E, B, n, d), y (E, B, n), x_query (E, B, d), y_query (E, B)."""
Objective = Callable[[torch.nn.Module, RegressionBatch], torch.Tensor]
"""A model's training loss on a batch, one value per ensemble member: (E,)."""


def query_loss(model: torch.nn.Module, batch: RegressionBatch) -> torch.Tensor:
    """The MSE of the prediction at the query, read from the canonical tokens (the linear transformers'). -> (E,)."""
    predictions = read_out(model(to_tokens(batch.X, batch.y, batch.x_query)))
    return ((predictions - batch.y_query) ** 2).mean(-1)


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings. The learning rate decays from ``learning_rate`` to
    ``final_learning_rate_fraction · learning_rate`` along a cosine over ``steps``."""

    steps: int
    learning_rate: float = 1e-2
    final_learning_rate_fraction: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    checkpoint_every: int = 500
    clip_norm: float | None = None  # each member's gradient norm capped here, per parameter or globally (clip_scope)
    clip_scope: str = "parameter"  # "parameter": each (E, ...) slice on its own; "global": all of a member's at once
    optimiser: str = "adam"  # "adam", or "sgd": stochastic gradient descent (``betas`` unused), with ``momentum``
    momentum: float = 0.0  # SGD's heavy-ball momentum (PyTorch's convention, no dampening)
    # Members that train differently, side by side (icl.optimisers): one rule ("adam" or "sgd") and one learning rate
    # per member; the schedule scales each member's rate as it scales ``learning_rate``.
    member_optimisers: tuple[str, ...] | None = None
    member_learning_rates: tuple[float, ...] | None = None
    # Garg et al.'s curriculum on the dimension: with ``curriculum_start_dim`` set, step t trains on x with only its
    # first curriculum_start_dim + t // curriculum_every coordinates non-zero (tasks.restrict_dimensions), up to all.
    curriculum_start_dim: int | None = None
    curriculum_every: int = 2000
    # … and, with ``curriculum_examples_per_dim`` set too, prompts of only their first per_dim · (active dims) + 1
    # examples (the last of them the query), up to the whole prompt: Garg et al. grow the prompt by 2 per dimension.
    curriculum_examples_per_dim: int | None = None

    def __post_init__(self) -> None:
        positive_int("train_steps", self.steps)
        one_of("optimiser", self.optimiser, OPTIMISERS)
        finite_float("learning_rate", self.learning_rate, minimum=0.0, strict=True)
        fraction = finite_float("final_learning_rate_fraction", self.final_learning_rate_fraction, minimum=0.0)
        if fraction > 1:
            raise ValueError(f"final_learning_rate_fraction must be in [0, 1], got {fraction!r}")
        positive_int("checkpoint_every", self.checkpoint_every)
        if self.clip_norm is not None:
            finite_float("clip_norm", self.clip_norm, minimum=0.0, strict=True)
        one_of("clip_scope", self.clip_scope, CLIP_SCOPES)
        momentum = finite_float("momentum", self.momentum, minimum=0.0)
        if momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        for i, rule in enumerate(self.member_optimisers or ()):
            one_of(f"member_optimisers[{i}]", rule, OPTIMISERS)
        for i, rate in enumerate(self.member_learning_rates or ()):
            finite_float(f"member_learning_rates[{i}]", rate, minimum=0.0, strict=True)
        members = {len(v) for v in (self.member_optimisers, self.member_learning_rates) if v is not None}
        if len(members) > 1:
            raise ValueError(
                "member_optimisers and member_learning_rates must have one entry per member each, got "
                f"{len(self.member_optimisers or ())} and {len(self.member_learning_rates or ())}"
            )
        if self.curriculum_start_dim is not None:
            positive_int("curriculum_start_dim", self.curriculum_start_dim)
        positive_int("curriculum_every", self.curriculum_every)
        if self.curriculum_examples_per_dim is not None:
            positive_int("curriculum_examples_per_dim", self.curriculum_examples_per_dim)

    def active_dims(self, step: int, dim: int) -> int:
        """How many leading coordinates of x step ``step`` (0-based) trains on: all ``dim`` without a curriculum."""
        if self.curriculum_start_dim is None:
            return dim
        return min(dim, self.curriculum_start_dim + step // self.curriculum_every)

    def active_examples(self, step: int, dim: int, examples: int) -> int:
        """How many examples (the query included) of a prompt of ``examples`` step ``step`` trains on."""
        if self.curriculum_examples_per_dim is None:
            return examples
        return min(examples, self.curriculum_examples_per_dim * self.active_dims(step, dim) + 1)

    def learning_rate_at(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based)."""
        progress = step / max(self.steps - 1, 1)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        low = self.final_learning_rate_fraction
        return self.learning_rate * (low + (1 - low) * cosine)


class TrainingDiverged(FloatingPointError):
    """A member's training loss became NaN or infinite: raised within 100 steps of it and before any checkpoint holds
    it, naming the members and the first such step, instead of training on for hours to a result no check can pass.
    ``step`` (1-based) and ``members`` hold them for a caller that reports the divergence as a result."""

    def __init__(self, message: str, *, step: int = 0, members: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.step, self.members = step, members


class TrainResult(NamedTuple):
    """losses: (steps, E), the training MSE of every model at every step (on that step's fresh prompts).

    With ``snapshot_every = k``, ``snapshots[name]`` is (T, *shape) with the parameter ``name`` before
    the first step and after every k-th step (and after the last), at steps ``snapshot_steps``: (T,).
    """

    losses: torch.Tensor
    snapshot_steps: torch.Tensor
    snapshots: dict[str, torch.Tensor]


def train(
    model: torch.nn.Module,
    sample: PromptSampler,
    config: TrainConfig,
    *,
    generator: torch.Generator,
    checkpoint: Path | None = None,
    progress: bool = True,
    description: str = "training",
    snapshot_every: int | None = None,
    objective: Objective = query_loss,
) -> TrainResult:
    """Train ``model`` in place on fresh prompts from ``sample(generator)``, minimising the sum over the members of
    ``objective(model, batch)``; returns the loss curves.

    If ``checkpoint`` exists it is loaded and training resumes from its step (the caller keys the path
    by the run's configuration, so a checkpoint is never shared between different runs). The last
    step writes one too, so resuming a finished run returns at once; the caller deletes it once the
    result is safe elsewhere (:func:`fit_cached` does, after the store has it).
    """
    optimiser = _optimiser(model, config)
    if snapshot_every is not None:
        snapshot_every = positive_int("snapshot_every", snapshot_every)

    def snapshot() -> dict[str, torch.Tensor]:
        return {name: p.detach().cpu().clone() for name, p in model.named_parameters()}

    # The loss history lives in one tensor allocated once: a new tiny tensor per step, kept alive between the step's
    # large short-lived buffers, fragments glibc's heap (measured: +120 KB resident memory per step, 1.4 GB after
    # 8000 steps of chapter 03's run).
    start, losses = 0, None
    snapshots: list[dict[str, torch.Tensor]] = [snapshot()] if snapshot_every else []
    snapshot_steps = [0] if snapshot_every else []
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, weights_only=True, map_location=generator.device)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        generator.set_state(state["generator"].cpu())
        start = int(state["step"])
        losses = torch.empty(
            (config.steps, *state["losses"].shape[1:]), dtype=state["losses"].dtype, device=generator.device
        )
        losses[:start] = state["losses"]
        snapshot_steps = state["snapshot_steps"].tolist()
        # map_location put them on the device; snapshots are kept on the CPU (see snapshot())
        snapshots = [{k: v[t].cpu() for k, v in state["snapshots"].items()} for t in range(len(snapshot_steps))]

    # A plain text bar (no widgets), refreshed every 2 s so that notebooks and CI logs stay small.
    bar = tqdm(
        range(start, config.steps),
        desc=description,
        disable=not progress,
        initial=start,
        total=config.steps,
        mininterval=2.0,
    )
    checked = start  # the losses of steps [start, checked) are known to be finite
    for step in bar:
        for group in optimiser.param_groups:
            group["lr"] = config.learning_rate_at(step)
        batch = sample(generator)
        active = config.active_dims(step, batch.X.shape[-1])
        if active < batch.X.shape[-1]:
            batch = restrict_dimensions(batch, active)
        examples = batch.X.shape[-2] + 1
        kept = config.active_examples(step, batch.X.shape[-1], examples)
        if kept < examples:
            batch = truncate_prompts(batch, kept)
        per_model = objective(model, batch)  # (E,)
        optimiser.zero_grad(set_to_none=True)
        per_model.sum().backward()
        if config.clip_norm is not None:
            clip = _clip_per_model_ if config.clip_scope == "parameter" else _clip_global_per_model_
            clip(model, config.clip_norm)
        optimiser.step()
        if losses is None:
            losses = torch.empty((config.steps, *per_model.shape), dtype=per_model.dtype, device=per_model.device)
        losses[step] = per_model.detach()
        done = step + 1
        checkpoint_due = checkpoint is not None and (done % config.checkpoint_every == 0 or done == config.steps)
        if done % 100 == 0 or done == config.steps or checkpoint_due:  # one synchronisation per 100 steps on a GPU
            _check_finite(losses, start=checked, done=done, description=description)  # before any checkpoint
            checked = done
            bar.set_postfix(mse=f"{per_model.mean().item():.4f}")
        if snapshot_every and (done % snapshot_every == 0 or done == config.steps):
            snapshots.append(snapshot())
            snapshot_steps.append(done)
        if checkpoint_due:
            state = {
                "step": done,
                "model": model.state_dict(),
                "optimiser": optimiser.state_dict(),
                "generator": generator.get_state(),
                "losses": losses[:done].clone(),
                **_stacked(snapshot_steps, snapshots),
            }
            atomic_torch_save(state, checkpoint)
    bar.close()
    return TrainResult(
        losses=losses.cpu() if losses is not None else torch.empty(0), **_stacked(snapshot_steps, snapshots)
    )


def _check_finite(losses: torch.Tensor, *, start: int, done: int, description: str) -> None:
    """Raise :class:`TrainingDiverged` if any loss of steps [start, done) is not finite. losses: (steps, E)."""
    window = losses[start:done].reshape(done - start, -1)
    finite = torch.isfinite(window)
    if bool(finite.all()):
        return
    members = (~finite).any(0).nonzero().flatten().tolist()
    first = start + int((~finite).any(1).nonzero()[0])
    raise TrainingDiverged(
        f"{description}: the training loss of ensemble member(s) {members} became NaN or infinite at step {first + 1} "
        f"(checked at step {done}); lower the learning rate or tighten the gradient clip",
        step=first + 1,
        members=tuple(members),
    )


def _optimiser(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The loss sums the members' MSEs, so with an elementwise rule each member's step is its own."""
    if config.member_optimisers is None and config.member_learning_rates is None:
        if config.optimiser == "sgd":
            return torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum)
        return torch.optim.Adam(model.parameters(), lr=config.learning_rate, betas=config.betas)
    members = len(config.member_optimisers or config.member_learning_rates or ())
    ensemble = next(model.parameters()).shape[0]
    if members != ensemble:
        raise ValueError(f"member_optimisers / member_learning_rates have {members} entries for {ensemble} members")
    rates = config.member_learning_rates or (config.learning_rate,) * members
    return MemberwiseOptimiser(
        model.parameters(),
        lr=config.learning_rate,
        rules=config.member_optimisers or (config.optimiser,) * members,
        scales=[rate / config.learning_rate for rate in rates],
        betas=config.betas,
        momentum=config.momentum,
    )


@torch.no_grad()
def _clip_global_per_model_(model: torch.nn.Module, max_norm: float) -> None:
    """Scale all of each member's gradients by one factor so that their joint norm is at most ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_`` does for one model (the same 1e-6 guard); members stay independent."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    norms = torch.stack([g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads]).sum(0).sqrt()  # (E,)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for grad in grads:
        grad.mul_(scale.reshape(-1, *([1] * (grad.ndim - 1))))


@torch.no_grad()
def _clip_per_model_(model: torch.nn.Module, max_norm: float) -> None:
    """Scale each parameter's gradient, separately for every ensemble member (leading axis E), to norm at
    most ``max_norm``, as Ahn et al.'s code clips each matrix; members stay independent of one another."""
    for parameter in model.parameters():
        if parameter.grad is None:
            continue
        grad = parameter.grad
        norms = grad.reshape(grad.shape[0], -1).norm(dim=1)  # (E,)
        scale = (max_norm / norms.clamp_min(1e-30)).clamp(max=1.0)
        grad.mul_(scale.reshape(-1, *([1] * (grad.ndim - 1))))


def _stacked(steps: list[int], snapshots: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    stacked = {name: torch.stack([s[name] for s in snapshots]) for name in snapshots[0]} if snapshots else {}
    return {"snapshot_steps": torch.tensor(steps, dtype=torch.long), "snapshots": stacked}


def fit_cached(
    name: str,
    config: Any,
    part: str,
    model: torch.nn.Module,
    sample: PromptSampler,
    train_config: TrainConfig,
    *,
    generator: torch.Generator,
    progress: bool,
    description: str = "",
    snapshot_every: int | None = None,
    objective: Objective = query_loss,
) -> TrainResult:
    """Train ``model`` in place, or load its trained weights from the store; returns the loss curves (steps, E)
    and, with ``snapshot_every``, the parameters over training (see :class:`icl.train.TrainResult`).

    The store key is (``name``-``part``, ``config``, the source of what training runs through: the modules that
    define ``sample``, the model, ``objective`` and the config, this trainer, and every ``icl`` module they import);
    ``part`` is a short slug naming the sub-run (``"n20"``). While training, a checkpoint under the same key lets a
    killed run resume; the trained state is stored only once complete.
    """
    key = f"{name}-{part}"
    roots = [getattr(f, "__module__", None) for f in (sample, type(model), objective, type(config))]
    # A sampler without a module (a functools.partial) could come from anywhere: key it by the whole package (no roots).
    roots = [__name__, *roots] if all(roots) else []
    modules = store.key_modules(roots)
    checkpoint = store.checkpoint_path(store.config_key(key, config, modules))

    def compute() -> dict[str, Any]:
        if not checkpoint.exists():
            store.describe(checkpoint, key, config, modules)  # so that `icl store list` can name it
        result = train(
            model,
            sample,
            train_config,
            generator=generator,
            checkpoint=checkpoint,
            progress=progress,
            description=description or part,
            snapshot_every=snapshot_every,
            objective=objective,
        )
        return {"state": model.state_dict(), **result._asdict()}

    stored = store.cached(key, config, compute, roots=roots)
    # Only now, with the trained state stored, may the checkpoint go: a kill before this line resumes.
    checkpoint.unlink(missing_ok=True)
    checkpoint.with_suffix(".json").unlink(missing_ok=True)
    model.load_state_dict(stored["state"])
    return TrainResult(*(stored[field] for field in TrainResult._fields))
