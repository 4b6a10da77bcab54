"""The gradient-flow experiment: the trained models start where the flow starts, tiny runs (reproducible, cached,
shapes), claim checks that can fail, and bad input named before any work."""

from __future__ import annotations

import pytest
import torch

from icl import dynamics, presets
from icl.checks import ClaimChecks
from icl.experiments import gradient_flow
from icl.experiments.gradient_flow import follow_flow

TINY = dict(
    spectrum=(1.5, 1.0, 0.5),
    flow_contexts=(4, 10),
    n_context=10,
    flow_time=4.0,
    flow_step=0.02,
    n_seeds=2,
    train_steps=20,
    batch_size=64,
    n_test=2000,
    follow_rates=(0.01, 0.005),
    follow_time=0.4,
    follow_batch=1024,
)


def tiny(**overrides: object) -> gradient_flow.GradientFlowConfig:
    return presets.get("gradient_flow", "quick", device="cpu", **(TINY | overrides))


def test_trained_models_start_at_the_flows_balanced_start() -> None:
    config = tiny()
    model, start = gradient_flow._start(config)
    assert start.U.shape == (2, 3, 3) and start.u.shape == (2,)
    torch.testing.assert_close(start.u, torch.full((2,), 0.5, dtype=torch.float64), atol=1e-5, rtol=0)
    balance = start.u**2 - torch.linalg.matrix_norm(start.U) ** 2
    assert balance.abs().max() < 1e-5  # balanced up to the 1e-6 jitter
    A = model.preconditioner()[:, 0].double()
    torch.testing.assert_close(A, start.u[:, None, None] * start.U)


def test_tiny_run_shapes_reproducibility_and_cache() -> None:
    config = tiny()
    first = gradient_flow.run(config, progress=False)
    F, S, d = 2, 2, 3
    assert first.flow_relative_error.shape == (201, F, S) and first.flow_u.shape == (201, F, S)
    assert first.trained_relative_error.shape == (len(first.trained_steps), S)
    assert first.trained_learned.shape == (S, d, d)
    assert first.trained_steps[0] == 0 and first.trained_steps[-1] == config.train_steps
    assert first.flow_limit_u.shape == (F, S)
    summary = gradient_flow.summary(first)
    assert summary["flow_error_max"] == first.flow_relative_error[-1].max().item()
    assert summary["trained_loss_se"] > 0 and summary["slope_0"] > 0 and summary["slope_1"] > 0  # the loss falls
    assert all(isinstance(value, float | str) for value in summary.values())
    assert summary["follow_rates"] == "0.01, 0.005" and summary["follow_time"] == pytest.approx(0.4)
    # SGD against the flow at matched times t = 2·rate·step (R = 2 rates, 21 snapshots)
    assert first.follow_u.shape == first.follow_flow_u.shape == first.follow_balance.shape == (2, 21, S)
    torch.testing.assert_close(first.follow_times[:, -1], torch.full((2,), 0.4, dtype=torch.float64))
    torch.testing.assert_close(first.follow_u[:, 0], first.follow_flow_u[:, 0], atol=1e-5, rtol=0)  # one start
    assert (first.follow_flow_u[:, -1] > 1.1 * first.follow_flow_u[:, 0]).all()  # the flow moves u in the window
    # the clock is right: at the small rate SGD is within 2 % of the flow (a clock off by 2 lags by about 10 %)
    assert follow_flow.deviation(first)[-1] < 0.02
    second = gradient_flow.run(config, progress=False)  # from the store
    for a, b in zip(first[:-1], second[:-1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the flow the experiment records is dynamics.gradient_flow from the same start
    _, start = gradient_flow._start(config)
    path = dynamics.gradient_flow(gradient_flow.covariance(config), 10, start, time=4.0, step=0.02, n_records=200)
    torch.testing.assert_close(first.flow_relative_error[:, 1], path.relative_error)


def test_undertrained_run_fails_its_claim_checks() -> None:
    checks = gradient_flow.claim_checks(gradient_flow.run(tiny(), progress=False))
    failed = [c.name for c in checks.checks if not c.passed]
    assert not checks.passed
    assert any(name.startswith("flow") for name in failed)  # 4 time units are far too short
    assert any(name.startswith("trained") for name in failed)  # 20 steps are far too few
    with pytest.raises(AssertionError):
        checks.verify()


def test_the_follow_checks_pass_near_the_flow_and_fail_off_it() -> None:
    r = gradient_flow.run(tiny(), progress=False)
    flow_u = r.follow_flow_u
    times = torch.linspace(0, 1, flow_u.shape[1], dtype=torch.float64)[None, :, None]
    drift = torch.tensor([0.1, 0.05], dtype=torch.float64)[:, None, None] * times  # O(rate), halving with it

    def failed(**changes) -> list[str]:
        checks = ClaimChecks()
        near = {"follow_u": 1.001 * flow_u, "follow_balance": drift}
        follow_flow.claim_checks(r._replace(**{**near, **changes}), checks)
        return [c.name for c in checks.checks if not c.passed]

    assert failed() == []
    assert len(failed(follow_u=1.05 * flow_u)) == 1  # 5 % off the flow
    assert len(failed(follow_balance=0.1 * times.expand(2, -1, 2))) == 1  # the drift does not shrink with the rate


def test_a_converged_flow_passes_its_flow_checks() -> None:
    config = tiny(flow_time=150.0, flow_step=0.02)
    checks = gradient_flow.claim_checks(gradient_flow.run(config, progress=False))
    flow = [c for c in checks.checks if c.name.startswith("flow")]
    assert len(flow) == 5 and all(c.passed for c in flow), [c.describe() for c in flow]


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"spectrum": (1.0, -0.5)}, "spectrum"),
        ({"flow_contexts": (0,)}, "flow_contexts"),
        ({"flow_step": 0.5}, "flow_step"),
        ({"flow_time": 0.0}, "flow_time"),
        ({"init_scale": -1.0}, "init_scale"),
        ({"train_steps": 0}, "train_steps"),
        ({"follow_rates": (0.5,)}, "follow_rates"),
        ({"follow_batch": 0}, "follow_batch"),
    ],
)
def test_bad_input_names_the_parameter(overrides: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        tiny(**overrides)
