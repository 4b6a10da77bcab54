"""Small-step SGD against the gradient flow (the discretisation the flow is the limit of).

From the balanced starts, plain SGD at a constant rate on large batches, at each rate of ``follow_rates`` for ZFB time
``follow_time``, recorded at ``SNAPSHOTS`` + 1 evenly spaced steps and compared with the exact flow from the same starts
at the matched times t = 2·rate·step (a step of rate η on the book's MSE is a step of 2η on ZFB's ½·MSE).

Shapes: ``R`` rates, ``J`` snapshots, ``S`` seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from icl import dynamics, rng, tasks
from icl.checks import ClaimChecks
from icl.models import LinearTransformer
from icl.train import TrainConfig, fit_cached

if TYPE_CHECKING:
    from icl.experiments.gradient_flow import GradientFlowConfig, GradientFlowResult

SNAPSHOTS = 20


def run(
    config: GradientFlowConfig,
    lam: torch.Tensor,
    fresh_start: Callable[[], tuple[LinearTransformer, dynamics.FlowState]],
    name: str,
    progress: bool,
) -> dict[str, torch.Tensor]:
    """Constant-rate SGD at each rate of ``follow_rates`` from the models ``fresh_start()`` returns (the S balanced
    starts and their flow states), trained and stored under ``name``; and the flow at N = n_context from the same
    starts at the snapshots' times t = 2·rate·step (interpolated between 400 RK4 records). Returns the result's
    ``follow_`` fields without the prefix (see :class:`~icl.experiments.gradient_flow.GradientFlowResult`)."""
    n = config.n_context
    _, start = fresh_start()
    path = dynamics.gradient_flow(lam, n, start, time=config.follow_time, step=config.flow_step, n_records=400)
    flow_U_norm = torch.linalg.matrix_norm(path.U)
    lam32 = lam.float().expand(config.n_seeds, config.dim, config.dim)
    out: dict[str, list[torch.Tensor]] = {}
    for index, rate in enumerate(config.follow_rates):
        model, _ = fresh_start()  # the same starts, again
        steps = round(config.follow_time / (2 * rate))
        trained = fit_cached(
            name,
            config,
            f"follow-{index}",
            model,
            lambda g: tasks.sample_regression(config.follow_batch, n, lam32, generator=g),
            TrainConfig(steps=steps, learning_rate=rate, optimiser="sgd", final_learning_rate_fraction=1.0),
            generator=rng.streams(config.seed, config.device, part=10 + index).train,
            progress=progress,
            description=f"SGD at rate {rate:g}, {config.n_seeds} models",
            snapshot_every=steps // SNAPSHOTS,
        )
        # the last snapshot is the last step's; keep SNAPSHOTS + 1 evenly spaced ones (the start included)
        keep = slice(0, SNAPSHOTS + 1)
        U, u = snapshot_factors(trained, config.dim)
        factors = dynamics.FlowState(U[keep], u[keep])
        times = 2 * rate * trained.snapshot_steps[keep].double()
        flow_u, flow_U = _interpolate(path.times, path.u, times), _interpolate(path.times, flow_U_norm, times)
        for key, value in [
            ("times", times),
            ("u", factors.u),
            ("U_norm", torch.linalg.matrix_norm(factors.U)),
            ("flow_u", flow_u),
            ("flow_U_norm", flow_U),
            ("balance", factors.u**2 - torch.linalg.matrix_norm(factors.U) ** 2),
        ]:
            out.setdefault(key, []).append(value.cpu())
    return {key: torch.stack(value) for key, value in out.items()}


def snapshot_factors(trained: Any, d: int) -> dynamics.FlowState:
    """(U, u) of each snapshot of a run with snapshots: U (J, S, d, d), u (J, S), float64."""
    P, Q = (trained.snapshots[k][:, :, 0].double() for k in ("P", "Q"))
    return dynamics.FlowState(-Q[..., :d, :d], P[..., d, d])


def _interpolate(times: torch.Tensor, values: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of values (T, S) recorded at ascending ``times`` (T,) to the times ``at`` (J,) within
    them. -> (J, S)."""
    times, at = times.to(values.device), at.to(values.device)
    right = torch.searchsorted(times, at).clamp(1, len(times) - 1)
    weight = ((at - times[right - 1]) / (times[right] - times[right - 1]))[:, None]
    return (1 - weight) * values[right - 1] + weight * values[right]


def deviation(result: GradientFlowResult) -> torch.Tensor:
    """Per rate, SGD's worst |u − u_flow| / u_flow over the matched times and seeds. -> (R,)."""
    r = result
    return ((r.follow_u - r.follow_flow_u).abs() / r.follow_flow_u).amax(dim=(1, 2))


def drift(result: GradientFlowResult) -> torch.Tensor:
    """Per rate, SGD's worst |balance − its start| over the matched times and seeds (the flow's drift is 0). -> (R,)."""
    return (result.follow_balance - result.follow_balance[:, :1]).abs().amax(dim=(1, 2))


def claim_checks(r: GradientFlowResult, checks: ClaimChecks) -> None:
    """SGD at the smallest rate follows the flow, and its distance from it shrinks with the rate."""
    deviations, drifts = deviation(r), drift(r)
    rates = r.follow_rates.tolist()
    growth = (r.follow_flow_u[-1, -1] / r.follow_flow_u[-1, 0]).min().item()
    checks.at_most(
        f"SGD at rate {rates[-1]:g}: worst |u − u_flow| / u_flow over matched times t = 2·rate·step and seeds",
        deviations[-1].item(),
        0.02,
        reason=f"the flow describes small-step SGD: 2 %, while the flow's u grows {growth:.2f}× over the window",
    )
    if len(rates) > 1:
        ratio = rates[-1] / rates[-2]
        checks.at_most(
            f"SGD: balance drift at rate {rates[-1]:g} / at rate {rates[-2]:g} (worst over times and seeds)",
            (drifts[-1] / drifts[-2]).item(),
            (1 + ratio) / 2,
            reason=f"over a fixed time a step's O(rate²) change and the noise's add up to O(rate): the ratio of the "
            f"rates ({ratio:.2g}); the bar is halfway from it to no convergence (1)",
        )
