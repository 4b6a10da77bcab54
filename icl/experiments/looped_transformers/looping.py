"""The second claim: looping a trained model beyond its training loops, where it helps and where it diverges.

The models trained with L in ``looping_from`` run for L' = 1 … ``max_test_loops`` loops, in float64, at
``n_context`` and at the largest n of the sweep, in distribution and on test covariances with eigenvalues on
geometric grids (``ood_ranges``); the share of prompts on which looping diverges is compared with
P(a λ_max(Ŝ) > 2), and the error with the floor (u_Pᵀ x_q)² that a leftover u_P sets.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from icl import rng, tasks, theory
from icl.checks import ClaimChecks
from icl.config import positive_int
from icl.experiments.looped_transformers.training import run_part
from icl.models import LinearTransformer
from icl.tokens import to_tokens

if TYPE_CHECKING:
    from icl.experiments.looped_transformers import LoopedConfig, LoopedResult

LOOPING_CHUNK = 2500  # prompts per model at a time when looping on at test time (float64 tokens)
DETECTION_LOOPS = 200
"""Loops run to tell diverging prompts (see :func:`loop_trajectory`)."""
DETECTION_WINDOW = 100  # a diverging prompt's update grows over this many loops
ROUND_OFF = 1e-10  # updates below this fraction of the labels' norm are float64 noise, never a divergence


class Trajectory(NamedTuple):
    """Squared errors of the query after each loop, (T, E, B); with ``detect``, which prompts diverge, (E, B)."""

    squared_error: torch.Tensor
    diverging: torch.Tensor | None


@torch.no_grad()
def loop_trajectory(
    model: LinearTransformer, batch: tasks.RegressionBatch, n_loops: int, *, detect: bool = False
) -> Trajectory:
    """Run a looped model's layer ``n_loops`` times on ``batch`` (prompts (E, B, ...)) in float64, reading the
    prediction after every loop; with ``detect``, go on to :data:`DETECTION_LOOPS` loops and mark the prompts
    whose update to the context labels grew over the last :data:`DETECTION_WINDOW` loops (or overflowed).
    Prompts go in chunks.

    Why the update: the context labels follow r ← r − (1/n) X A Xᵀ (r + X u_P) (u_Q aside), so consecutive
    updates obey Δ ← (I − X A Xᵀ/n) Δ, whatever u_P: Δ grows without bound exactly when an eigenvalue of
    I − AŜ exceeds 1 in modulus. For symmetric A, ‖Δ‖² is a sum of positive terms (aλ)² c² (1 − aλ)^{2t}; a
    learned A is slightly asymmetric, its eigenvalues can come in complex pairs and ‖Δ‖ can oscillate from one
    loop to the next, hence the comparison across 100 loops rather than between consecutive ones. Factors
    within ~1e-3 of 1 can be missed. On converged prompts the update is round-off noise, so only an update
    above 1e-10 of the labels' norm counts. With u_Q ≠ 0 the layer is not linear in the labels, and on some
    prompts that GD would diverge on the growth stops at a large bounded state (a cycle): a prompt whose context
    residuals end larger than its labels counts as diverging too.
    """
    n_loops = positive_int("n_loops", n_loops)
    total = max(n_loops, DETECTION_LOOPS) if detect else n_loops
    model = copy.deepcopy(model).double()
    n = batch.X.shape[-2]
    errors, diverging = [], []
    for start in range(0, batch.X.shape[1], LOOPING_CHUNK):
        part = [t[:, start : start + LOOPING_CHUNK].double() for t in batch]
        Z = to_tokens(part[0], part[1], part[2])
        chunk_errors, history = [], {}
        for loop, labels in enumerate(model.label_rows(Z, total)):
            if loop < n_loops:
                chunk_errors.append((-labels[..., n] - part[3]) ** 2)  # ŷ = −(query's label entry)
            if loop in (total - DETECTION_WINDOW - 2, total - DETECTION_WINDOW - 1, total - 2, total - 1):
                history[loop] = labels[..., :n]
        # An overflow (inf − inf in the labels) is an infinite error, not a missing one: medians must count it.
        errors.append(torch.stack(chunk_errors).nan_to_num(nan=float("inf")))
        if detect:
            early, late = total - DETECTION_WINDOW - 1, total - 1
            before = (history[early] - history[early - 1]).norm(dim=-1)
            last = (history[late] - history[late - 1]).norm(dim=-1)
            scale = part[1].norm(dim=-1)  # the context labels' norm before any loop
            visible = last > ROUND_OFF * scale  # a converged prompt's update is round-off noise
            worse = history[late].norm(dim=-1) > scale  # the residuals ended larger than the labels themselves
            diverging.append(~torch.isfinite(last) | ((last > before) & visible) | worse)
    return Trajectory(torch.cat(errors, -1), torch.cat(diverging, -1) if detect else None)


def gd_with_shared_step(model: LinearTransformer, scale: torch.Tensor, covariance: torch.Tensor) -> LinearTransformer:
    """The looped model's GD twin: A = a Σ⁻¹ with its own learned a, u = 0. scale: (E,), covariance: (E, d, d)."""
    twin = copy.deepcopy(model).double()
    with torch.no_grad():
        twin.A.copy_((scale[:, None, None] * torch.linalg.inv(covariance.double())).unsqueeze(1))
        twin.u_P.zero_()
        twin.u_Q.zero_()
    return twin


def test_covariances(config: LoopedConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """One (d, d) float64 covariance per test family: I, then V diag(λ) Vᵀ with λ geometric over each OOD range."""
    family = [torch.eye(config.dim, dtype=torch.float64, device=config.device)]
    for low, high in zip(config.ood_ranges[::2], config.ood_ranges[1::2], strict=True):
        spectrum = torch.logspace(
            torch.log10(torch.tensor(low)), torch.log10(torch.tensor(high)), config.dim, dtype=torch.float64
        )
        family.append(tasks.covariance_from_spectrum(spectrum, generator=generator).to(config.device))
    return family


@torch.no_grad()
def _looping(
    config: LoopedConfig, model: LinearTransformer, scale: torch.Tensor, n: int, L: int, part: int
) -> dict[str, Any]:
    """Test-time looping of one trained ensemble (Σ = I) on every test family: per-loop means and medians, the
    floor that looping converges to, and the predicted share of diverging prompts (at the model's a and at a*)."""
    streams = rng.streams(config.seed, config.device, part=part)
    E = model.n_models
    identity = torch.eye(config.dim, dtype=torch.float64, device=config.device).expand(E, -1, -1)
    twin = gd_with_shared_step(model, scale.to(config.device), identity)
    keys = ("mean", "median", "gd_mean", "gd_median", "floor_mean", "floor_median")
    out: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
    u_P = model.u_P.detach().double()[:, 0]  # (E, d)
    diverging = torch.full((E,), float("nan"), dtype=torch.float64)  # detected at n_context only
    for index, covariance in enumerate(test_covariances(config, streams.task)):
        batch = tasks.sample_regression(
            config.n_looping_test,
            n,
            covariance.expand(E, -1, -1),
            generator=streams.eval,
            task_prior="identity",  # the training prior w ~ N(0, Σ_train⁻¹) = N(0, I): only the covariates shift
            dtype=torch.float64,
        )
        trajectory = loop_trajectory(model, batch, config.max_test_loops, detect=index == 0 and n == config.n_context)
        reference = loop_trajectory(twin, batch, config.max_test_loops)
        out["mean"].append(trajectory.squared_error.mean(-1))
        out["median"].append(trajectory.squared_error.median(-1).values)
        out["gd_mean"].append(reference.squared_error.mean(-1))
        out["gd_median"].append(reference.squared_error.median(-1).values)
        # Looping converges to w = w* + u_P where Ŝ is invertible (the context's values yᵢ + u_Pᵀxᵢ are then fitted
        # exactly), so each prompt's error tends to (u_Pᵀ x_q)²; u_Q's effect vanishes with the residuals.
        floor = (batch.x_query @ u_P.unsqueeze(-1)).squeeze(-1) ** 2  # (E, B)
        out["floor_mean"].append(floor.mean(-1))
        out["floor_median"].append(floor.median(-1).values)
        if trajectory.diverging is not None:
            diverging = trajectory.diverging.double().mean(-1)
    stacked = {k: torch.stack(v).cpu() for k, v in out.items()}  # (F, T, E), floors (F, E)
    optimum = theory.optimal_looped_step_size(config.dim, n, L).step_sizes[:1]
    shares, shares_se = _divergence_shares(config, n, torch.cat([scale.double().cpu(), optimum]), part)
    return {
        **stacked,
        "diverging": diverging.cpu(),
        "predicted": shares[:-1],
        "predicted_se": shares_se[:-1],
        "optimal": shares[-1],
    }


def _divergence_shares(
    config: LoopedConfig, n: int, scale: torch.Tensor, part: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """P(a λ_max(Ŝ) > 2) and its Monte Carlo s.e. for every a in ``scale`` (E,), on one set of draws of λ_max."""
    generator = rng.streams(config.seed, part=part).task  # CPU: the draws are NumPy's
    largest = theory.sample_largest_eigenvalue(config.dim, n, config.n_divergence_samples, generator=generator)
    return theory.divergence_shares(largest, scale)


def looping_runs(
    config: LoopedConfig, looped_at: dict[tuple[int, int], tuple[LinearTransformer, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Test-time looping of the models trained with L in ``looping_from`` (``looped_at[(n, L)]``: the models and
    their scales a) at both ``looping_contexts``, laid out as the result's ``looping_*`` fields, (C, J, ...)."""
    looping: dict[str, list[torch.Tensor]] = {}
    for n in config.looping_contexts:
        for L in config.looping_from:
            model, scale = looped_at[(n, L)]
            values = _looping(config, model, scale, n, L, run_part("looped", n, (L,))[1] + 50_000_000)
            for key, value in values.items():
                looping.setdefault(key, []).append(value)
    C, J = len(config.looping_contexts), len(config.looping_from)

    def grid(key: str) -> torch.Tensor:
        stacked = torch.stack(looping[key])
        return stacked.reshape(C, J, *stacked.shape[1:])

    return {
        "looping_mean": grid("mean").double(),
        "looping_median": grid("median").double(),
        "looping_gd_mean": grid("gd_mean").double(),
        "looping_gd_median": grid("gd_median").double(),
        "floor_mean": grid("floor_mean").double(),
        "floor_median": grid("floor_median").double(),
        "diverging_fraction": grid("diverging"),
        "predicted_fraction": grid("predicted"),
        "predicted_fraction_se": grid("predicted_se"),
        "optimal_fraction": grid("optimal").double(),
    }


def check(checks: ClaimChecks, result: LoopedResult, config: LoopedConfig) -> None:
    """The second claim's checks: the share of diverging prompts at ``n_context`` against P(a λ_max(Ŝ) > 2); at
    the sweep's largest n, the median down to the floor and falling, the mean falling where it should."""
    n0, n1 = config.looping_contexts
    for j, L in enumerate(config.looping_from):
        measured, predicted = result.diverging_fraction[0, j], result.predicted_fraction[0, j]  # (S,)
        # Binomial error of the measured share; p is kept at least 1/N from 0 and 1 so that the tolerance never
        # vanishes (an undertrained model with a tiny step has p = 0, and one diverging prompt must fail it).
        floor = 1 / config.n_looping_test
        p = predicted.clamp(floor, 1 - floor)
        sampling = (p * (1 - p) / config.n_looping_test).sum().sqrt() / len(predicted)
        se = (sampling**2 + result.predicted_fraction_se[0, j].mean() ** 2).sqrt().item()
        checks.close(
            f"n = {n0}, trained with L = {L}: share of prompts on which looping diverges (mean over models)",
            measured.mean().item(),
            predicted.mean().item(),
            atol=3 * se,
            reason=f"P(a λ_max(Ŝ) > 2) at each model's own a; 3 s.e. ({se:.2%}); at a* it is "
            f"{result.optimal_fraction[0, j].item():.2%}",
        )
    last = config.max_test_loops
    for j, L in enumerate(config.looping_from):
        median, floor = result.looping_median[1, j, 0], result.floor_median[1, j, 0]  # (T, S), (S,)
        checks.at_most(
            f"n = {n1}, L = {L}: in distribution, max over models of |median at L' = {last} / (u_Pᵀx_q)² median − 1|",
            (median[-1] / floor - 1).abs().max().item(),
            0.05,
            reason="looping converges to w* + u_P: the floor is the leftover u_P",
        )
        checks.at_most(
            f"n = {n1}, L = {L}: in distribution, max ratio of consecutive medians above 10× the floor",
            worst_rise(median, 10 * floor),
            1.0,
            reason="the median falls at every loop until it nears the floor",
        )
        checks.at_most(
            f"n = {n1}, L = {L}: in distribution, max ratio of consecutive means, L' = 1…10",
            worst_rise(result.looping_mean[1, j, 0, :10], torch.zeros(result.looping_mean.shape[-1])),
            1.0,
            reason="the mean falls while no prompt has diverged visibly",
        )
        if len(config.families) > 1:
            checks.at_most(
                f"n = {n1}, L = {L}: {config.families[1]}, max ratio of consecutive means above 10× the floor",
                worst_rise(result.looping_mean[1, j, 1], 10 * result.floor_mean[1, j, 1]),
                1.0,
                reason="covariates of smaller scale: looping keeps helping",
            )


def worst_rise(curve: torch.Tensor, floor: torch.Tensor) -> float:
    """The largest ratio curve[t+1]/curve[t] over loops t where curve[t+1] is still above ``floor``.
    curve: (T, S), floor: (S,). A NaN or infinite loss counts as a rise (inf)."""
    ratio = curve[1:] / curve[:-1]
    ratio = torch.where(torch.isfinite(ratio), ratio, torch.full_like(ratio, float("inf")))
    above = (curve[1:] > floor) | ~torch.isfinite(curve[1:])
    return ratio[above].max().item() if above.any() else 0.0


def mean_story(result: LoopedResult, c: int, f: int) -> str:
    """How the first model's mean squared error (first L of ``looping_from``) moves over the test-time loops at
    context length ``looping_contexts[c]`` on test family ``f``, in words for the chapter."""
    mean = result.looping_mean[c, 0, f, :, 0]
    if worst_rise(mean[:, None], 10 * result.floor_mean[c, 0, f, :1]) <= 1.0:
        return "falls at every loop down to near its floor"
    finite = torch.isfinite(mean)
    best = int(torch.argmin(torch.where(finite, mean, torch.full_like(mean, float("inf")))))
    end = f"{mean[-1].item():.3g}" if finite[-1] else "overflow"
    return f"is lowest at L′ = {best + 1} ({mean[best].item():.3g}) and then grows, to {end} at L′ = {len(mean)}"


def _median_trend(result: LoopedResult, config: LoopedConfig, c: int, f: int) -> str:
    """How the first model's median (first L of ``looping_from``) moves from the training loop count to the last
    loop at context length ``looping_contexts[c]`` on test family ``f``: 'falls', 'rises' or 'overflows'."""
    medians = result.looping_median[c, 0, f, :, 0]
    start, end = medians[config.looping_from[0] - 1].item(), medians[-1].item()
    if not np.isfinite(end):
        return "overflows"
    return "falls" if end < start else "rises"


def summary(result: LoopedResult, config: LoopedConfig) -> dict[str, Any]:
    """The numbers the chapter quotes about test-time looping, for the first L of ``looping_from`` and the first
    model (glue names without the chapter's prefix)."""
    r = result
    mean0, median0 = r.looping_mean[0, 0, 0, :, 0], r.looping_median[0, 0, 0, :, 0]  # (T,) at n_context
    finite = torch.isfinite(mean0)
    best = int(torch.argmin(torch.where(finite, mean0, torch.full_like(mean0, float("inf")))))
    out: dict[str, Any] = {
        "looping_from": " and ".join(str(L) for L in config.looping_from),
        "max_loops": config.max_test_loops,
        "detection": DETECTION_LOOPS,
        "n1": config.looping_contexts[1],
        "div_measured": r.diverging_fraction[0, 0].mean().item(),
        "div_predicted": r.predicted_fraction[0, 0].mean().item(),
        "div_optimal": r.optimal_fraction[0, 0].item(),
        "div_large_n": r.optimal_fraction[1, 0].item(),
        "n_looping": config.n_looping_test,
        "median_start": median0[0].item(),
        "median_end": median0[-1].item(),
        "mean_best_loop": best + 1,
        "mean_best": mean0[best].item(),
        "mean_end": mean0[-1].item() if finite[-1] else float("inf"),
        "median1_end": r.looping_median[1, 0, 0, -1, 0].item(),
        "floor1": r.floor_median[1, 0, 0, 0].item(),
        "gd1_end": r.looping_gd_median[1, 0, 0, -1, 0].item(),
    }
    n_a, n_b = config.looping_contexts
    for name, lo, hi in [("ood2", 0.5, 2.0), ("ood4", 0.25, 4.0)]:
        family = f"eigenvalues in [{lo:g}, {hi:g}]"
        if family not in config.families:
            out[name] = "(not in this run's test families)"
            continue
        verbs = [_median_trend(r, config, c, config.families.index(family)) for c in range(2)]
        out[name] = (
            f"{verbs[0]} at both context lengths"
            if verbs[0] == verbs[1]
            else f"{verbs[0]} at n = {n_a} and {verbs[1]} at n = {n_b}"
        )
    for c in range(2):  # the first shifted family (ood_ranges holds at least one): [¼, 1] by default
        out[f"shifted_mean_n{c}"] = mean_story(r, c, 1)
    for c, n in enumerate(config.looping_contexts):
        a_star = theory.optimal_looped_step_size(config.dim, n, config.looping_from[0]).step_sizes[0].item()
        out[f"threshold_n{c}"] = 2 / a_star
    return out
