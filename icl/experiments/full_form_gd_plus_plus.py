"""With the covariate rows trainable too (the (11) form), L layers learn GD++: A_ℓ = a_ℓ Σ⁻¹ and
B_ℓ = b_ℓ I, far below L steps of preconditioned GD (Ahn et al. 2023, Thm 4, Figs 3–7; Fig. 6 is the sweep
over context lengths).

Per layer P = [[B_ℓ, 0], [0, 1]], Q = −diag(A_ℓ, 0); A_ℓ and B_ℓ trained. Data x ~ N(0, Σ), w ~ N(0, Σ⁻¹),
noiseless, Σ = U diag(spectrum) Uᵀ with a random rotation per seed. One ensemble (one model per seed) per
depth L in ``depths``; the run at ``n_layers`` records snapshots. Baselines on the same test prompts: L
steps of plain GD and of GD preconditioned by Σ⁻¹, each with one shared step size (fitted exactly on
validation prompts, and exact by theory for Σ⁻¹), and the sparse model's optimum (one step size per
layer, :func:`icl.theory.optimal_multi_step`).

Shapes in the result: ``D`` depths, ``S`` seeds, ``L`` layers of the main run, ``T`` snapshots.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from icl import baselines, evaluate, rng, tasks, theory
from icl.baselines import best_shared_step_size
from icl.checks import ClaimChecks
from icl.config import (
    LinearExperimentConfig,
    finite_float,
    int_tuple,
    positive_float_tuple,
    positive_int,
)
from icl.evaluate import downsample_curve, whiten
from icl.models import LinearTransformer, lsa_layer
from icl.tasks import AHN_SPECTRUM, rotated_covariances
from icl.tokens import to_tokens
from icl.train import TrainConfig, fit_cached

NAME = "full_form_gd_plus_plus"
SNAPSHOTS = 200
EVAL_CHUNK = 20_000

# The paper note's predicted baselines (papers/ahn2023_preconditioned_gd.md §4; d = 5, L = 3 for Fig. 6, n = 20 for
# Fig. 7; one continuously optimal step size, all n context points), the re-checked value where the note gives one.
# Preconditioned GD is whitening-invariant, so its values hold for any spectrum; plain GD's only for the paper's.
NOTE_FIG6_PGD = {2: 3.38, 4: 2.33, 6: 1.63, 8: 1.17, 10: 0.88, 12: 0.66, 14: 0.50, 16: 0.41, 18: 0.33, 20: 0.27}
NOTE_FIG6_GD = {2: 3.84, 4: 3.08, 6: 2.56, 8: 2.20, 10: 1.98, 12: 1.79, 14: 1.64, 16: 1.54, 18: 1.46, 20: 1.38}
NOTE_FIG7_LN_PGD = {1: 0.14, 2: -0.70, 3: -1.31, 4: -1.83}
NOTE_FIG7_LN_GD = {1: 0.81, 2: 0.49, 3: 0.33, 4: 0.17}


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
    whitened_distance: torch.Tensor  # (S, L)
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
    n_context: int
    spectrum: tuple[float, ...]
    elapsed_seconds: float


def covariances(config: FullFormConfig) -> torch.Tensor:
    """(S, d, d) float64: U diag(spectrum) Uᵀ, one random rotation per seed (shared by every depth)."""
    return rotated_covariances(config.spectrum, config.n_seeds, seed=config.seed, device=config.device)


def _sample(
    config: FullFormConfig, covariance: torch.Tensor, size: int, generator: torch.Generator, dtype, n: int | None = None
):
    return tasks.sample_regression(
        size,
        config.n_context if n is None else n,
        covariance.to(dtype),
        generator=generator,
        task_prior="inverse_covariance",
        dtype=dtype,
    )


def _fit(
    config: FullFormConfig,
    covariance: torch.Tensor,
    *,
    depth: int,
    n: int,
    clip: float,
    steps: int,
    batch_size: int,
    slug: str,
    part: int,
    progress: bool,
    snapshots: bool = False,
):
    """Train (or load) one ensemble of (11)-form models, one per seed, with its own random streams."""
    streams = rng.streams(config.seed, config.device, part=part)
    model = LinearTransformer(
        config.dim,
        depth,
        parameterisation="eleven",
        n_models=config.n_seeds,
        init_std=config.init_std,
        generator=streams.init,
    )
    trained = fit_cached(
        NAME,
        config,
        slug,
        model,
        lambda g: _sample(config, covariance, batch_size, g, torch.float32, n=n),
        TrainConfig(steps=steps, learning_rate=config.learning_rate, clip_norm=clip),
        generator=streams.train,
        progress=progress,
        description=f"{depth} layers, n = {n}, cap {clip:g}, {config.n_seeds} models",
        snapshot_every=max(1, steps // SNAPSHOTS) if snapshots else None,
    )
    return model, trained


def _train(config: FullFormConfig, covariance: torch.Tensor, depth: int, progress: bool):
    """The depth sweep at n_context with the main clip; the run at n_layers records snapshots."""
    return _fit(
        config,
        covariance,
        depth=depth,
        n=config.n_context,
        clip=config.clip_norm,
        steps=config.train_steps,
        batch_size=config.batch_size,
        slug=f"L{depth}",
        part=depth,
        progress=progress,
        snapshots=depth == config.n_layers,
    )


def _train_at(config: FullFormConfig, covariance: torch.Tensor, n: int, clip: float, part: int, progress: bool):
    """An L = n_layers ensemble trained at context length n with gradient cap ``clip`` (the Fig. 6 sweep)."""
    model, _ = _fit(
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


def _sweep(config: FullFormConfig, covariance: torch.Tensor, progress: bool) -> dict[str, torch.Tensor]:
    """Fig. 6: at every n of the sweep, the trained L-layer model (guard cap, and the main clip at clipped_contexts),
    L steps of GD (one fitted step), L steps preconditioned by a*(n) Σ⁻¹ and least squares, on shared test prompts."""
    d, L, S = config.dim, config.n_layers, config.n_seeds
    inverse = torch.linalg.inv(covariance).unsqueeze(1)
    out: dict[str, list[torch.Tensor]] = {}
    for n in config.context_sweep:
        model = _train_at(config, covariance, n, config.sweep_clip_norm, 1000 + n, progress)
        validation = _sample(
            config,
            covariance,
            config.n_validation,
            rng.streams(config.seed, config.device, part=1000 + n).eval,
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
            predictors["clipped"] = _train_at(config, covariance, n, config.clip_norm, 2000 + n, progress).predict
        errors = _squared_errors(predictors, config, covariance, part=1000 + n, n=n)
        values = {
            "loss": errors["model"].mean(-1),
            "loss_se": errors["model"].std(-1) / errors["model"].shape[-1] ** 0.5,
            "median": errors["model"].median(-1).values,
            "gd": errors["gd"].mean(-1),
            "pgd": errors["pgd"].mean(-1),
            "pgd_exact": pgd.loss,
            "ols": errors["ols"].mean(-1),
        }
        if "clipped" in errors:
            values["clipped"] = errors["clipped"].mean(-1)
            values["clipped_median"] = errors["clipped"].median(-1).values
        for key, value in values.items():
            out.setdefault(key, []).append(torch.as_tensor(value).detach().double().cpu())
    return {key: torch.stack(value) for key, value in out.items()}


def _read(A: torch.Tensor, B: torch.Tensor, covariance: torch.Tensor) -> dict[str, torch.Tensor]:
    """Distances and scalars of (..., S, L, d, d) blocks."""
    whitened = whiten(evaluate.symmetric_part(A.double()), covariance)
    B = B.double()
    return {
        "whitened": whitened,
        "B": B,
        "whitened_distance": evaluate.distance_to_identity(whitened),
        "B_distance": evaluate.distance_to_identity(B),
        "a": torch.diagonal(whitened, dim1=-2, dim2=-1).mean(-1),
        "b": torch.diagonal(B, dim1=-2, dim2=-1).mean(-1),
    }


def _projected(model: LinearTransformer, read: dict[str, torch.Tensor], covariance: torch.Tensor) -> LinearTransformer:
    """A copy of the (11)-form model with every A_ℓ replaced by a_ℓ Σ⁻¹ and every B_ℓ by b_ℓ I."""
    d = model.dim
    copy = LinearTransformer(
        d,
        model.n_layers,
        parameterisation="eleven",
        n_models=model.n_models,
        init_std=0.0,
        generator=torch.Generator(device=covariance.device),
    )
    inverse = torch.linalg.inv(covariance)[:, None]  # (S, 1, d, d)
    eye = torch.eye(d, dtype=torch.float64, device=covariance.device)
    with torch.no_grad():
        copy.A.copy_(read["a"][..., None, None] * inverse)
        copy.B.copy_(read["b"][..., None, None] * eye)
    return copy


CONDITION_PROMPTS = 2000


@torch.no_grad()
def condition_numbers(model: LinearTransformer, covariance: torch.Tensor, config: FullFormConfig) -> torch.Tensor:
    """Median over prompts of the condition number of the whitened sample covariance Σ^{-½} Ŝ_ℓ Σ^{-½} of the
    context covariates as they enter layer ℓ (they move when B_ℓ ≠ 0). -> (L, S)."""
    generator = rng.streams(config.seed + 2, config.device).eval
    batch = _sample(config, covariance, CONDITION_PROMPTS, generator, torch.float64)
    eigenvalues, vectors = torch.linalg.eigh(covariance)
    inverse_half = ((vectors * eigenvalues.rsqrt().unsqueeze(-2)) @ vectors.mT)[:, None]  # (S, 1, d, d)
    Z = to_tokens(batch.X, batch.y, batch.x_query)  # (S, B, d+1, n+1)
    P, Q = (w.detach().double() for w in model.weights())
    d, n = config.dim, config.n_context
    medians = []
    for layer in range(model.n_layers):
        X = Z[..., :d, :n]  # (S, B, d, n): context covariates
        whitened = inverse_half @ (X @ X.mT / n) @ inverse_half
        spectrum = torch.linalg.eigvalsh(whitened)
        medians.append((spectrum[..., -1] / spectrum[..., 0]).median(-1).values)
        Z = lsa_layer(Z, P[:, layer], Q[:, layer])
    return torch.stack(medians)


def run(config: FullFormConfig, *, progress: bool = True) -> FullFormResult:
    """Train every depth (or load from the store), fit the baselines, evaluate on shared test prompts."""
    start = time.perf_counter()
    covariance = covariances(config)
    inverse = torch.linalg.inv(covariance).unsqueeze(1)  # (S, 1, d, d): broadcasts over prompts
    d, n, S = config.dim, config.n_context, config.n_seeds
    validation = _sample(
        config, covariance, config.n_validation, rng.streams(config.seed, config.device).eval, torch.float64
    )

    losses, ses, medians, gd_losses, gd_steps, pgd_losses, pgd_steps, pgd_exact, sparse = ([] for _ in range(9))
    main: dict[str, Any] = {}
    for depth in config.depths:
        model, trained = _train(config, covariance, depth, progress)
        pgd = theory.optimal_looped_step_size(d, n, depth)
        pgd_step = pgd.step_sizes[0].item()
        pgd_steps.append(pgd.step_sizes[0])
        pgd_exact.append(pgd.loss)
        sparse.append(theory.optimal_multi_step(d, n, depth).loss)
        # Plain GD: one step size per seed (each seed has its own Σ), fitted exactly on the validation prompts.
        fitted = [
            best_shared_step_size(
                lambda e, s=s, k=depth: baselines.gd(
                    validation.X[s], validation.y[s], validation.x_query[s], e, n_steps=k
                ),
                validation.y_query[s],
                depth,
                scale=0.1,
            )[0]
            for s in range(S)
        ]
        gd_steps.append(torch.tensor(fitted, dtype=torch.float64))
        predictors = {
            "model": lambda X, y, q, m=model: m.predict(X, y, q),
            "gd": lambda X, y, q, k=depth, e=fitted: baselines.preconditioned_gd(
                X,
                y,
                q,
                torch.tensor(e, dtype=X.dtype, device=X.device)[:, None, None, None]
                * torch.eye(d, dtype=X.dtype, device=X.device),
                n_steps=k,
            ),
            "pgd": lambda X, y, q, k=depth, a=pgd_step: baselines.preconditioned_gd(
                X, y, q, a * inverse.to(X.dtype), n_steps=k
            ),
        }
        if depth == config.n_layers:
            read = _read(model.A.detach(), model.B.detach(), covariance)
            conditioning = condition_numbers(model, covariance, config)
            predictors["projected"] = _projected(model, read, covariance).predict
        errors = _squared_errors(predictors, config, covariance, part=depth)
        estimate = evaluate.mse(errors["model"].sqrt(), torch.zeros_like(errors["model"]))
        losses.append(estimate.mean)
        ses.append(estimate.standard_error)
        medians.append(errors["model"].median(-1).values)
        gd_losses.append(errors["gd"].mean(-1))
        pgd_losses.append(errors["pgd"].mean(-1))
        if depth == config.n_layers:
            history = _read(
                trained.snapshots["A"].to(covariance.device), trained.snapshots["B"].to(covariance.device), covariance
            )
            main = {
                "read": read,
                "conditioning": conditioning,
                "projected": errors["projected"].mean(-1),
                "trained": trained,
                "history": history,
            }

    sweep = _sweep(config, covariance, progress)
    steps, curve = downsample_curve(main["trained"].losses)
    cpu = lambda x: torch.as_tensor(x).detach().double().cpu()  # noqa: E731
    stack = lambda xs: cpu(torch.stack([torch.as_tensor(x) for x in xs]))  # noqa: E731
    read, history = main["read"], main["history"]
    return FullFormResult(
        covariance=cpu(covariance),
        whitened=cpu(read["whitened"]),
        B=cpu(read["B"]),
        whitened_distance=cpu(read["whitened_distance"]),
        B_distance=cpu(read["B_distance"]),
        a=cpu(read["a"]),
        b=cpu(read["b"]),
        projected_loss=cpu(main["projected"]),
        condition_number=cpu(main["conditioning"]),
        depths=torch.tensor(config.depths),
        loss=stack(losses),
        loss_se=stack(ses),
        median_loss=stack(medians),
        gd_loss=stack(gd_losses),
        gd_step_size=stack(gd_steps),
        pgd_loss=stack(pgd_losses),
        pgd_step_size=stack(pgd_steps),
        pgd_exact_loss=stack(pgd_exact),
        sparse_loss=stack(sparse),
        snapshot_steps=main["trained"].snapshot_steps,
        whitened_distance_history=cpu(history["whitened_distance"]),
        B_distance_history=cpu(history["B_distance"]),
        curve_steps=steps,
        curve=cpu(curve),
        sweep_contexts=torch.tensor(config.context_sweep),
        sweep_loss=sweep["loss"],
        sweep_loss_se=sweep["loss_se"],
        sweep_median=sweep["median"],
        sweep_gd_loss=sweep["gd"],
        sweep_pgd_loss=sweep["pgd"],
        sweep_pgd_exact=sweep["pgd_exact"],
        sweep_least_squares=sweep["ols"],
        clipped_contexts=torch.tensor(config.clipped_contexts),
        clipped_loss=sweep["clipped"],
        clipped_median=sweep["clipped_median"],
        n_context=config.n_context,
        spectrum=config.spectrum,
        elapsed_seconds=time.perf_counter() - start,
    )


@torch.no_grad()
def _squared_errors(
    predictors: dict[str, Any], config: FullFormConfig, covariance: torch.Tensor, part: int, n: int | None = None
):
    """Squared errors (S, n_test) of every predictor on the same test prompts (a test set per depth, or per n)."""
    generator = rng.streams(config.seed + 1, config.device, part=part).eval
    errors: dict[str, list[torch.Tensor]] = {name: [] for name in predictors}
    for start in range(0, config.n_test, EVAL_CHUNK):
        batch = _sample(config, covariance, min(EVAL_CHUNK, config.n_test - start), generator, torch.float32, n=n)
        for name, predict in predictors.items():
            errors[name].append((predict(batch.X, batch.y, batch.x_query).double() - batch.y_query.double()) ** 2)
    return {name: torch.cat(chunks, -1) for name, chunks in errors.items()}


def claim_checks(result: FullFormResult) -> ClaimChecks:
    """The chapter's claim checks; the chapter states the tolerances and why each can fail."""
    r = result
    checks = ClaimChecks()
    L = r.whitened.shape[1]
    checks.at_most(
        "max over seeds and layers of Dist(Σ^½ A_ℓ Σ^½, I)",
        r.whitened_distance.max().item(),
        0.05,
        reason="every A_ℓ a multiple of Σ⁻¹",
    )
    if L > 1:
        checks.at_most(
            "max over seeds of Dist(B_ℓ, I), ℓ < L",
            r.B_distance[:, : L - 1].max().item(),
            0.05,
            reason="every B_ℓ that acts a multiple of I",
        )
        checks.at_most(
            "worst seed's median condition number into layer L / into layer 1",
            (r.condition_number[-1] / r.condition_number[0]).max().item(),
            0.5,
            reason="the covariate updates condition the data",
        )
    main = int((r.depths == L).nonzero()[0, 0])
    checks.at_most(
        f"{L} layers: worst seed's ln test MSE",
        r.loss[main].log().max().item(),
        -6.5,
        reason="the paper's code ends at −7.12",
    )
    checks.close(
        "projected model (a_ℓ Σ⁻¹, b_ℓ I) / trained model, test MSE (worst seed)",
        (r.projected_loss / r.loss[main]).max().item(),
        1.0,
        rtol=0.1,
        reason="the trained model is in the theorem's set",
    )
    one = r.depths == 1
    if one.any():
        k = int(one.nonzero()[0, 0])
        checks.close(
            "1 layer: test MSE / exact one-step optimum",
            r.loss[k].mean().item() / r.sparse_loss[k].item(),
            1.0,
            rtol=0.03,
            reason="B₁ has no effect with one layer",
        )
    deeper = r.depths >= 2
    if deeper.any():
        checks.at_most(
            "L ≥ 2: worst (depth, seed) test MSE / sparse optimum",
            (r.loss[deeper] / r.sparse_loss[deeper, None]).max().item(),
            0.5,
            reason="GD++ beats every preconditioned GD",
        )
    beyond = r.sweep_contexts >= 4
    if beyond.any():
        checks.at_most(
            "n ≥ 4: worst (n, seed) test MSE / exact MSE of GD with a*(n) Σ⁻¹",
            (r.sweep_loss[beyond] / r.sweep_pgd_exact[beyond, None]).max().item(),
            1.0,
            reason="the paper's Figure 6 ordering, for the mean",
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
    _paper_note_baselines(r, checks)
    return checks


def _paper_note_baselines(r: FullFormResult, checks: ClaimChecks) -> None:
    """The baselines' Monte Carlo curves (mean over seeds) against the paper note's values, where these apply: Fig. 6
    (3 steps, d = 5) at every n of the sweep in the note's table, and Fig. 7 (n = 20, d = 5) at every depth; plain GD
    only on the paper's spectrum."""
    if len(r.spectrum) != 5:
        return
    L = r.whitened.shape[1]
    rows = [("preconditioned GD", r.sweep_pgd_loss, NOTE_FIG6_PGD, r.pgd_loss, NOTE_FIG7_LN_PGD)]
    if sorted(r.spectrum) == sorted(AHN_SPECTRUM):
        rows.append(("GD", r.sweep_gd_loss, NOTE_FIG6_GD, r.gd_loss, NOTE_FIG7_LN_GD))
    for name, sweep, fig6, by_depth, fig7 in rows:
        ns = [(i, n) for i, n in enumerate(r.sweep_contexts.tolist()) if n in fig6]
        if L == 3 and ns:
            ratios = [sweep[i].mean().item() / fig6[n] for i, n in ns]
            worst = max(ratios, key=lambda x: abs(x - 1))
            checks.close(
                f"Fig. 6, {L} steps of {name}: Monte Carlo MSE / the paper note's, worst n of {[n for _, n in ns]}",
                worst,
                1.0,
                rtol=0.05,
                reason="5 %: the note's two decimals (≤ 2 % at n = 20) and the test set's Monte Carlo error",
            )
        depths = [(k, m) for k, m in enumerate(r.depths.tolist()) if m in fig7]
        if r.n_context == 20 and depths:
            gaps = [by_depth[k].mean().log().item() - fig7[m] for k, m in depths]
            checks.close(
                f"Fig. 7, L-step {name} at n = 20: ln MSE − the paper note's, worst L of {[m for _, m in depths]}",
                max(gaps, key=abs),
                0.0,
                atol=0.05,
                reason="± 0.05 in ln MSE, the note's bar (its values are re-checked to ± 0.02)",
            )


def key_arrays(result: FullFormResult) -> dict[str, Any]:
    """The arrays a reader most likely wants, for the chapter's JSON (the curves are left out)."""
    return {
        k: v for k, v in result._asdict().items() if "history" not in k and "curve" not in k and k != "snapshot_steps"
    }
