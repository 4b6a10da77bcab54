"""With the covariate rows trainable too (the (11) form), L layers learn GD++: A_ℓ = a_ℓ Σ⁻¹ and
B_ℓ = b_ℓ I, far below L steps of preconditioned GD (Ahn et al. 2023, Thm 4, Figs 3–7; Fig. 6 is the sweep
over context lengths).

Per layer P = [[B_ℓ, 0], [0, 1]], Q = −diag(A_ℓ, 0); A_ℓ and B_ℓ trained. Data x ~ N(0, Σ), w ~ N(0, Σ⁻¹),
noiseless, Σ = U diag(spectrum) Uᵀ with a random rotation per seed. Baselines on the same test prompts: L
steps of plain GD and of GD preconditioned by Σ⁻¹, each with one shared step size (fitted exactly on
validation prompts, and exact by theory for Σ⁻¹), and the sparse model's optimum (one step size per
layer, :func:`icl.theory.optimal_multi_step`).

Two claims, a module each: :mod:`.depths` (one ensemble per depth L at n_context; the run at ``n_layers``
records snapshots; Figs 3–5 and 7) and :mod:`.context_sweep` (Fig. 6, and the paper code's clip);
:mod:`.shared` holds the prompts, the training run and the test set both use.

Shapes in the result: ``D`` depths, ``S`` seeds, ``L`` layers of the main run, ``T`` snapshots.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from icl import evaluate
from icl.checks import ClaimChecks
from icl.config import (
    LinearExperimentConfig,
    finite_float,
    int_tuple,
    positive_float_tuple,
    positive_int,
)
from icl.tasks import AHN_SPECTRUM

from . import context_sweep, depths
from .context_sweep import NOTE_FIG6_GD, NOTE_FIG6_PGD
from .depths import NOTE_FIG7_LN_GD, NOTE_FIG7_LN_PGD
from .shared import EVAL_CHUNK, NAME, covariances

__all__ = [
    "CONFIG",
    "EVAL_CHUNK",
    "NAME",
    "NOTE_FIG6_GD",
    "NOTE_FIG6_PGD",
    "NOTE_FIG7_LN_GD",
    "NOTE_FIG7_LN_PGD",
    "QUICK",
    "WHY_QUICK",
    "FullFormConfig",
    "FullFormResult",
    "claim_checks",
    "covariances",
    "key_arrays",
    "run",
    "summary",
]


@dataclass(frozen=True)
class FullFormConfig(LinearExperimentConfig):
    """The experiment's parameters; every field is validated on construction (d = len(spectrum))."""

    spectrum: tuple[float, ...] = AHN_SPECTRUM
    n_context: int = 20
    n_layers: int = 3
    depths: tuple[int, ...] = (1, 2, 3, 4)
    train_steps: int = 100_000
    batch_size: int = 8192
    learning_rate: float = 0.05
    clip_norm: float = 0.01
    n_validation: int = 20_000
    context_sweep: tuple[int, ...] = (2, 4, 6, 8, 10, 12, 14, 16, 18, 20)
    sweep_train_steps: int = 20_000
    sweep_batch_size: int = 8192
    sweep_clip_norm: float = 100.0
    clipped_contexts: tuple[int, ...] = (6, 10)

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared training fields
        put = self._set
        put("spectrum", positive_float_tuple("spectrum", self.spectrum))
        for name in ("n_context", "n_layers"):
            put(name, positive_int(name, getattr(self, name)))
        put("depths", int_tuple("depths", self.depths))
        if self.n_layers not in self.depths:
            raise ValueError(f"depths must include n_layers={self.n_layers}, got {self.depths}")
        put("clip_norm", finite_float("clip_norm", self.clip_norm, minimum=0.0, strict=True))
        put("context_sweep", tuple(sorted(set(int_tuple("context_sweep", self.context_sweep)))))
        put("sweep_train_steps", positive_int("sweep_train_steps", self.sweep_train_steps))
        put("sweep_batch_size", positive_int("sweep_batch_size", self.sweep_batch_size))
        put("sweep_clip_norm", finite_float("sweep_clip_norm", self.sweep_clip_norm, minimum=0.0, strict=True))
        put("clipped_contexts", tuple(sorted(set(int_tuple("clipped_contexts", self.clipped_contexts)))))
        if not set(self.clipped_contexts) <= set(self.context_sweep):
            raise ValueError(
                f"clipped_contexts must be among context_sweep={self.context_sweep}, got {self.clipped_contexts}"
            )
        put("n_validation", positive_int("n_validation", self.n_validation, minimum=2))

    @property
    def dim(self) -> int:
        return len(self.spectrum)


CONFIG = FullFormConfig
# What `quick` changes against the paper (the config's defaults), and why (see icl.presets).
QUICK: dict[str, Any] = dict(
    spectrum=(1.0, 1.0, 0.5, 0.25, 1.0),
    train_steps=8000,
    batch_size=512,
    n_seeds=3,
    depths=(1, 2, 3),
    n_validation=10_000,
    n_test=50_000,
    context_sweep=(6, 10, 14, 20),
    sweep_train_steps=5000,
    sweep_batch_size=256,
    clipped_contexts=(10,),
)
WHY_QUICK: dict[str, str] = dict(
    spectrum=(
        "condition number 4, not 16: the whitened problem, its optimum and the learned scalars are the same, "
        "and Adam's slow directions are 4× less slow"
    ),
    train_steps="12× fewer Adam steps, enough at κ = 4 for the same checks",
    batch_size="16× smaller batches; the cosine learning-rate decay averages the extra noise",
    n_seeds="3 seeds, the fewest the book's checks accept",
    depths="depths 1–3, not 1–4, to save the deepest run",
    n_validation="half the prompts to fit GD's step size",
    n_test="half the test set; standard errors and medians are stated",
    context_sweep="4 context lengths, not 10",
    sweep_train_steps="4× fewer Adam steps per context length",
    sweep_batch_size="32× smaller batches in the sweep: its checks hold with a wide margin",
    clipped_contexts="the paper code's clip at one short context, not two",
)


class FullFormResult(NamedTuple):
    """Every number the chapter plots or checks; losses are MSE (no ½)."""

    covariance: torch.Tensor  # (S, d, d)
    whitened: torch.Tensor  # (S, L, d, d) Σ^{½} A_ℓ Σ^{½} (symmetric part), main run
    B: torch.Tensor  # (S, L, d, d) the covariate blocks, main run
    whitened_distance: torch.Tensor  # (S, L) Dist(Σ^½ A_ℓ Σ^½, I)
    raw_distance: torch.Tensor  # (S, L) Dist(A_ℓ, I) (symmetric part)
    B_distance: torch.Tensor  # (S, L) Dist(B_ℓ, I); the last layer's B has no effect
    a: torch.Tensor  # (S, L) tr(Σ^{½} A_ℓ Σ^{½})/d
    b: torch.Tensor  # (S, L) tr(B_ℓ)/d
    projected_loss: torch.Tensor  # (S,) MSE of the model with A_ℓ := a_ℓ Σ⁻¹, B_ℓ := b_ℓ I, same prompts
    condition_number: torch.Tensor  # (L, S) median over prompts of κ of the whitened Ŝ entering layer ℓ
    depths: torch.Tensor  # (D,)
    loss: torch.Tensor  # (D, S) test MSE of the trained models
    loss_se: torch.Tensor  # (D, S)
    median_loss: torch.Tensor  # (D, S) median squared error
    gd_loss: torch.Tensor  # (D, S) L steps of GD, one fitted step size, same prompts
    gd_step_size: torch.Tensor  # (D, S)
    pgd_loss: torch.Tensor  # (D, S) L steps preconditioned by a* Σ⁻¹ (a* exact), same prompts
    pgd_step_size: torch.Tensor  # (D,)
    pgd_exact_loss: torch.Tensor  # (D,) its exact MSE
    sparse_loss: torch.Tensor  # (D,) the sparse model's optimum (one exact step size per layer)
    snapshot_steps: torch.Tensor  # (T,)
    whitened_distance_history: torch.Tensor  # (T, S, L)
    B_distance_history: torch.Tensor  # (T, S, L)
    curve_steps: torch.Tensor  # (C,)
    curve: torch.Tensor  # (C, S) training MSE of the main run, window means
    # Fig. 6: L = n_layers models trained at each context length n of the sweep (gradient cap sweep_clip_norm)
    sweep_contexts: torch.Tensor  # (N,)
    sweep_loss: torch.Tensor  # (N, S) test MSE (mean)
    sweep_loss_se: torch.Tensor  # (N, S)
    sweep_median: torch.Tensor  # (N, S) median squared error
    sweep_gd_loss: torch.Tensor  # (N, S) L steps of GD, one fitted step size
    sweep_pgd_loss: torch.Tensor  # (N, S) L steps preconditioned by a* Σ⁻¹, same prompts
    sweep_pgd_exact: torch.Tensor  # (N,) its exact MSE
    sweep_least_squares: torch.Tensor  # (N, S) minimum-norm least squares (float64)
    # the same runs with the main run's per-matrix clip (the paper code's), at clipped_contexts
    clipped_contexts: torch.Tensor  # (M,)
    clipped_loss: torch.Tensor  # (M, S)
    clipped_median: torch.Tensor  # (M, S)
    n_context: int  # n of the main run
    spectrum: tuple[float, ...]  # (d,) the eigenvalues of Σ
    elapsed_seconds: float


def run(config: FullFormConfig, *, progress: bool = True) -> FullFormResult:
    """Train every run (or load it from the store), fit the baselines, evaluate on shared test prompts."""
    start = time.perf_counter()
    covariance = covariances(config)
    by_depth = depths.run(config, covariance, progress)
    sweep = context_sweep.run(config, covariance, progress)
    return FullFormResult(
        covariance=covariance.detach().double().cpu(),
        **by_depth,
        **sweep,
        n_context=config.n_context,
        spectrum=config.spectrum,
        elapsed_seconds=time.perf_counter() - start,
    )


def claim_checks(result: FullFormResult) -> ClaimChecks:
    """The chapter's claim checks; the chapter states the tolerances and why each can fail."""
    checks = ClaimChecks()
    depths.claim_checks(result, checks)
    context_sweep.claim_checks(result, checks)
    _paper_note_baselines(result, checks)
    return checks


def _paper_note_baselines(r: FullFormResult, checks: ClaimChecks) -> None:
    """The baselines against the paper note's values, where these apply: Fig. 6 (3 steps, d = 5) at every n of the
    sweep in the note's table, and Fig. 7 (n = 20, d = 5) at every depth; plain GD only on the paper's spectrum.
    Fig. 6's preconditioned GD is compared through its exact MSE (the Monte Carlo one is heavy-tailed at short n:
    one test set of 50,000 prompts has landed 10 % above it); plain GD, which has no closed form here, and Fig. 7
    through the Monte Carlo mean over seeds."""
    if len(r.spectrum) != 5:
        return
    L = r.whitened.shape[1]
    exact_pgd = r.sweep_pgd_exact[:, None]  # (N, 1): the same at every seed
    rows = [("preconditioned GD (exact)", exact_pgd, NOTE_FIG6_PGD, r.pgd_loss, NOTE_FIG7_LN_PGD)]
    if sorted(r.spectrum) == sorted(AHN_SPECTRUM):
        rows.append(("GD", r.sweep_gd_loss, NOTE_FIG6_GD, r.gd_loss, NOTE_FIG7_LN_GD))
    for name, sweep, fig6, by_depth, fig7 in rows:
        ns = [(i, n) for i, n in enumerate(r.sweep_contexts.tolist()) if n in fig6]
        if L == 3 and ns:
            ratios = [sweep[i].mean().item() / fig6[n] for i, n in ns]
            worst = max(ratios, key=lambda x: abs(x - 1))
            checks.close(
                f"Fig. 6, {L} steps of {name}: MSE / the paper note's, worst n of {[n for _, n in ns]}",
                worst,
                1.0,
                rtol=0.05,
                reason="5 %: the note's values are computed to two decimals and re-checked only at n = 10 and 20",
            )
        at = [(k, m) for k, m in enumerate(r.depths.tolist()) if m in fig7]
        if r.n_context == 20 and at:
            gaps = [by_depth[k].mean().log().item() - fig7[m] for k, m in at]
            label = name.removesuffix(" (exact)")
            checks.close(
                f"Fig. 7, L-step {label} at n = 20: ln MSE − the paper note's, worst L of {[m for _, m in at]}",
                max(gaps, key=abs),
                0.0,
                atol=0.05,
                reason="± 0.05 in ln MSE, the note's bar (its values are re-checked to ± 0.02)",
            )


def summary(result: FullFormResult, config: FullFormConfig) -> dict[str, float | str]:
    """The scalars the chapter's text states, by name (the chapter glues each as ``full_form_gd_plus_plus_<name>``);
    lists of scalars come as text."""
    r = result
    L = config.n_layers
    main = depths.main_index(r)
    sweep_ns = r.sweep_contexts.tolist()
    k = sweep_ns.index(r.clipped_contexts[0].item())  # the first clipped context among the sweep's
    beyond = r.sweep_contexts >= 4
    at_main = sweep_ns.index(config.n_context) if config.n_context in sweep_ns else None
    exact = r.sweep_pgd_exact[beyond, None]
    ratios = (r.sweep_loss[beyond] / exact).flatten()
    z_scores = ((r.sweep_loss[beyond] - exact) / r.sweep_loss_se[beyond]).flatten()
    two = (r.depths == 2).nonzero()
    gain_two = r.sparse_loss[two[0, 0]] / r.loss[two[0, 0]] if len(two) else torch.full((1,), float("nan"))
    inverse_distance = evaluate.distance_to_identity(torch.linalg.inv(r.covariance[0])).item()
    return {
        # the setup
        "L": L,
        "seeds": config.n_seeds,
        "n_test": config.n_test,
        "n_context": config.n_context,
        "clip": config.clip_norm,
        "sweep_clip": config.sweep_clip_norm,
        "main_steps": config.train_steps,
        "main_batch": config.batch_size,
        "sweep_steps": config.sweep_train_steps,
        "sweep_batch": config.sweep_batch_size,
        "minutes": r.elapsed_seconds / 60,
        # the depth runs
        "dist_max": r.whitened_distance.max().item(),
        "b_dist_max": r.B_distance[:, : L - 1].max().item() if L > 1 else float("nan"),
        "ln_loss": r.loss[main].log().mean().item(),
        "ln_median": r.median_loss[main].log().mean().item(),
        "projected": (r.projected_loss / r.loss[main]).mean().item(),
        "sparse_ln": math.log(r.sparse_loss[main].item()),
        "kappa_first": r.condition_number[0].mean().item(),
        "gain_two_min": gain_two.min().item(),
        "gain_two_max": gain_two.max().item(),
        "gain_main_min": (r.sparse_loss[main] / r.loss[main]).min().item(),
        "a_means": ", ".join(f"{v:.3g}" for v in r.a.mean(0).tolist()),  # a_1 … a_L, mean over seeds
        "b_means": ", ".join(f"{v:.3g}" for v in r.b[:, : L - 1].mean(0).tolist()),  # the B_ℓ that act
        "raw_dist_min": r.raw_distance.min().item(),
        "raw_dist_max": r.raw_distance.max().item(),
        "inverse_dist": inverse_distance,
        "kappa_last": r.condition_number[-1].mean().item(),
        # the context sweep
        "clip_n": int(r.clipped_contexts[0]),
        "clip_ratio": (r.clipped_loss[0] / r.sweep_loss[k]).min().item(),
        "clip_median_ratio": (r.sweep_median[k] / r.clipped_median[0]).min().item(),
        "sweep_ratio": ratios.max().item() if beyond.any() else float("nan"),
        "sweep_median_ratio": ratios.median().item() if beyond.any() else float("nan"),
        "sweep_z": z_scores.max().item() if beyond.any() else float("nan"),
        "sweep_worst_se": (r.sweep_loss_se[beyond] / exact).flatten()[ratios.argmax()].item()
        if beyond.any()
        else float("nan"),
        "sweep_ln_loss_at_n": r.sweep_loss[at_main].log().mean().item() if at_main is not None else float("nan"),
    }


def key_arrays(result: FullFormResult) -> dict[str, Any]:
    """The arrays a reader most likely wants, for the chapter's JSON (the curves are left out)."""
    return {
        k: v
        for k, v in result._asdict().items()
        if "history" not in k and "curve" not in k and k not in ("snapshot_steps", "elapsed_seconds")
    }
