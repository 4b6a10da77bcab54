"""A transformer built by hand is gradient descent, and a trained one finds it: one layer learns one GD
step, and a weight-tied two-layer model learns GD++ rather than two GD steps (von Oswald et al. 2023,
Prop. 1, Figs 2 and 3a).

Data as in the authors' code: x ~ U(−r, r)^d with r = ½, w ~ N(0, I_d), noiseless, d = n = 10. Two
ensembles of full (P, Q) models are trained, one model per seed: one layer, and one layer applied twice
(``looped``). They are compared with GD at the exact best step η* (closed form), with two GD steps of
one shared size, and with two GD++ steps of one shared (η, γ), both fitted on a validation set. Losses
are reported as ½·MSE, von Oswald's axis.

Shapes in the result: ``S`` seeds, ``T`` snapshots, ``C`` points of the loss curves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from icl import baselines, evaluate, rng, tasks, theory
from icl.baselines import best_shared_step_size, minimise_scalar
from icl.checks import ClaimChecks
from icl.config import LinearExperimentConfig, finite_float, positive_int
from icl.evaluate import downsample_curve, monte_carlo_predictions
from icl.experiments.trained_transformers_do_gd import alignment
from icl.experiments.trained_transformers_do_gd.alignment import Predictor
from icl.models import LinearTransformer
from icl.train import TrainConfig, fit_cached

NAME = "trained_transformers_do_gd"
SNAPSHOTS = 50
ALIGNMENT_PROMPTS = 2000
# Prompts per evaluation chunk at every n: evaluate.eval_chunk(n) agrees up to n = 20 and shrinks beyond, which would
# change the test prompts (and numbers) of a run at a longer n.
EVAL_CHUNK = 20_000


@dataclass(frozen=True)
class VonOswaldGDConfig(LinearExperimentConfig):
    """The experiment's parameters; every field is validated on construction."""

    dim: int = 10
    n_context: int = 10
    input_range: float = 0.5  # x ~ U(−r, r)^d
    train_steps: int = 5000
    batch_size: int = 2048
    init_std: float = 0.01
    n_validation: int = 10_000

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared training fields
        put = self._set
        for name in ("dim", "n_context"):
            put(name, positive_int(name, getattr(self, name)))
        put("input_range", finite_float("input_range", self.input_range, minimum=0.0, strict=True))
        put("n_validation", positive_int("n_validation", self.n_validation, minimum=2))

    @property
    def variance(self) -> float:
        """σ² = r²/3 of each coordinate of x."""
        return self.input_range**2 / 3

    @property
    def fourth_moment(self) -> float:
        """μ₄ = r⁴/5."""
        return self.input_range**4 / 5


CONFIG = VonOswaldGDConfig
# What `quick` changes against the paper (the config's defaults), and why (see icl.presets).
QUICK: dict[str, Any] = dict(train_steps=2000, batch_size=1024, n_seeds=3)
WHY_QUICK: dict[str, str] = dict(
    train_steps="2.5× fewer Adam steps; the same checks hold",
    batch_size="half the authors' 2048 prompts per step (at 512 the recurrent model misses GD++)",
    n_seeds="3 seeds, the fewest the book's checks accept",
)


class VonOswaldGDResult(NamedTuple):
    """Every number the chapter plots or checks; losses are ½·MSE."""

    construction_error: torch.Tensor  # (3,) max |ŷ_built − ŷ_algorithm| for GD ×1, GD ×2, GD++ ×2 (float64)
    gd_step_size: float  # η*, closed form
    gd_loss: float  # ½·MSE at η*, closed form
    gd_test_loss: float  # Monte Carlo, on the test prompts
    gd2_step_size: float  # two steps of one size, fitted on the validation prompts
    gd2_test_loss: float  # Monte Carlo, on the test prompts
    gdpp_step_size: float  # two GD++ steps of one (η, γ), fitted on the validation prompts
    gdpp_gamma: float  # γ of those two GD++ steps
    gdpp_test_loss: float  # Monte Carlo, on the test prompts
    zero_loss: float  # ½ d σ², the zero predictor
    one_layer_loss: torch.Tensor  # (S,) ½·MSE of the trained one-layer models
    one_layer_loss_se: torch.Tensor  # (S,)
    one_layer_cosine: torch.Tensor  # (S,) mean cosine of ∂ŷ/∂x_q with GD's, at the end
    one_layer_prediction_gap: torch.Tensor  # (S,) ½·mean (ŷ_model − ŷ_GD)²
    one_layer_preconditioner: torch.Tensor  # (S, d, d) symmetric part of A = −P[d, d] Q[:d, :d]
    recurrent_loss: torch.Tensor  # (S,)
    recurrent_loss_se: torch.Tensor  # (S,)
    recurrent_cosine_gd: torch.Tensor  # (S,) alignment with two GD steps, at the end
    recurrent_cosine_gdpp: torch.Tensor  # (S,) alignment with two GD++ steps, at the end
    recurrent_step_size: torch.Tensor  # (S,) η read off the tied layer: −P[d, d] tr(Q_xx)/d
    recurrent_gamma: torch.Tensor  # (S,) γ read off: −tr(P_xx) tr(Q_xx)/(n d²)
    recurrent_as_gdpp_loss: torch.Tensor  # (S,) validation ½·MSE of two GD++ steps at each seed's read-off (η, γ)
    gdpp_validation_loss: float  # validation ½·MSE of two GD++ steps at the fitted (η, γ)
    snapshot_steps: torch.Tensor  # (T,)
    one_layer_cosine_history: torch.Tensor  # (T, S)
    one_layer_gap_history: torch.Tensor  # (T, S)
    recurrent_cosine_gd_history: torch.Tensor  # (T, S)
    recurrent_cosine_gdpp_history: torch.Tensor  # (T, S)
    curve_steps: torch.Tensor  # (C,)
    one_layer_curve: torch.Tensor  # (C, S) training ½·MSE, window means
    recurrent_curve: torch.Tensor  # (C, S)
    elapsed_seconds: float


def _sample(
    config: VonOswaldGDConfig, size: int, generator: torch.Generator, dtype: torch.dtype, n_models: int | None = None
) -> tasks.RegressionBatch:
    """Prompts on x ~ U(−r, r)^d; with ``n_models``, independent prompts for each model: (E, B, ...)."""
    covariance = config.variance * torch.eye(config.dim, dtype=torch.float64)
    if n_models is not None:
        covariance = covariance.expand(n_models, config.dim, config.dim)
    return tasks.sample_regression(
        size, config.n_context, covariance, generator=generator, covariate_law="uniform", dtype=dtype
    )


def _half_mse(predictions: torch.Tensor, targets: torch.Tensor) -> evaluate.LossEstimate:
    estimate = evaluate.mse(predictions, targets)
    return evaluate.LossEstimate(estimate.mean / 2, estimate.standard_error / 2)


def _train(config: VonOswaldGDConfig, looped: bool, progress: bool) -> tuple[LinearTransformer, Any]:
    part = 1 if looped else 0
    streams = rng.streams(config.seed, config.device, part=part)
    model = LinearTransformer(
        config.dim,
        2 if looped else 1,
        parameterisation="full",
        looped=looped,
        n_models=config.n_seeds,
        init_std=config.init_std,
        generator=streams.init,
    )

    def sample(generator: torch.Generator) -> tasks.RegressionBatch:
        return _sample(config, config.batch_size, generator, torch.float32, n_models=config.n_seeds)

    trained = fit_cached(
        NAME,
        config,
        "recurrent2" if looped else "layer1",
        model,
        sample,
        TrainConfig(steps=config.train_steps, learning_rate=config.learning_rate),
        generator=streams.train,
        progress=progress,
        description="recurrent 2-layer" if looped else "1 layer",
        snapshot_every=max(1, config.train_steps // SNAPSHOTS),
    )
    return model, trained


def _test(predictors: dict[str, Predictor], config: VonOswaldGDConfig, generator: torch.Generator) -> dict[str, Any]:
    """½·MSE (and s.e.) of every predictor on the same n_test prompts, and their predictions (key ``"predictions"``)."""
    predictions = monte_carlo_predictions(
        config.n_test,
        config.n_context,
        lambda size: _sample(config, size, generator, torch.float32),
        {name: lambda b, predict=predict: predict(b.X, b.y, b.x_query) for name, predict in predictors.items()},
        chunk=EVAL_CHUNK,
    )
    y = predictions.pop("target")
    return {name: _half_mse(p, y) for name, p in predictions.items()} | {"predictions": predictions}


def run(config: VonOswaldGDConfig, *, progress: bool = True) -> VonOswaldGDResult:
    """Fit the baselines, train (or load) both ensembles, and compare."""
    start = time.perf_counter()
    streams = rng.streams(config.seed, config.device)
    d, n = config.dim, config.n_context
    eta = theory.iid_optimal_gd_step_size(d, n, config.variance, config.fourth_moment)
    gd_loss = theory.iid_gd_step_loss(eta, d, n, config.variance, config.fourth_moment) / 2

    validation = _sample(config, config.n_validation, streams.eval, torch.float64)
    X, y, q = validation.X, validation.y, validation.x_query
    eta2 = best_shared_step_size(lambda e: baselines.gd(X, y, q, e, n_steps=2), validation.y_query, 2)[0]

    def gdpp_fit(gamma: float) -> tuple[float, float]:
        """(η, ½·MSE) of the best two GD++ steps with this γ."""
        predict = lambda e: baselines.gd_plus_plus(X, y, q, [e, e], [gamma, gamma])  # noqa: E731
        eta, mse = best_shared_step_size(predict, validation.y_query, 2)
        return eta, mse / 2

    # γ shrinks the Gram matrix Σ x_i x_iᵀ ≈ n σ² I; search γ up to 2.5/(n d σ²), past where it over-corrects.
    gamma = minimise_scalar(lambda g: gdpp_fit(g)[1], 0.0, 2.5 / (n * d * config.variance), grid=21, iterations=30)
    eta_pp = gdpp_fit(gamma)[0]
    construction_error = alignment.constructions(d, n, eta, (eta_pp, gamma), validation)

    one_layer, one_trained = _train(config, looped=False, progress=progress)
    recurrent, rec_trained = _train(config, looped=True, progress=progress)

    def gd(X, y, q):
        return baselines.gd(X, y, q, eta)

    def gd2(X, y, q):
        return baselines.gd(X, y, q, eta2, n_steps=2)

    def gdpp(X, y, q):
        return baselines.gd_plus_plus(X, y, q, [eta_pp, eta_pp], [gamma, gamma])

    tested = _test(
        {
            "one": alignment.model_predictor(one_layer),
            "rec": alignment.model_predictor(recurrent),
            "gd": gd,
            "gd2": gd2,
            "gdpp": gdpp,
        },
        config,
        streams.eval,
    )
    gap = ((tested["predictions"]["one"] - tested["predictions"]["gd"]).double() ** 2).mean(-1) / 2

    # Alignment over training, on a small fixed set of prompts.
    probe = _sample(config, ALIGNMENT_PROMPTS, rng.streams(config.seed, config.device, part=2).eval, torch.float32)
    references = {name: alignment.sensitivity(f, probe) for name, f in (("gd", gd), ("gd2", gd2), ("gdpp", gdpp))}
    reference_predictions = gd(probe.X, probe.y, probe.x_query)

    one_history, rec_history = (
        alignment.history(model, trained, probe, references, reference_predictions)
        for model, trained in ((one_layer, one_trained), (recurrent, rec_trained))
    )

    P, Q = (w[:, 0].detach().double() for w in recurrent.weights())
    trace = lambda M: torch.diagonal(M, dim1=-2, dim2=-1).sum(-1)  # noqa: E731
    tr_q = trace(Q[:, :d, :d])
    read_eta, read_gamma = -P[:, d, d] * tr_q / d, -trace(P[:, :d, :d]) * tr_q / (n * d * d)
    as_gdpp = [
        _half_mse(baselines.gd_plus_plus(X, y, q, [e, e], [g, g]), validation.y_query).mean
        for e, g in zip(read_eta.tolist(), read_gamma.tolist(), strict=True)
    ]
    steps, curves = downsample_curve(torch.stack([one_trained.losses, rec_trained.losses], -1) / 2)
    cpu = lambda x: x.detach().double().cpu()  # noqa: E731
    return VonOswaldGDResult(
        construction_error=cpu(construction_error),
        gd_step_size=eta,
        gd_loss=gd_loss,
        gd_test_loss=tested["gd"].mean.item(),
        gd2_step_size=eta2,
        gd2_test_loss=tested["gd2"].mean.item(),
        gdpp_step_size=eta_pp,
        gdpp_gamma=gamma,
        gdpp_test_loss=tested["gdpp"].mean.item(),
        zero_loss=d * config.variance / 2,
        one_layer_loss=cpu(tested["one"].mean),
        one_layer_loss_se=cpu(tested["one"].standard_error),
        one_layer_cosine=cpu(one_history["gd"][-1]),
        one_layer_prediction_gap=cpu(gap),
        one_layer_preconditioner=cpu(evaluate.symmetric_part(one_layer.preconditioner()[:, 0].detach().double())),
        recurrent_loss=cpu(tested["rec"].mean),
        recurrent_loss_se=cpu(tested["rec"].standard_error),
        recurrent_cosine_gd=cpu(rec_history["gd2"][-1]),
        recurrent_cosine_gdpp=cpu(rec_history["gdpp"][-1]),
        recurrent_step_size=cpu(read_eta),
        recurrent_gamma=cpu(read_gamma),
        recurrent_as_gdpp_loss=cpu(torch.stack(as_gdpp)),
        gdpp_validation_loss=gdpp_fit(gamma)[1],
        snapshot_steps=one_trained.snapshot_steps,
        one_layer_cosine_history=cpu(one_history["gd"]),
        one_layer_gap_history=cpu(one_history["gap"]),
        recurrent_cosine_gd_history=cpu(rec_history["gd2"]),
        recurrent_cosine_gdpp_history=cpu(rec_history["gdpp"]),
        curve_steps=steps,
        one_layer_curve=cpu(curves[..., 0]),
        recurrent_curve=cpu(curves[..., 1]),
        elapsed_seconds=time.perf_counter() - start,
    )


def claim_checks(result: VonOswaldGDResult) -> ClaimChecks:
    """The chapter's claim checks; the chapter states the tolerances and why each can fail."""
    checks = ClaimChecks()
    r = result
    checks.at_most(
        "hand-built GD ×1, GD ×2, GD++ ×2: max |ŷ − algorithm's ŷ|",
        r.construction_error.max().item(),
        1e-10,
        reason="exact, in float64",
    )
    n_seeds = r.one_layer_loss.shape[0]
    se = (r.one_layer_loss_se**2).mean().sqrt().item() / n_seeds**0.5
    checks.close(
        f"1 layer: test ½·MSE, mean over seeds (s.e. {se:.4f})",
        r.one_layer_loss.mean().item(),
        r.gd_loss,
        rtol=0.03,
        reason="one GD step at the exact η*",
    )
    checks.at_least(
        "1 layer: worst seed's cosine of ∂ŷ/∂x_q with GD's", r.one_layer_cosine.min().item(), 0.99, reason="same map"
    )
    checks.at_most(
        "1 layer: worst seed's ½·mean (ŷ − ŷ_GD)² / GD's ½·MSE",
        r.one_layer_prediction_gap.max().item() / r.gd_test_loss,
        0.02,
        reason="same predictions",
    )
    se = (r.recurrent_loss_se**2).mean().sqrt().item() / n_seeds**0.5
    checks.close(
        f"recurrent 2 layers: test ½·MSE, mean over seeds (s.e. {se:.4f})",
        r.recurrent_loss.mean().item(),
        r.gdpp_test_loss,
        rtol=0.05,
        reason="two GD++ steps, same prompts",
    )
    checks.at_most(
        "recurrent 2 layers: worst seed's test ½·MSE",
        r.recurrent_loss.max().item(),
        (r.gd2_test_loss + r.gdpp_test_loss) / 2,
        reason="below halfway from GD++ to two GD steps",
    )
    checks.at_least(
        "recurrent 2 layers: worst seed's cosine with GD++ − cosine with GD",
        (r.recurrent_cosine_gdpp - r.recurrent_cosine_gd).min().item(),
        0.0,
        reason="closer to GD++ than to GD",
    )
    checks.at_least(
        "recurrent 2 layers, first half of training: worst seed's largest cosine with GD − cosine with GD++",
        early_lead(r).min().item(),
        0.0,
        reason="closer to GD first: the turn to GD++ happens in training",
    )
    checks.at_most(
        "recurrent 2 layers: two GD++ steps at the (η, γ) read off the layer / at the fitted (η, γ) (worst seed)",
        (r.recurrent_as_gdpp_loss / r.gdpp_validation_loss).max().item(),
        1.05,
        reason="the recurrent loss check's 5 %, on the validation prompts, for the layer's own η and γ",
    )
    return checks


def early_lead(result: VonOswaldGDResult) -> torch.Tensor:
    """Per seed, the largest margin by which the recurrent model's sensitivity is closer to two GD steps' than to
    two GD++ steps' over the first half of the snapshots (cosine with GD − cosine with GD++). -> (S,)."""
    half = (result.snapshot_steps.shape[0] + 1) // 2
    return (result.recurrent_cosine_gd_history[:half] - result.recurrent_cosine_gdpp_history[:half]).amax(0)


def summary(result: VonOswaldGDResult) -> dict[str, float | int]:
    """The numbers the chapter's text quotes, by glue name (without the ``trained_transformers_do_gd_`` prefix)."""
    r = result
    return {
        "seeds": r.one_layer_loss.shape[0],
        "construction": r.construction_error.max().item(),
        "gd2": r.gd2_test_loss,
        "gd2_eta": r.gd2_step_size,
        "gdpp": r.gdpp_test_loss,
        "gdpp_eta": r.gdpp_step_size,
        "gdpp_gamma": r.gdpp_gamma,
        "one_loss": r.one_layer_loss.mean().item(),
        "one_cos": r.one_layer_cosine.min().item(),
        "one_gap": (r.one_layer_prediction_gap / r.gd_test_loss).max().item(),
        "rec_loss": r.recurrent_loss.mean().item(),
        "rec_cos_gd": r.recurrent_cosine_gd.mean().item(),
        "rec_cos_gdpp": r.recurrent_cosine_gdpp.mean().item(),
        "rec_eta": r.recurrent_step_size.mean().item(),
        "rec_gamma": r.recurrent_gamma.mean().item(),
        "rec_gamma_low": (r.recurrent_gamma / r.gdpp_gamma).min().item(),
        "rec_gamma_high": (r.recurrent_gamma / r.gdpp_gamma).max().item(),
        "rec_eta_low": (r.recurrent_step_size / r.gdpp_step_size).min().item(),
        "rec_eta_high": (r.recurrent_step_size / r.gdpp_step_size).max().item(),
        "rec_as_gdpp": (r.recurrent_as_gdpp_loss / r.gdpp_validation_loss).max().item(),
        "rec_early_lead": early_lead(r).min().item(),
        "minutes": r.elapsed_seconds / 60,
    }


def key_arrays(result: VonOswaldGDResult) -> dict[str, Any]:
    """The arrays a reader most likely wants, for the chapter's JSON (the curves are left out)."""
    kept = ("recurrent_cosine_gd_history", "recurrent_cosine_gdpp_history")  # the turn from GD to GD++
    return {
        k: v
        for k, v in result._asdict().items()
        if k in kept or ("history" not in k and "curve" not in k and k != "elapsed_seconds")
    }
