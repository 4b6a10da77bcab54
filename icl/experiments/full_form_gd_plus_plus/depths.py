"""The depth runs (Ahn et al. 2023, Thm 4, Figs 3–5 and 7): at n_context, one ensemble per depth L; the blocks
become A_ℓ = a_ℓ Σ⁻¹ and B_ℓ = b_ℓ I, and the loss falls far below L steps of preconditioned GD.

The run at ``n_layers`` records snapshots of its blocks, and is read three ways: its blocks' distances to the
theorem's set and their scalars a_ℓ, b_ℓ; the model projected onto that set; and the conditioning of the
covariates entering each layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from icl import baselines, evaluate, rng, theory
from icl.baselines import best_shared_step_size
from icl.checks import ClaimChecks
from icl.evaluate import downsample_curve, whiten
from icl.models import LinearTransformer, lsa_layer
from icl.tokens import to_tokens
from icl.train import TrainResult

from .shared import fit, sample, squared_errors

if TYPE_CHECKING:
    from icl.experiments.full_form_gd_plus_plus import FullFormConfig, FullFormResult

CONDITION_PROMPTS = 2000
# The paper note's ln MSE of L steps at n = 20, d = 5 (papers/ahn2023_preconditioned_gd.md §4, Fig. 7).
NOTE_FIG7_LN_PGD = {1: 0.14, 2: -0.70, 3: -1.31, 4: -1.83}
NOTE_FIG7_LN_GD = {1: 0.81, 2: 0.49, 3: 0.33, 4: 0.17}
# The paper's final blocks at L = 3, n = 20, d = 5 (its Figs 4 and 5, read off the printed heat maps: B_ℓ ≈ b_ℓ I,
# Σ^½ A_ℓ Σ^½ ≈ a_ℓ I; the note gives B₁ as 0.56–0.57). They are whitening-invariant, so they hold at any spectrum.
PAPER_FIG5_A = (0.38, 2.40, 9.59)
PAPER_FIG4_B = (0.90, 0.565)


def fit_depth(
    config: FullFormConfig, covariance: torch.Tensor, depth: int, progress: bool
) -> tuple[LinearTransformer, TrainResult]:
    """The ensemble of depth ``depth`` at n_context with the main clip; the run at n_layers records snapshots."""
    return fit(
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


def run(config: FullFormConfig, covariance: torch.Tensor, progress: bool) -> dict[str, torch.Tensor]:
    """Train every depth (or load it), fit the baselines, evaluate on a test set per depth: the result's fields
    from ``whitened`` to ``curve`` (see :class:`~icl.experiments.full_form_gd_plus_plus.FullFormResult`)."""
    inverse = torch.linalg.inv(covariance).unsqueeze(1)  # (S, 1, d, d): broadcasts over prompts
    d, n, S = config.dim, config.n_context, config.n_seeds
    validation = sample(
        config, covariance, config.n_validation, rng.streams(config.seed, config.device).eval, torch.float64
    )

    losses, ses, medians, gd_losses, gd_steps, pgd_losses, pgd_steps, pgd_exact, sparse = ([] for _ in range(9))
    main: dict[str, Any] = {}
    for depth in config.depths:
        model, trained = fit_depth(config, covariance, depth, progress)
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
        errors = squared_errors(predictors, config, covariance, part=depth)
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

    steps, curve = downsample_curve(main["trained"].losses)
    cpu = lambda x: torch.as_tensor(x).detach().double().cpu()  # noqa: E731
    stack = lambda xs: cpu(torch.stack([torch.as_tensor(x) for x in xs]))  # noqa: E731
    read, history = main["read"], main["history"]
    return dict(
        whitened=cpu(read["whitened"]),
        B=cpu(read["B"]),
        whitened_distance=cpu(read["whitened_distance"]),
        raw_distance=cpu(read["raw_distance"]),
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
    )


def _read(A: torch.Tensor, B: torch.Tensor, covariance: torch.Tensor) -> dict[str, torch.Tensor]:
    """Distances and scalars of (..., S, L, d, d) blocks."""
    whitened = whiten(evaluate.symmetric_part(A.double()), covariance)
    B = B.double()
    return {
        "whitened": whitened,
        "B": B,
        "whitened_distance": evaluate.distance_to_identity(whitened),
        "raw_distance": evaluate.distance_to_identity(evaluate.symmetric_part(A.double())),
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


@torch.no_grad()
def condition_numbers(model: LinearTransformer, covariance: torch.Tensor, config: FullFormConfig) -> torch.Tensor:
    """Median over prompts of the condition number of the whitened sample covariance Σ^{-½} Ŝ_ℓ Σ^{-½} of the
    context covariates as they enter layer ℓ (they move when B_ℓ ≠ 0). -> (L, S)."""
    generator = rng.streams(config.seed + 2, config.device).eval
    batch = sample(config, covariance, CONDITION_PROMPTS, generator, torch.float64)
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


def claim_checks(r: FullFormResult, checks: ClaimChecks) -> None:
    """The depth runs' checks: the blocks in the theorem's set, the covariates conditioned, the loss far below
    preconditioned GD."""
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
    paper_scalars(r, checks)
    main = main_index(r)
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


def main_index(r: FullFormResult) -> int:
    """The index of the main run (L = n_layers) among the depths."""
    return int((r.depths == r.whitened.shape[1]).nonzero()[0, 0])


def paper_scalars(r: FullFormResult, checks: ClaimChecks) -> None:
    """Every seed's a_ℓ and b_ℓ against the paper's Figures 4–5, where these apply (L = 3, n = 20, d = 5)."""
    L = r.whitened.shape[1]
    if not (L == 3 and r.n_context == 20 and len(r.spectrum) == 5):
        return
    gaps = torch.cat(
        [
            r.a / torch.tensor(PAPER_FIG5_A, dtype=r.a.dtype) - 1,
            r.b[:, :2] / torch.tensor(PAPER_FIG4_B, dtype=r.b.dtype) - 1,
        ],
        dim=-1,
    )
    checks.at_most(
        "Figs 4–5: learned a_ℓ, b_ℓ against the paper's (0.38, 2.40, 9.59; 0.90, 0.565), worst relative gap",
        gaps.abs().max().item(),
        0.10,
        reason="10 %, the design note's bar: the paper prints two digits of one run with another clip and budget",
    )
