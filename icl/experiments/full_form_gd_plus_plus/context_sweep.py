"""The context-length sweep (Ahn et al. 2023, Fig. 6), and what the paper code's gradient clip does to it.

At every n of ``context_sweep`` an L = n_layers ensemble is trained with the loose guard cap ``sweep_clip_norm``,
and at ``clipped_contexts`` once more with the paper code's per-matrix clip ``clip_norm``; beside them, on the same
test prompts, L steps of GD (one fitted step size), L steps preconditioned by a*(n) Σ⁻¹ and least squares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from icl import baselines, rng, theory
from icl.baselines import best_shared_step_size
from icl.checks import ClaimChecks, family_z
from icl.models import LinearTransformer

from .shared import fit, sample, squared_errors

if TYPE_CHECKING:
    from icl.experiments.full_form_gd_plus_plus import FullFormConfig, FullFormResult

SWEEP_PART = 1000  # the guard-cap run at n: random streams of part SWEEP_PART + n (its validation prompts too)
CLIPPED_PART = 2000  # the clipped run at n: part CLIPPED_PART + n
# The paper note's predicted MSE of 3 steps, d = 5 (papers/ahn2023_preconditioned_gd.md §4, Fig. 6; one continuously
# optimal step size, all n context points), the re-checked value where the note gives one. Preconditioned GD is
# whitening-invariant, so its values hold for any spectrum; plain GD's only for the paper's.
NOTE_FIG6_PGD = {2: 3.38, 4: 2.33, 6: 1.63, 8: 1.17, 10: 0.88, 12: 0.66, 14: 0.50, 16: 0.41, 18: 0.33, 20: 0.27}
NOTE_FIG6_GD = {2: 3.84, 4: 3.08, 6: 2.56, 8: 2.20, 10: 1.98, 12: 1.79, 14: 1.64, 16: 1.54, 18: 1.46, 20: 1.38}


def fit_at(
    config: FullFormConfig, covariance: torch.Tensor, n: int, clip: float, part: int, progress: bool
) -> LinearTransformer:
    """An L = n_layers ensemble trained at context length n with gradient cap ``clip`` and the streams of ``part``."""
    model, _ = fit(
        config,
        covariance,
        depth=config.n_layers,
        n=n,
        clip=clip,
        steps=config.sweep_train_steps,
        batch_size=config.sweep_batch_size,
        slug=f"sweep-n{n}-clip{clip:g}",
        part=part,
        progress=progress,
    )
    return model


def run(config: FullFormConfig, covariance: torch.Tensor, progress: bool) -> dict[str, torch.Tensor]:
    """Train (or load) every run of the sweep, fit the baselines, evaluate on a test set per n: the result's fields
    from ``sweep_contexts`` to ``clipped_median``."""
    d, L, S = config.dim, config.n_layers, config.n_seeds
    inverse = torch.linalg.inv(covariance).unsqueeze(1)
    out: dict[str, list[torch.Tensor]] = {}
    for n in config.context_sweep:
        model = fit_at(config, covariance, n, config.sweep_clip_norm, SWEEP_PART + n, progress)
        validation = sample(
            config,
            covariance,
            config.n_validation,
            rng.streams(config.seed, config.device, part=SWEEP_PART + n).eval,
            torch.float64,
            n=n,
        )
        fitted = [
            best_shared_step_size(
                lambda e, s=s, v=validation: baselines.gd(v.X[s], v.y[s], v.x_query[s], e, n_steps=L),
                validation.y_query[s],
                L,
                scale=0.1,
            )[0]
            for s in range(S)
        ]
        pgd = theory.optimal_looped_step_size(d, n, L)
        eye = torch.eye(d, dtype=torch.float64, device=covariance.device)
        gd_preconditioner = (
            torch.tensor(fitted, dtype=torch.float64, device=covariance.device)[:, None, None, None] * eye
        )
        pgd_preconditioner = pgd.step_sizes[0].item() * inverse
        predictors = {
            "model": model.predict,
            "gd": lambda X, y, q, M=gd_preconditioner: baselines.preconditioned_gd(X, y, q, M.to(X.dtype), n_steps=L),
            "pgd": lambda X, y, q, M=pgd_preconditioner: baselines.preconditioned_gd(X, y, q, M.to(X.dtype), n_steps=L),
            "ols": lambda X, y, q: baselines.least_squares(X.double(), y.double(), q.double()),
        }
        if n in config.clipped_contexts:
            predictors["clipped"] = fit_at(config, covariance, n, config.clip_norm, CLIPPED_PART + n, progress).predict
        errors = squared_errors(predictors, config, covariance, part=SWEEP_PART + n, n=n)
        values = {
            "sweep_loss": errors["model"].mean(-1),
            "sweep_loss_se": errors["model"].std(-1) / errors["model"].shape[-1] ** 0.5,
            "sweep_median": errors["model"].median(-1).values,
            "sweep_gd_loss": errors["gd"].mean(-1),
            "sweep_pgd_loss": errors["pgd"].mean(-1),
            "sweep_pgd_exact": pgd.loss,
            "sweep_least_squares": errors["ols"].mean(-1),
        }
        if "clipped" in errors:
            values["clipped_loss"] = errors["clipped"].mean(-1)
            values["clipped_median"] = errors["clipped"].median(-1).values
        for key, value in values.items():
            out.setdefault(key, []).append(torch.as_tensor(value).detach().double().cpu())
    return {
        "sweep_contexts": torch.tensor(config.context_sweep),
        "clipped_contexts": torch.tensor(config.clipped_contexts),
        **{key: torch.stack(value) for key, value in out.items()},
    }


def claim_checks(r: FullFormResult, checks: ClaimChecks) -> None:
    """Figure 6's ordering for the mean, and the clip's contrast: a worse mean, a better median.

    The ordering is tested per (n, seed) in standard errors of the test set: at short n a few prompts carry most of
    a model's squared error, so one test set's mean can land far above the model's expected MSE (at ``quick``,
    seed 1, one member at n = 6 measured 1.50 × GD with a*Σ⁻¹ with a standard error of 0.98 ×, while its median
    squared error was a tenth of the mean). The companion check asks the typical (n, seed) pair to be in the
    paper's order outright."""
    beyond = r.sweep_contexts >= 4
    if beyond.any():
        exact = r.sweep_pgd_exact[beyond, None]
        z_scores = (r.sweep_loss[beyond] - exact) / r.sweep_loss_se[beyond]
        pairs = z_scores.numel()
        checks.at_most(
            "n ≥ 4: worst (n, seed) (test MSE − exact MSE of GD with a*(n) Σ⁻¹) / the test MSE's s.e.",
            z_scores.max().item(),
            family_z(pairs),
            reason=f"the paper's Figure 6 ordering for the expected MSE; Bonferroni bar for {pairs} pairs at 1 % "
            "(two-sided)",
        )
        checks.at_most(
            "n ≥ 4: median over (n, seed) of test MSE / exact MSE of GD with a*(n) Σ⁻¹",
            (r.sweep_loss[beyond] / exact).median().item(),
            1.0,
            reason="the typical pair in the paper's order, whatever the rare prompts do",
        )
    for m, n in enumerate(r.clipped_contexts.tolist()):
        i = r.sweep_contexts.tolist().index(n)
        checks.at_least(
            f"n = {n}: the paper code's clip, least mean MSE ratio to the guard's over seeds",
            (r.clipped_loss[m] / r.sweep_loss[i]).min().item(),
            10.0,
            reason="a tight clip ignores the rare prompts that dominate the mean",
        )
        checks.at_most(
            f"n = {n}: the paper code's clip, largest median ratio to the guard's over seeds",
            (r.clipped_median[m] / r.sweep_median[i]).max().item(),
            1.0,
            reason="and fits the typical prompt better",
        )
