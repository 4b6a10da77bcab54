"""What the optimisation gap depends on, on the same linear transformer (Ahn, Cheng, Song, Yun, Jadbabaie and Sra
2024, Fig. 4, Fig. 7 and Fig. 8; the paper note ``papers/ahn2024_linear_attention.md``):

- **attention**: Adam trains the linear model far faster than the same model with softmax attention (the authors'
  code's semantics), the softmax model at the best of a grid of learning rates, all in one batched sweep;
- **data**: inputs on the sphere against inputs with a heavy-tailed Gamma radius: Adam ahead of SGD with momentum
  in both, the heavier tail giving the heavier gradient noise;
- **depth**: L layers for L in ``depths``: Adam's lead over SGD with momentum grows with depth.

Every run is an :mod:`icl.optimisation` ensemble (chapter 13's Setting 1 and Setting 3 runs are shared with it).
Shapes in the result: ``S`` seeds, ``E = 2S`` members (SGD with momentum for the S seeds, then Adam), ``R`` softmax
learning rates, ``D`` depths, ``T`` test points, ``H`` Hessian points, ``K`` noise samples.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from icl import optimisation
from icl.checks import ClaimChecks
from icl.config import finite_float, positive_int
from icl.train import TrainingDiverged

NAME = "attention_data_depth"
DATA = ("gamma", "sphere")  # the data comparison's two settings, in the result's order


@dataclass(frozen=True)
class AttentionDataDepthConfig(optimisation.OptimisationExperimentConfig):
    """The experiment's parameters (and the optimisation chapters' shared ones); every field is validated on
    construction. ``n_layers`` is the depth of the attention and data comparisons."""

    depths: tuple[int, ...] = (2, 4, 6, 8)
    sphere_clip_norm: float = 0.1  # the authors' code's clip for spheres; clip_norm is tried too
    softmax_learning_rates: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05)
    at_scale: bool = True  # Fig. 5's larger model (paper preset only: a GPU's work)
    scale_layers: int = 8
    scale_dim: int = 20
    scale_learning_rates: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03)  # the book's grid, for each optimiser

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared fields
        depths = tuple(positive_int(f"depths[{i}]", L) for i, L in enumerate(self.depths))
        if len(depths) < 2 or sorted(set(depths)) != list(depths):
            raise ValueError(f"depths must be at least two increasing depths, got {self.depths}")
        self._set("depths", depths)
        for name in ("softmax_learning_rates", "scale_learning_rates"):
            rates = tuple(
                finite_float(f"{name}[{i}]", r, minimum=0.0, strict=True) for i, r in enumerate(getattr(self, name))
            )
            if not rates:
                raise ValueError(f"{name} must hold at least one rate, got ()")
            self._set(name, rates)
        if not isinstance(self.at_scale, bool):
            raise ValueError(f"at_scale must be True or False, got {self.at_scale!r}")
        for name in ("scale_layers", "scale_dim"):
            self._set(name, positive_int(name, getattr(self, name)))
        self._set("sphere_clip_norm", finite_float("sphere_clip_norm", self.sphere_clip_norm, minimum=0.0, strict=True))
        self.measures()  # validates the rest
        self.run("gaussian")

    def scale_run(self) -> optimisation.RunConfig:
        """Fig. 5's larger model: d = ``scale_dim``, ``scale_layers`` layers, n = 60, both optimisers at each rate of
        ``scale_learning_rates``."""
        rates = self.scale_learning_rates
        return self.run(
            "long",
            n_layers=self.scale_layers,
            dim=self.scale_dim,
            optimisers=("sgd",) * len(rates) + ("adam",) * len(rates),
            learning_rates=rates + rates,
        )

    def softmax_sweep(self) -> optimisation.RunConfig:
        """Setting 1 with softmax attention, one Adam arm per learning rate of the grid."""
        rates = self.softmax_learning_rates
        return self.run("gaussian", attention="softmax", optimisers=("adam",) * len(rates), learning_rates=rates)


CONFIG = AttentionDataDepthConfig
# What `quick` changes against the paper (the config's defaults), and why (see icl.presets).
QUICK: dict[str, Any] = dict(
    at_scale=False,
    depths=(2, 4),
    softmax_learning_rates=(0.005, 0.05),
    n_seeds=2,
    train_steps=2000,
    hessian_until=1250,
    hessian_prompts=250,
    noise_samples=500,
    noise_full_batch=20_000,
)
WHY_QUICK: dict[str, str] = dict(
    at_scale="Fig. 5's 8-layer model at d = 20, n = 60 is a GPU's work: 8 rate-optimiser arms × 6 seeds, 10,000 steps",
    softmax_learning_rates="the two ends of the grid: a softmax step costs four times a linear one, and at 2000 steps "
    "all four rates ended within 2 % of each other (seed 0, when the chapter was built)",
    depths="L ∈ {2, 4}, the paper note's plan for a CPU: a deeper model costs more per step and its Hessian grows",
    n_seeds="2 seeds (each trained by both optimisers), the paper note's plan for a CPU",
    train_steps="2000 steps instead of 10,000: the gaps are open by step 500",
    hessian_until="Hessians up to step 1250, where the paper's table ends",
    hessian_prompts="Hessians on 250 test prompts instead of 1000 (a Hessian costs one Hessian-vector product per "
    "parameter)",
    noise_samples="500 minibatch gradients at the start instead of 10,000",
    noise_full_batch="the reference gradient on 20,000 prompts instead of 100,000",
)


class AttentionDataDepthResult(NamedTuple):
    """Every number the chapter plots or checks; losses are MSE (no ½), on each run's fixed test batch."""

    test_steps: torch.Tensor  # (T,)
    linear_loss: torch.Tensor  # (T, S) test MSE of the linear model trained by Adam (Setting 1, n_layers)
    softmax_learning_rates: torch.Tensor  # (R,)
    softmax_loss: torch.Tensor  # (T, R, S) test MSE of the softmax model trained by Adam at each rate
    data_loss: torch.Tensor  # (2, T, E) test MSE in Setting 3 (Gamma radius), then on the sphere; SGD then Adam
    data_noise: torch.Tensor  # (2, K, S) ‖g_B − g‖ at each seed's start, Gamma then sphere
    hessian_steps: torch.Tensor  # (H,)
    data_condition_eigen: torch.Tensor  # (2, H, E) robust condition number by the Hessian's eigenvalues
    data_condition_diagonal: torch.Tensor  # (2, H, E) the same by its diagonal (the authors' code)
    sphere_divergence_step: int  # the step at which the sphere run with clip_norm diverged; 0: it did not
    depths: torch.Tensor  # (D,)
    depth_loss: torch.Tensor  # (D, T, E) test MSE in Setting 1 at each depth; SGD then Adam
    depth_noise: torch.Tensor  # (D, K, S) ‖g_B − g‖ at each seed's start
    depth_condition_eigen: torch.Tensor  # (D, H, E)
    depth_condition_diagonal: torch.Tensor  # (D, H, E)
    scale_learning_rates: torch.Tensor  # (G,) Fig. 5's grid, for each optimiser; (0,) when not run (quick)
    scale_loss: torch.Tensor  # (T, 2G, S) test MSE of the larger model: SGD at each rate, then Adam at each
    scale_noise: torch.Tensor  # (K, S) ‖g_B − g‖ at the larger model's starts
    elapsed_seconds: float


def run(config: AttentionDataDepthConfig, *, progress: bool = True) -> AttentionDataDepthResult:
    """Train (or load) every ensemble and measure it."""
    start = time.perf_counter()
    measure = lambda run, **kw: optimisation.measure(run, config.measures(**kw), progress=progress)  # noqa: E731
    linear = measure(config.run("gaussian"), hessians=False, noise=False)
    softmax = measure(config.softmax_sweep(), hessians=False, noise=False)
    data = [
        measure(config.run("gamma")),
        measure(config.run("sphere", clip_norm=config.sphere_clip_norm)),
    ]
    depth = [measure(config.run("gaussian", n_layers=L)) for L in config.depths]
    scale = measure(config.scale_run(), hessians=False) if config.at_scale else None  # too many parameters for Hessians
    stack = lambda runs, key: torch.stack([m[key] for m in runs])  # noqa: E731
    return AttentionDataDepthResult(
        test_steps=linear["test_steps"],
        linear_loss=optimisation.by_arm(linear["test_loss"])[:, 1],
        softmax_learning_rates=torch.tensor(config.softmax_learning_rates, dtype=torch.float64),
        softmax_loss=optimisation.by_arm(softmax["test_loss"], len(config.softmax_learning_rates)),
        data_loss=stack(data, "test_loss"),
        data_noise=stack(data, "noise"),
        hessian_steps=data[0]["hessian_steps"],
        data_condition_eigen=stack(data, "condition_eigen"),
        data_condition_diagonal=stack(data, "condition_diagonal"),
        sphere_divergence_step=sphere_divergence(config, progress=progress),
        depths=torch.tensor(config.depths),
        depth_loss=stack(depth, "test_loss"),
        depth_noise=stack(depth, "noise"),
        depth_condition_eigen=stack(depth, "condition_eigen"),
        depth_condition_diagonal=stack(depth, "condition_diagonal"),
        scale_learning_rates=torch.tensor(
            config.scale_learning_rates if scale is not None else (), dtype=torch.float64
        ),
        scale_loss=(
            optimisation.by_arm(scale["test_loss"], 2 * len(config.scale_learning_rates))
            if scale is not None
            else torch.empty(len(linear["test_steps"]), 0, config.n_seeds)
        ),
        scale_noise=scale["noise"] if scale is not None else torch.empty(0, config.n_seeds),
        elapsed_seconds=time.perf_counter() - start,
    )


def sphere_divergence(config: AttentionDataDepthConfig, *, progress: bool = True) -> int:
    """Train the sphere run at ``clip_norm`` (the paper's stated clip) instead of the code's ``sphere_clip_norm``: the
    step at which a member's loss became NaN or infinite, or 0 if none did (the run is then stored, unused). A
    diverged run stores nothing, so every call retries it; it stops within 100 steps of the divergence."""
    if config.clip_norm == config.sphere_clip_norm:
        return 0
    try:
        optimisation.trained(config.run("sphere"), progress=progress)
    except TrainingDiverged as diverged:
        return diverged.step
    return 0


def softmax_finals(result: AttentionDataDepthResult) -> torch.Tensor:
    """The softmax model's seed-mean final test loss at each learning rate: (R,)."""
    r = result
    return (
        optimisation.final_loss(r.test_steps, r.softmax_loss.flatten(-2))
        .unflatten(-1, r.softmax_loss.shape[-2:])
        .mean(-1)
    )


def linear_over_softmax(result: AttentionDataDepthResult) -> float:
    """The linear model's seed-mean final test loss over the softmax model's at its best learning rate."""
    linear = optimisation.final_loss(result.test_steps, result.linear_loss).mean()
    return (linear / softmax_finals(result).min()).item()


def claim_checks(result: AttentionDataDepthResult) -> ClaimChecks:
    """The paper note's targets 6, 7 and 8 (Fig. 4, Fig. 8, Fig. 7); the chapter states each bar."""
    r = result
    checks = ClaimChecks()
    checks.at_most(
        "Setting 1, Adam: final test loss of linear attention / softmax attention at its best rate (seed means)",
        linear_over_softmax(r),
        0.5,
        reason="Fig. 4: the linear model trains much faster (the paper note's bar: below half)",
    )
    ratios = optimisation.adam_over_sgd(r.test_steps, r.data_loss)  # (2,)
    checks.at_most(
        "Gamma radius and sphere: Adam's final test loss / SGD with momentum's (seed means), the larger",
        ratios.max().item(),
        1.0,
        reason="Fig. 7: Adam ahead with either input law",
    )
    tails = optimisation.tail_ratio(r.data_noise)
    checks.at_least(
        "gradient noise at the start: q99/q50 of ‖g_B − g‖, Gamma radius over sphere",
        (tails[0] / tails[1]).item(),
        1.0,
        reason="Fig. 7: the heavier-tailed inputs give the heavier-tailed noise",
    )
    by_depth = optimisation.adam_over_sgd(r.test_steps, r.depth_loss)  # (D,)
    shallow, deep = int(r.depths[0]), int(r.depths[-1])
    checks.at_most(
        f"Setting 1: Adam/SGD final-loss ratio at L = {deep} over the ratio at L = {shallow}",
        (by_depth[-1] / by_depth[0]).item(),
        1.0,
        reason="Fig. 8: the deeper model gives Adam the larger lead",
    )
    if r.scale_learning_rates.numel():
        checks.at_most(
            "Fig. 5's larger model: Adam's final test loss at its best rate / SGD's at its best (seed means)",
            scale_ratio(r),
            1.0,
            reason="Fig. 5: Adam ahead at scale too",
        )
    return checks


def scale_finals(result: AttentionDataDepthResult) -> tuple[torch.Tensor, torch.Tensor]:
    """The larger model's seed-mean final test loss at each rate: SGD's and Adam's, (G,) each."""
    r = result
    finals = optimisation.final_loss(r.test_steps, r.scale_loss.flatten(-2)).unflatten(-1, r.scale_loss.shape[-2:])
    sgd, adam = finals.mean(-1).unflatten(-1, (2, -1)).unbind(0)
    return sgd, adam


def scale_ratio(result: AttentionDataDepthResult) -> float:
    """Adam's best seed-mean final test loss over SGD's best, on Fig. 5's larger model."""
    sgd, adam = scale_finals(result)
    return (adam.min() / sgd.min()).item()


def summary(result: AttentionDataDepthResult) -> dict[str, float | int | str]:
    """The numbers the chapter's prose quotes, by glue name (without the chapter's prefix)."""
    r = result
    softmax = softmax_finals(r)
    best = int(softmax.argmin())
    out: dict[str, float | int | str] = {
        "steps": int(r.test_steps[-1]),
        "seeds": r.data_noise.shape[-1],
        "linear_final": optimisation.final_loss(r.test_steps, r.linear_loss).mean().item(),
        "softmax_best_rate": r.softmax_learning_rates[best].item(),
        "softmax_best_final": softmax[best].item(),
        "softmax_worst_final": softmax.max().item(),
        "linear_over_softmax": linear_over_softmax(r),
        "sphere_divergence_step": r.sphere_divergence_step,
    }
    finals = optimisation.by_arm(optimisation.final_loss(r.test_steps, r.data_loss)).mean(-1)  # (2, 2)
    tails = optimisation.tail_ratio(r.data_noise)
    for c, setting in enumerate(DATA):
        out[f"{setting}_sgd"], out[f"{setting}_adam"] = finals[c].tolist()
        out[f"{setting}_ratio"] = (finals[c, 0] / finals[c, 1]).item()
        out[f"{setting}_tail"] = tails[c].item()
    out["tail_ratio"] = (tails[0] / tails[1]).item()
    finals = optimisation.by_arm(optimisation.final_loss(r.test_steps, r.depth_loss)).mean(-1)  # (D, 2)
    tails = optimisation.tail_ratio(r.depth_noise)
    for d, L in enumerate(r.depths.tolist()):
        out[f"L{L}_sgd"], out[f"L{L}_adam"] = finals[d].tolist()
        out[f"L{L}_ratio"] = (finals[d, 0] / finals[d, 1]).item()
        out[f"L{L}_tail"] = tails[d].item()
    depths = r.depths.tolist()
    out["depth_spikes"] = depth_spikes(r)
    out["depth_gain"] = out[f"L{depths[0]}_ratio"] / out[f"L{depths[-1]}_ratio"]  # the check's value
    out["depth_table"] = _listing([f"{out[f'L{L}_ratio']:.3g} at L = {L}" for L in depths])
    out["depth_tails"] = _listing([f"{out[f'L{L}_tail']:.2f} at L = {L}" for L in depths])
    out["sphere_gap_word"] = "larger" if out["sphere_ratio"] >= out["gamma_ratio"] else "smaller"
    for step in (750, 1250):
        if step in r.hessian_steps.tolist():
            for version, data, depth in (
                ("eigen", r.data_condition_eigen, r.depth_condition_eigen),
                ("diagonal", r.data_condition_diagonal, r.depth_condition_diagonal),
            ):
                for c, setting in enumerate(DATA):
                    out[f"{setting}_{version}_{step}"] = (
                        optimisation.condition_ratio(data[c], r.hessian_steps, step).mean().item()
                    )
                for d, L in enumerate(r.depths.tolist()):
                    out[f"L{L}_{version}_{step}"] = (
                        optimisation.condition_ratio(depth[d], r.hessian_steps, step).mean().item()
                    )
    if r.scale_learning_rates.numel():
        sgd, adam = scale_finals(r)
        out["scale_sgd"], out["scale_adam"] = sgd.min().item(), adam.min().item()
        out["scale_sgd_rate"] = r.scale_learning_rates[int(sgd.argmin())].item()
        out["scale_adam_rate"] = r.scale_learning_rates[int(adam.argmin())].item()
        out["scale_ratio"] = scale_ratio(r)
        out["scale_tail"] = optimisation.tail_ratio(r.scale_noise).item()
    out["minutes"] = r.elapsed_seconds / 60
    return out


def depth_spikes(result: AttentionDataDepthResult) -> str:
    """A sentence on the depth runs whose test loss rose above its value at the start (about the zero predictor's,
    the start being small) after the first 10 % of the steps, a spike that then dominates a seed mean; or that none
    did."""
    r = result
    late = r.test_steps >= 0.1 * r.test_steps[-1]
    found = []
    for d, L in enumerate(r.depths.tolist()):
        peaks = r.depth_loss[d, late].max(0).values / r.depth_loss[d, 0]  # (E,)
        arms = [
            f"{int((arm > 1).sum())} of the {arm.numel()} runs of {name} (to {arm.max().item():.2g} times its loss at "
            "the start)"
            for name, arm in zip(("SGD with momentum", "Adam"), optimisation.by_arm(peaks).unbind(-2), strict=True)
            if bool((arm > 1).any())
        ]
        if arms:
            found.append(f"at L = {L}, " + _listing(arms))
    if not found:
        return "No run's test loss rose above its value at the start after the first 10 % of the steps."
    return (
        "Some runs' test loss rose above its value at the start after the first 10 % of the steps: "
        + "; ".join(found)
        + ". Such a spike weighs heavily in a seed mean."
    )


def _listing(items: list[str]) -> str:
    """'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def key_arrays(result: AttentionDataDepthResult) -> dict[str, Any]:
    """The arrays behind the figures and checks, for the chapter's JSON (without the larger model's when it did not
    run: an empty array's shape does not survive JSON)."""
    skipped = {"elapsed_seconds"} | (
        {"scale_learning_rates", "scale_loss", "scale_noise"} if not result.scale_learning_rates.numel() else set()
    )
    return {k: v for k, v in result._asdict().items() if k not in skipped}
