"""The first claim: a looped layer trained for L loops learns L steps of GD with one preconditioner a*Σ⁻¹, u → 0.

Training runs (one ensemble per run, one model per seed, trained side by side):

- at context length ``n_context``, for every L in ``loops``: looped models on Σ = I and on a rotated Σ with
  condition number ``condition_number`` (one ensemble holds both), and untied sparse models (one A_ℓ per
  layer, Ahn et al.'s eq. 8) on Σ = I for every L >= 2;
- at every other n in ``n_sweep`` (which always holds ``n_context``), for every L in ``looping_from``: looped
  models on Σ = I;
- at ``n_underdetermined`` < d, for every L in ``loops``: looped models on Σ = I (Gatmiry et al.'s n < d case,
  outside their theory; the exact optimum a* still holds, with an MSE of at least d − n), for
  ``underdetermined_train_steps``: the loss is flatter there, and at `quick` Dist(A, I) went from 0.052 to 0.040 and
  0.031 (worst of 3 seeds at seeds 0 and 1) with 1×, 2× and 3× the steps.

The theory's optimum for the looped model is :func:`icl.theory.optimal_looped_step_size` (a*, exact), for the
untied one :func:`icl.theory.optimal_multi_step`.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from icl import evaluate, rng, tasks, theory
from icl.checks import ClaimChecks
from icl.evaluate import monte_carlo_predictions, whiten
from icl.models import LinearTransformer
from icl.tasks import rotated_covariances
from icl.train import TrainConfig, fit_cached

if TYPE_CHECKING:
    from icl.experiments.looped_transformers import LoopedConfig, LoopedResult

NAME = "looped_transformers"  # the experiment's name, the prefix of its store keys
SNAPSHOTS = 100


def covariances(config: LoopedConfig) -> torch.Tensor:
    """(2S, d, d) float64: S copies of I, then U diag(λ) Uᵀ (λ geometric, condition number κ) per seed."""
    spectrum = tuple(tasks.condition_number_spectrum(config.dim, config.condition_number).tolist())
    rotated = rotated_covariances(spectrum, config.n_seeds, seed=config.seed, device=config.device)
    identity = torch.eye(config.dim, dtype=torch.float64, device=config.device).expand_as(rotated)
    return torch.cat([identity, rotated])


def run_part(kind: str, n: int, loops: tuple[int, ...]) -> tuple[str, int]:
    """A training run's store slug and the integer that seeds its own random streams."""
    offset = {"looped": 0, "untied": 1}[kind]
    code = int("".join(str(L) for L in loops)) if kind == "looped" else loops[0]
    return f"{kind}-n{n}-L{'-'.join(map(str, loops))}", (offset * 1000 + n) * 10**6 + code


def _train(
    config: LoopedConfig, kind: str, n: int, loops: tuple[int, ...], covariance: torch.Tensor, progress: bool
) -> tuple[LinearTransformer, Any]:
    """One ensemble: a looped model for every L in ``loops`` and every covariance (E = len(loops) · len(covariance),
    L slowest), each member looping its own number of times; or, for ``kind="untied"``, one L and one model per
    covariance."""
    slug, part = run_part(kind, n, loops)
    streams = rng.streams(config.seed, config.device, part=part)
    looped = kind == "looped"
    if not looped and len(loops) != 1:
        raise ValueError(f"an untied ensemble has one depth, got {loops}")
    covariance = covariance.repeat(len(loops), 1, 1)
    counts = tuple(L for L in loops for _ in range(covariance.shape[0] // len(loops)))
    model = LinearTransformer(
        config.dim,
        max(loops),
        parameterisation="sparse_u" if looped else "sparse",
        looped=looped,
        n_models=covariance.shape[0],
        init_std=config.init_std,
        generator=streams.init,
        loop_counts=counts if looped and len(loops) > 1 else None,
    )
    if looped:  # u = 0 is stationary (the loss is even in u): start it small and random, so that its decay shows
        with torch.no_grad():
            model.u_P.normal_(0.0, config.u_init_std, generator=streams.init)
            model.u_Q.normal_(0.0, config.u_init_std, generator=streams.init)
    covariance32 = covariance.float()

    def sample(generator: torch.Generator) -> tasks.RegressionBatch:
        return tasks.sample_regression(
            config.batch_size, n, covariance32, generator=generator, task_prior="inverse_covariance"
        )

    trained = fit_cached(
        NAME,
        config,
        slug,
        model,
        sample,
        TrainConfig(steps=config.train_steps, learning_rate=config.learning_rate, clip_norm=config.clip_norm),
        generator=streams.train,
        progress=progress,
        description=f"{kind}, n = {n}, L = {', '.join(map(str, loops))}, {covariance.shape[0]} models",
        snapshot_every=max(1, config.train_steps // SNAPSHOTS) if looped and n == config.n_context else None,
    )
    return model, trained


def _members(model: LinearTransformer, start: int, count: int, loops: int) -> LinearTransformer:
    """Members start … start + count − 1 of a looped ensemble, as an ensemble of their own looping ``loops`` times."""
    subset = copy.deepcopy(model)
    subset.n_models, subset.n_layers, subset.loop_counts = count, loops, None
    for name, parameter in list(subset.named_parameters()):
        setattr(subset, name, torch.nn.Parameter(parameter.detach()[start : start + count].clone()))
    return subset


def _looped_runs(
    config: LoopedConfig, n: int, loops: tuple[int, ...], covariance: torch.Tensor, progress: bool
) -> list[tuple[int, LinearTransformer, Any]]:
    """For every L in ``loops``: the looped models (one per covariance) and their training record, trained as one
    ensemble or as one per L (:attr:`LoopedConfig.joint_loops`); the same members either way."""
    E = covariance.shape[0]
    if not config.joint_loops:
        return [(L, *_train(config, "looped", n, (L,), covariance, progress)) for L in loops]
    model, trained = _train(config, "looped", n, loops, covariance, progress)
    out = []
    for k, L in enumerate(loops):
        members = slice(k * E, (k + 1) * E)
        snapshots = {name: value[:, members] for name, value in trained.snapshots.items()}
        out.append((L, _members(model, k * E, E, L), trained._replace(snapshots=snapshots)))
    return out


def _preconditioner(A: torch.Tensor, covariance: torch.Tensor) -> dict[str, torch.Tensor]:
    """A: (..., E, 1, d, d) looped preconditioners; covariance: (E, d, d) -> distances and scales, (..., E)."""
    whitened = whiten(evaluate.symmetric_part(A.double()), covariance)[..., 0, :, :]
    return {
        "whitened": whitened,
        "distance": evaluate.distance_to_identity(whitened),
        "scale": torch.diagonal(whitened, dim1=-2, dim2=-1).mean(-1),
    }


def _u_norm(parameters: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """‖u_P‖, ‖u_Q‖ of looped models: (..., E, 1, d) -> 2 × (..., E)."""
    return parameters["u_P"].double().norm(dim=-1)[..., 0], parameters["u_Q"].double().norm(dim=-1)[..., 0]


@torch.no_grad()
def _test_loss(
    model: LinearTransformer, covariance: torch.Tensor, n: int, config: LoopedConfig, part: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo MSE and its standard error on fresh prompts, one per model: 2 × (E,)."""
    generator = rng.streams(config.seed, config.device, part=part).eval
    predictions = monte_carlo_predictions(
        config.n_test,
        n,
        lambda size: tasks.sample_regression(
            size, n, covariance.float(), generator=generator, task_prior="inverse_covariance"
        ),
        {"model": lambda b: model.predict(b.X, b.y, b.x_query)},
    )
    squared = (predictions["model"].double() - predictions["target"].double()) ** 2
    return squared.mean(-1), squared.std(-1) / squared.shape[-1] ** 0.5


def main_runs(
    config: LoopedConfig, covariance: torch.Tensor, progress: bool
) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[int, LinearTransformer]]:
    """The looped models at ``n_context`` for every L on both covariances (2S): their summaries stacked over L
    (K, 2S, ...), histories (T', K, 2S), the snapshot steps (T',) and, per L, the Σ = I members."""
    S, n0 = config.n_seeds, config.n_context
    main: dict[int, LinearTransformer] = {}
    rows: dict[str, list[torch.Tensor]] = {}
    snapshot_steps = torch.empty(0)
    for L, model, trained in _looped_runs(config, n0, config.loops, covariance, progress):
        final = _preconditioner(model.A.detach(), covariance)
        history = _preconditioner(trained.snapshots["A"].to(covariance.device), covariance)
        u_P, u_Q = _u_norm(dict(model.named_parameters()))
        h_uP, h_uQ = _u_norm(trained.snapshots)
        loss, loss_se = _test_loss(model, covariance, n0, config, run_part("looped", n0, (L,))[1])
        for key, value in [
            ("whitened", final["whitened"]),
            ("whitened_distance", final["distance"]),
            ("scale", final["scale"]),
            ("A_norm", model.A.detach().double().norm(dim=(-2, -1))[:, 0]),
            ("asymmetry", evaluate.asymmetry(model.A.detach().double())[:, 0]),
            ("u_P_norm", u_P),
            ("u_Q_norm", u_Q),
            ("u_initial_norm", torch.maximum(h_uP[0], h_uQ[0])),
            ("test_loss", loss),
            ("test_loss_se", loss_se),
            ("whitened_distance_history", history["distance"]),
            ("scale_history", history["scale"]),
            ("u_P_history", h_uP),
            ("u_Q_history", h_uQ),
        ]:
            rows.setdefault(key, []).append(value.detach().double().cpu())
        snapshot_steps = trained.snapshot_steps
        main[L] = _members(model, 0, S, L)
    stacked = {key: torch.stack(value) for key, value in rows.items()}
    for key in ("whitened_distance_history", "scale_history", "u_P_history", "u_Q_history"):
        stacked[key] = stacked[key].permute(1, 0, 2)
    return stacked, snapshot_steps, main


def untied_runs(config: LoopedConfig, identity: torch.Tensor, progress: bool) -> dict[str, Any]:
    """Untied sparse models at ``n_context`` on Σ = I for every L >= 2: losses (K₂, S), sorted layer scales."""
    S, n0 = config.n_seeds, config.n_context
    untied_loops = [L for L in config.loops if L >= 2]
    untied_loss, untied_se, untied_scales = [], [], []
    for L in untied_loops:
        model, _ = _train(config, "untied", n0, (L,), identity, progress)
        loss, loss_se = _test_loss(model, identity, n0, config, run_part("untied", n0, (L,))[1])
        untied_loss.append(loss.cpu())
        untied_se.append(loss_se.cpu())
        scales = torch.diagonal(model.A.detach().double(), dim1=-2, dim2=-1).mean(-1).sort(-1).values
        untied_scales.append(scales.cpu().tolist())
    return {
        "untied_loops": torch.tensor(untied_loops, dtype=torch.long),
        "untied_loss": torch.stack(untied_loss) if untied_loss else torch.empty(0, S, dtype=torch.float64),
        "untied_loss_se": torch.stack(untied_se) if untied_se else torch.empty(0, S, dtype=torch.float64),
        "untied_scales": untied_scales,
    }


def sweep_runs(
    config: LoopedConfig, main: dict[int, LinearTransformer], identity: torch.Tensor, progress: bool
) -> tuple[dict[str, torch.Tensor], dict[tuple[int, int], tuple[LinearTransformer, torch.Tensor]]]:
    """Looped models on Σ = I at every n of the sweep and L in ``looping_from`` (at ``n_context`` the main runs'
    members): scales, distances, u ratios (N, J, S) and a*(n, L) (N, J); and, per (n, L), the models and scales."""
    sweep: dict[str, list[torch.Tensor]] = {"scale": [], "distance": [], "u": [], "optimal": []}
    looped_at: dict[tuple[int, int], tuple[LinearTransformer, torch.Tensor]] = {}
    for n in config.n_sweep:
        row: dict[str, list[torch.Tensor]] = {k: [] for k in sweep}
        runs = (
            [(L, main[L], None) for L in config.looping_from]  # at n0, the main runs' Σ = I members
            if n == config.n_context
            else _looped_runs(config, n, config.looping_from, identity, progress)
        )
        for L, model, _ in runs:
            summary = _preconditioner(model.A.detach(), identity)
            u_P, u_Q = _u_norm(dict(model.named_parameters()))
            ratio = torch.maximum(u_P, u_Q) / model.A.detach().double().norm(dim=(-2, -1))[:, 0]
            row["scale"].append(summary["scale"].cpu())
            row["distance"].append(summary["distance"].cpu())
            row["u"].append(ratio.cpu())
            row["optimal"].append(theory.optimal_looped_step_size(config.dim, n, L).step_sizes[0])
            looped_at[(n, L)] = (model, summary["scale"])
        for key in sweep:
            sweep[key].append(torch.stack(row[key]))
    return {
        "sweep_optimal_step_size": torch.stack(sweep["optimal"]).double(),
        "sweep_scale": torch.stack(sweep["scale"]),
        "sweep_distance": torch.stack(sweep["distance"]),
        "sweep_u_ratio": torch.stack(sweep["u"]),
    }, looped_at


def underdetermined_runs(config: LoopedConfig, identity: torch.Tensor, progress: bool) -> dict[str, torch.Tensor]:
    """Looped models on Σ = I at n = ``n_underdetermined`` < d for every L in ``loops``: the optimum a*(n, L) and
    its MSE (K,), and per model the scale, Dist(A, I), the u ratio and the test MSE with its s.e. (K, S)."""
    n = config.n_underdetermined
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in ("scale", "distance", "u_ratio", "loss", "loss_se")}
    longer = dataclasses.replace(config, train_steps=config.underdetermined_train_steps)
    for L, model, _ in _looped_runs(longer, n, config.loops, identity, progress):
        summary = _preconditioner(model.A.detach(), identity)
        u_P, u_Q = _u_norm(dict(model.named_parameters()))
        loss, loss_se = _test_loss(model, identity, n, config, run_part("looped", n, (L,))[1])
        rows["scale"].append(summary["scale"])
        rows["distance"].append(summary["distance"])
        rows["u_ratio"].append(torch.maximum(u_P, u_Q) / model.A.detach().double().norm(dim=(-2, -1))[:, 0])
        rows["loss"].append(loss)
        rows["loss_se"].append(loss_se)
    optima = [theory.optimal_looped_step_size(config.dim, n, L) for L in config.loops]
    out = {f"underdetermined_{key}": torch.stack(value).detach().double().cpu() for key, value in rows.items()}
    out["underdetermined_optimal_step_size"] = torch.stack([o.step_sizes[0] for o in optima]).double().cpu()
    out["underdetermined_optimal_loss"] = torch.stack([o.loss for o in optima]).double().cpu()
    return out


def theory_columns(config: LoopedConfig) -> dict[str, Any]:
    """The optima at ``n_context`` for every L in ``loops``: a*, the looped and untied MSE, the untied steps."""
    optima = [theory.optimal_looped_step_size(config.dim, config.n_context, L) for L in config.loops]
    untied_optima = [theory.optimal_multi_step(config.dim, config.n_context, L) for L in config.loops]
    return {
        "optimal_step_size": torch.stack([o.step_sizes[0] for o in optima]),
        "optimal_loss": torch.stack([o.loss for o in optima]),
        "untied_optimal_loss": torch.stack([o.loss for o in untied_optima]),
        "untied_optimal_steps": [o.step_sizes.tolist() for o in untied_optima],
    }


def check(checks: ClaimChecks, result: LoopedResult, config: LoopedConfig) -> None:
    """The first claim's checks: u → 0, A a multiple of Σ⁻¹ at the scale a*, the looped optimum's MSE, and the
    untied model at or below the looped one and near its own optimum."""
    u_ratio = torch.maximum(result.u_P_norm, result.u_Q_norm) / result.A_norm
    u_worst = max(u_ratio.max().item(), result.sweep_u_ratio.max().item(), result.underdetermined_u_ratio.max().item())
    checks.at_most(
        "max over looped models of max(‖u_P‖, ‖u_Q‖) / ‖A‖_F",
        u_worst,
        0.05,
        reason=f"u → 0 (it starts at up to {result.u_initial_norm.max().item():.2f} in norm)",
    )
    distance = max(result.whitened_distance.max().item(), result.sweep_distance.max().item())
    checks.at_most("max over looped models of Dist(Σ^½ A Σ^½, I)", distance, 0.05, reason="A is a multiple of Σ⁻¹")
    main_error = (result.scale / result.optimal_step_size[:, None] - 1).abs().max().item()
    sweep_error = (result.sweep_scale / result.sweep_optimal_step_size[..., None] - 1).abs().max().item()
    checks.at_most(
        "max over looped models of |a / a*(n, L) − 1|",
        max(main_error, sweep_error),
        0.05,
        reason="a = tr(Σ^½ A Σ^½)/d; a* < 1 falls with L and rises with n",
    )
    for k, L in enumerate(config.loops):
        se = (result.test_loss_se[k] ** 2).mean().sqrt().item() / result.test_loss.shape[1] ** 0.5
        checks.close(
            f"L = {L}: looped test MSE, mean over models (s.e. {se:.4f})",
            result.test_loss[k].mean().item(),
            result.optimal_loss[k].item(),
            rtol=0.05,
            reason="against the looped optimum d·E(1 − a*λ)²ᴸ",
        )
    tag = f"n = {config.n_underdetermined} < d = {config.dim}"
    checks.at_most(
        f"{tag}: max over looped models of Dist(A, I)",
        result.underdetermined_distance.max().item(),
        0.05,
        reason="A is a multiple of I below n = d too",
    )
    checks.at_most(
        f"{tag}: max over looped models of |a / a*(n, L) − 1|",
        (result.underdetermined_scale / result.underdetermined_optimal_step_size[:, None] - 1).abs().max().item(),
        0.05,
        reason="the exact a*, still defined when Ŝ is singular",
    )
    for k, L in enumerate(config.loops):
        se = (result.underdetermined_loss_se[k] ** 2).mean().sqrt().item() / result.underdetermined_loss.shape[1] ** 0.5
        checks.close(
            f"{tag}, L = {L}: looped test MSE, mean over models (s.e. {se:.4f})",
            result.underdetermined_loss[k].mean().item(),
            result.underdetermined_optimal_loss[k].item(),
            rtol=0.05,
            reason=f"against the looped optimum, which is at least d − n = {config.dim - config.n_underdetermined}",
        )
    for k, L in enumerate(result.untied_loops.tolist()):
        looped = result.test_loss[config.loops.index(L), : config.n_seeds].mean().item()
        untied = result.untied_loss[k].mean().item()
        checks.at_most(
            f"L = {L}: untied test MSE (mean over seeds, Σ = I)",
            untied,
            looped,
            reason="at or below the looped model's",
        )
        checks.close(
            f"L = {L}: untied test MSE against its optimum",
            untied,
            result.untied_optimal_loss[config.loops.index(L)].item(),
            rtol=0.10,
            reason="the untied optimum: one step size per layer",
        )


def summary(result: LoopedResult, config: LoopedConfig) -> dict[str, Any]:
    """The numbers the chapter quotes about training (glue names without the chapter's prefix)."""
    r, d, n0, S = result, config.dim, config.n_context, config.n_seeds
    ratio = r.test_loss / r.optimal_loss[:, None]
    if len(r.untied_loops):
        untied = r.untied_loops.tolist()
        gains = r.test_loss[[config.loops.index(L) for L in untied], :S].mean(-1) / r.untied_loss.mean(-1)
        untied_gain = ", ".join(f"{g:.2f} (L = {L})" for g, L in zip(gains.tolist(), untied, strict=True))
    else:
        untied_gain = "(no untied run)"
    all_a = torch.cat([r.optimal_step_size, r.sweep_optimal_step_size.flatten()])
    under = r.underdetermined_loss.mean(-1) / r.underdetermined_optimal_loss
    return {
        "d": d,
        "n": n0,
        "u_std": config.u_init_std,
        "l1_formula": n0 / (n0 + d + 1),
        "clip": config.clip_norm,
        "seeds": S,
        "kappa": config.condition_number,
        "u_ratio": (torch.maximum(r.u_P_norm, r.u_Q_norm) / r.A_norm).max().item(),
        "u_start": r.u_initial_norm.max().item(),
        "uP_max": r.u_P_norm.max().item(),
        "uQ_max": r.u_Q_norm.max().item(),
        "dist_max": r.whitened_distance.max().item(),
        "scale_error": (r.scale / r.optimal_step_size[:, None] - 1).abs().max().item(),
        "asymmetry": r.asymmetry.max().item(),
        "u_typical": config.u_init_std * d**0.5,
        "a_low": all_a.min().item(),
        "a_high": all_a.max().item(),
        "loss_ratio_low": ratio.min().item(),
        "loss_ratio_high": ratio.max().item(),
        "untied_gain": untied_gain,
        "under_n": config.n_underdetermined,
        "under_steps": config.underdetermined_train_steps,
        "under_floor": d - config.n_underdetermined,
        "under_dist_max": r.underdetermined_distance.max().item(),
        "under_scale_error": (r.underdetermined_scale / r.underdetermined_optimal_step_size[:, None] - 1)
        .abs()
        .max()
        .item(),
        "under_a_high": r.underdetermined_optimal_step_size.max().item(),
        "under_a_low": r.underdetermined_optimal_step_size.min().item(),
        "under_loss_ratio_low": under.min().item(),
        "under_loss_ratio_high": under.max().item(),
    }
