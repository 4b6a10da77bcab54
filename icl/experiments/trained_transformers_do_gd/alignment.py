"""How closely a trained model follows an algorithm: its sensitivity ∂ŷ/∂x_q against the algorithm's, the
prediction gap, over the training snapshots; and the check that the hand-built transformers are the algorithms.

``Predictor``: (X (…, B, n, d), y (…, B, n), x_q (…, B, d)) -> ŷ (…, B).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from icl import baselines, construct, tasks
from icl.models import LinearTransformer

Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
REFERENCES = ("gd", "gd2", "gdpp")  # one GD step, two GD steps, two GD++ steps


def sensitivity(predict: Predictor, batch: tasks.RegressionBatch, n_models: int | None = None) -> torch.Tensor:
    """∂ŷ/∂x_q per prompt: (B, d), or (E, B, d) for an ensemble of ``n_models`` (each its own gradient).
    The predictors are linear in x_q given the context, so this is the weight vector each applies."""
    X, y, x_query = batch.X, batch.y, batch.x_query
    if n_models is not None:
        X, y, x_query = (t.expand(n_models, *t.shape) for t in (X, y, x_query))
    with torch.enable_grad():
        x_query = x_query.detach().clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(predict(X, y, x_query).sum(), x_query)
    return gradient


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over prompts of the cosine similarity of per-prompt vectors. (..., B, d) -> (...)."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).mean(-1)


def model_predictor(model: LinearTransformer) -> Predictor:
    """The ensemble's predictions (E, B) on prompts shared by all members, (B, ...), or its own, (E, B, ...)."""
    E = model.n_models

    def predict(X: torch.Tensor, y: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        if X.ndim == 3:
            X, y, q = (t.expand(E, *t.shape) for t in (X, y, q))
        return model.predict(X, y, q)

    return predict


def history(
    model: LinearTransformer,
    trained: Any,
    probe: tasks.RegressionBatch,
    references: dict[str, torch.Tensor],
    reference_predictions: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """At every training snapshot of ``trained`` (a TrainResult with snapshots): the mean cosine of the members'
    ∂ŷ/∂x_q with each reference's (``references``: name -> (B, d) on ``probe``), and ½·mean (ŷ − ŷ_ref)² against
    ``reference_predictions`` (B,) under key ``"gap"``. -> name -> (T, E). The model's weights are restored."""
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in (*REFERENCES, "gap")}
    for t in range(trained.snapshot_steps.shape[0]):
        model.load_state_dict({k: v[t] for k, v in trained.snapshots.items()})
        predict = model_predictor(model)
        gradient = sensitivity(predict, probe, n_models=model.n_models)
        for name in REFERENCES:
            rows[name].append(mean_cosine(gradient, references[name]))
        with torch.no_grad():
            rows["gap"].append(
                ((predict(probe.X, probe.y, probe.x_query) - reference_predictions).double() ** 2).mean(-1) / 2
            )
    model.load_state_dict(final)
    return {k: torch.stack(v) for k, v in rows.items()}


def constructions(
    dim: int, n_context: int, eta: float, gdpp: tuple[float, float], batch: tasks.RegressionBatch
) -> torch.Tensor:
    """Max |ŷ| difference between the hand-built transformers (one GD step of η, two of η, two GD++ steps of
    ``gdpp`` = (η, γ)) and the algorithms on ``batch``, in float64. -> (3,)."""
    eta_pp, gamma = gdpp
    pairs = [
        (construct.gd_transformer(dim, [eta]), lambda X, y, q: baselines.gd(X, y, q, eta)),
        (construct.gd_transformer(dim, [eta, eta]), lambda X, y, q: baselines.gd(X, y, q, eta, n_steps=2)),
        (
            construct.gd_plus_plus_transformer(dim, [eta_pp, eta_pp], [gamma, gamma], n_context=n_context),
            lambda X, y, q: baselines.gd_plus_plus(X, y, q, [eta_pp, eta_pp], [gamma, gamma]),
        ),
    ]
    errors = []
    for weights, algorithm in pairs:
        model = construct.to_transformer(type(weights)(*(w.to(batch.X.device) for w in weights)))  # built on the CPU
        built = model.predict(batch.X, batch.y, batch.x_query)
        errors.append((built - algorithm(batch.X, batch.y, batch.x_query)).abs().max())
    return torch.stack(errors)
