"""The training loop: it learns, it resumes bit-for-bit from a checkpoint, and it validates its config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from icl import tasks
from icl.models import LinearTransformer
from icl.tokens import read_out, to_tokens
from icl.train import TrainConfig, TrainingDiverged, query_loss, train

D, N, BATCH = 3, 8, 128


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sampler(generator: torch.Generator) -> tasks.RegressionBatch:
    """Fresh prompts on every call, drawn from the training generator; E = 2 models."""
    return tasks.sample_regression(BATCH, N, torch.eye(D).expand(2, D, D), generator=generator)


class Interrupted:
    """``sampler``, but raises KeyboardInterrupt on call ``fail_at`` (1-based), as a killed run would."""

    def __init__(self, fail_at: int) -> None:
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, generator: torch.Generator) -> tasks.RegressionBatch:
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return sampler(generator)


def model(seed: int = 1) -> LinearTransformer:
    return LinearTransformer(D, 1, parameterisation="full", n_models=2, init_std=0.1, generator=gen(seed))


def test_loss_decreases_on_a_tiny_problem() -> None:
    m = model()
    losses = train(m, sampler, TrainConfig(steps=80, learning_rate=0.2), generator=gen(), progress=False).losses
    assert losses.shape == (80, 2) and losses.dtype == torch.float32
    start, end = losses[:10].mean(0), losses[-20:].mean(0)
    # Zero predictor: E y_q² = d = 3; the best one-layer loss on Σ = I at n = 8 is d(d+1)/(n+d+1) = 1.0.
    assert (start > 2.0).all() and (end < 1.5).all()
    assert all(p.grad is not None for p in m.parameters())


def test_training_is_reproducible(tmp_path: Path) -> None:
    config = TrainConfig(steps=12)
    a, b = model(), model()
    la = train(a, sampler, config, generator=gen(3), progress=False).losses
    lb = train(b, sampler, config, generator=gen(3), progress=False).losses
    assert torch.equal(la, lb) and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    c = model()
    lc = train(c, sampler, config, generator=gen(4), progress=False).losses
    assert not torch.equal(la, lc)


@pytest.mark.parametrize("k", [5, 4])
def test_resume_from_a_checkpoint_is_bit_identical(tmp_path: Path, k: int) -> None:
    steps = 10
    straight = model()
    expected = train(
        straight, sampler, TrainConfig(steps=steps, checkpoint_every=k), generator=gen(7), progress=False
    ).losses

    checkpoint = tmp_path / "checkpoints" / "run.pt"
    interrupted = model()
    config = TrainConfig(steps=steps, checkpoint_every=k)
    fail_at = 2 * k + 1 if 2 * k < steps else k + 1  # killed after the last checkpoint before the end
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, Interrupted(fail_at), config, generator=gen(7), checkpoint=checkpoint, progress=False)
    assert checkpoint.exists()
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["step"] == fail_at - 1 and saved["losses"].shape == (fail_at - 1, 2)

    resumed = model(seed=99)  # other weights and another generator state: both come from the checkpoint
    losses = train(resumed, sampler, config, generator=gen(123), checkpoint=checkpoint, progress=False).losses
    assert torch.equal(losses, expected)
    for p, q in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.equal(p, q)
    assert [p.name for p in checkpoint.parent.iterdir()] == ["run.pt"]  # the final one; no temporary file
    assert torch.load(checkpoint, weights_only=True)["step"] == steps


def test_without_resume_the_interrupted_run_differs(tmp_path: Path) -> None:
    """Power for the test above: restarting from scratch with another generator gives other numbers."""
    config = TrainConfig(steps=10, checkpoint_every=5)
    expected = train(model(), sampler, config, generator=gen(7), progress=False).losses
    fresh = train(model(), sampler, config, generator=gen(123), progress=False).losses
    assert not torch.equal(fresh, expected)


def test_a_finished_run_resumes_at_once_from_its_last_checkpoint(tmp_path: Path) -> None:
    checkpoint = tmp_path / "run.pt"
    config = TrainConfig(steps=4, checkpoint_every=3)
    trained = model()
    first = train(trained, sampler, config, generator=gen(), checkpoint=checkpoint, progress=False).losses
    assert list(tmp_path.iterdir()) == [checkpoint]
    assert torch.load(checkpoint, weights_only=True)["step"] == 4  # written after the last step too

    def no_more_steps(generator: torch.Generator):
        raise AssertionError("a finished run took another step")

    again = model(seed=99)
    second = train(again, no_more_steps, config, generator=gen(5), checkpoint=checkpoint, progress=False).losses
    assert torch.equal(first, second)
    for p, q in zip(again.parameters(), trained.parameters(), strict=True):
        assert torch.equal(p, q)


def test_learning_rate_schedule() -> None:
    config = TrainConfig(steps=101, learning_rate=0.1, final_learning_rate_fraction=0.01)
    assert config.learning_rate_at(0) == pytest.approx(0.1, rel=1e-15)
    assert config.learning_rate_at(100) == pytest.approx(0.001, rel=1e-12)
    assert config.learning_rate_at(50) == pytest.approx(0.1 * (0.01 + 0.99 * 0.5), rel=1e-12)
    rates = [config.learning_rate_at(s) for s in range(101)]
    assert all(b < a for a, b in zip(rates, rates[1:], strict=False))
    assert TrainConfig(steps=1, learning_rate=0.2).learning_rate_at(0) == 0.2


def test_the_schedule_is_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []
    real_step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    config = TrainConfig(steps=5, learning_rate=0.1, final_learning_rate_fraction=0.5)
    train(model(), sampler, config, generator=gen(), progress=False)
    assert seen == pytest.approx([config.learning_rate_at(s) for s in range(5)], rel=1e-15)
    assert seen[0] == pytest.approx(0.1) and seen[-1] == pytest.approx(0.05)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(steps=0), "train_steps"),
        (dict(steps=2.5), "train_steps"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(learning_rate=math.nan), "learning_rate"),
        (dict(final_learning_rate_fraction=1.5), "final_learning_rate_fraction"),
        (dict(final_learning_rate_fraction=-0.1), "final_learning_rate_fraction"),
        (dict(checkpoint_every=0), "checkpoint_every"),
        (dict(optimiser="lbfgs"), "optimiser"),
        (dict(curriculum_start_dim=0), "curriculum_start_dim"),
        (dict(curriculum_every=0), "curriculum_every"),
    ],
)
def test_config_validation_names_the_parameter(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        TrainConfig(**({"steps": 10} | kwargs))


def test_config_is_frozen() -> None:
    config = TrainConfig(steps=10)
    with pytest.raises(AttributeError):
        config.steps = 20  # type: ignore[misc]


def test_snapshots_record_the_parameters_over_training_and_survive_a_resume(tmp_path: Path) -> None:
    config = TrainConfig(steps=10, checkpoint_every=4)
    straight = model()
    initial = {name: p.detach().clone() for name, p in straight.named_parameters()}
    expected = train(straight, sampler, config, generator=gen(7), progress=False, snapshot_every=3)
    assert expected.snapshot_steps.tolist() == [0, 3, 6, 9, 10]
    for name, p in straight.named_parameters():
        history = expected.snapshots[name]
        assert history.shape == (5, *p.shape)
        assert torch.equal(history[0], initial[name]) and torch.equal(history[-1], p.detach())
        assert not torch.equal(history[1], history[0])

    checkpoint = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        train(
            model(), Interrupted(9), config, generator=gen(7), checkpoint=checkpoint, progress=False, snapshot_every=3
        )
    resumed = train(
        model(seed=99), sampler, config, generator=gen(1), checkpoint=checkpoint, progress=False, snapshot_every=3
    )
    assert torch.equal(resumed.snapshot_steps, expected.snapshot_steps)
    for name in expected.snapshots:
        assert torch.equal(resumed.snapshots[name], expected.snapshots[name])
    assert train(model(), sampler, config, generator=gen(7), progress=False).snapshots == {}
    with pytest.raises(ValueError, match="snapshot_every"):
        train(model(), sampler, config, generator=gen(7), progress=False, snapshot_every=0)


def test_clipping_is_per_model_and_per_parameter() -> None:
    """With clip_norm, every member's gradient of every parameter has norm at most the cap; a member whose
    gradient is already small is left alone, so the members of an ensemble stay independent."""
    from icl.train import _clip_per_model_

    param = torch.nn.Parameter(torch.zeros(2, 3, 3))
    holder = torch.nn.Module()
    holder.weight = param
    param.grad = torch.stack([torch.full((3, 3), 10.0), torch.full((3, 3), 1e-3)])
    small = param.grad[1].clone()
    _clip_per_model_(holder, 0.5)
    assert abs(param.grad[0].norm().item() - 0.5) < 1e-6
    assert torch.equal(param.grad[1], small)
    with pytest.raises(ValueError, match="clip_norm"):
        TrainConfig(steps=1, clip_norm=0.0)


def test_sgd_takes_plain_gradient_steps_per_model() -> None:
    """With optimiser="sgd", one step moves every member by −lr × the gradient of its own MSE."""
    model = LinearTransformer(D, 1, parameterisation="full", n_models=2, init_std=0.1, generator=gen(1))
    before = [p.detach().clone() for p in model.parameters()]
    batch = sampler(gen(2))
    reference = LinearTransformer(D, 1, parameterisation="full", n_models=2, init_std=0.1, generator=gen(1))
    mse = ((read_out(reference(to_tokens(batch.X, batch.y, batch.x_query))) - batch.y_query) ** 2).mean(-1)
    gradients = torch.autograd.grad(mse.sum(), list(reference.parameters()))
    train(
        model,
        lambda g: sampler(gen(2)),
        TrainConfig(steps=1, learning_rate=0.05, optimiser="sgd"),
        generator=gen(3),
        progress=False,
    )
    for start, gradient, after in zip(before, gradients, model.parameters(), strict=True):
        torch.testing.assert_close(after.detach(), start - 0.05 * gradient)


def test_the_curriculum_grows_the_active_dimensions_and_survives_a_resume(tmp_path: Path) -> None:
    """Garg et al.'s curriculum: step t sees x with start + t // every non-zero coordinates, up to all of them."""
    config = TrainConfig(steps=7, learning_rate=1e-3, curriculum_start_dim=1, curriculum_every=3, checkpoint_every=2)
    assert [config.active_dims(t, D) for t in range(8)] == [1, 1, 1, 2, 2, 2, 3, 3]
    assert TrainConfig(steps=7).active_dims(0, D) == D
    seen: list[int] = []

    def objective(m: torch.nn.Module, batch: tasks.RegressionBatch) -> torch.Tensor:
        seen.append(int((batch.X.abs().sum((0, 1, 2)) > 0).sum()))  # non-zero coordinates of this step's x
        predictions = read_out(m(to_tokens(batch.X, batch.y, batch.x_query)))
        return ((predictions - batch.y_query) ** 2).mean(-1)

    train(model(), sampler, config, generator=gen(5), progress=False, objective=objective)
    assert seen == [1, 1, 1, 2, 2, 2, 3]
    seen.clear()  # a run killed after step 4 resumes with the curriculum where it was
    checkpoint = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        train(
            model(),
            Interrupted(5),
            config,
            generator=gen(5),
            checkpoint=checkpoint,
            progress=False,
            objective=objective,
        )
    seen.clear()
    train(model(), sampler, config, generator=gen(5), checkpoint=checkpoint, progress=False, objective=objective)
    assert seen == [2, 2, 3]


def test_a_diverging_member_stops_training_before_a_checkpoint_holds_it(tmp_path: Path) -> None:
    """Member 1's loss turns NaN at step 130: training stops by step 150 (its next checkpoint), names the member and
    the step, and the checkpoint left behind is the last one with finite losses, from step 100."""
    calls = 0

    def objective(m: torch.nn.Module, batch: tasks.RegressionBatch) -> torch.Tensor:
        nonlocal calls
        calls += 1
        loss = query_loss(m, batch)
        return loss * torch.tensor([1.0, math.nan if calls >= 130 else 1.0])

    path = tmp_path / "run.pt"
    config = TrainConfig(steps=1000, checkpoint_every=50)
    with pytest.raises(TrainingDiverged, match=r"member\(s\) \[1\] became NaN or infinite at step 130") as diverged:
        train(model(), sampler, config, generator=gen(), checkpoint=path, progress=False, objective=objective)
    assert (diverged.value.step, diverged.value.members) == (130, (1,))
    assert calls == 150
    state = torch.load(path, weights_only=True)
    assert state["step"] == 100 and torch.isfinite(state["losses"]).all()


def test_finite_training_is_not_stopped() -> None:
    losses = train(model(), sampler, TrainConfig(steps=250), generator=gen(), progress=False).losses
    assert torch.isfinite(losses).all() and losses.shape == (250, 2)
