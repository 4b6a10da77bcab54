"""Members that train differently, side by side: each member's steps are exactly PyTorch's Adam or SGD with momentum
for that member alone; the per-member global clip is torch's clip_grad_norm_ per member."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from icl import tasks
from icl.models import LinearTransformer
from icl.optimisers import MemberwiseOptimiser
from icl.train import TrainConfig, _clip_global_per_model_, train

D, N = 3, 6
RULES, RATES = ("adam", "sgd", "sgd", "adam"), (0.02, 0.01, 0.05, 0.005)


def ensemble(seed: int = 1) -> LinearTransformer:
    return LinearTransformer(
        D, 2, parameterisation="eleven", n_models=4, init_std=0.1, generator=torch.Generator().manual_seed(seed)
    )


def member(model: LinearTransformer, e: int) -> LinearTransformer:
    """Member e of ``model`` as a model of its own."""
    single = LinearTransformer(D, 2, parameterisation="eleven", n_models=1, generator=torch.Generator())
    single.load_state_dict({name: value[e : e + 1].clone() for name, value in model.state_dict().items()})
    return single


def batches(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return [tasks.sample_regression(64, N, torch.eye(D), generator=generator) for _ in range(5)]


def loss(model: LinearTransformer, batch: tasks.RegressionBatch) -> torch.Tensor:
    E = model.n_models
    X, y, q = (t.expand(E, *t.shape) for t in (batch.X, batch.y, batch.x_query))
    return ((model.predict(X, y, q) - batch.y_query) ** 2).mean(-1)  # (E,)


@pytest.mark.parametrize("clip", [None, 0.05])
def test_each_member_steps_exactly_as_pytorch_would_alone(clip: float | None) -> None:
    model = ensemble()
    singles = [member(model, e) for e in range(4)]
    optimiser = MemberwiseOptimiser(
        model.parameters(), lr=1.0, rules=RULES, scales=RATES, betas=(0.9, 0.9), momentum=0.9
    )
    references = [
        torch.optim.Adam(s.parameters(), lr=rate, betas=(0.9, 0.9))
        if rule == "adam"
        else torch.optim.SGD(s.parameters(), lr=rate, momentum=0.9)
        for s, rule, rate in zip(singles, RULES, RATES, strict=True)
    ]
    for batch in batches(2):
        optimiser.zero_grad()
        loss(model, batch).sum().backward()
        if clip is not None:
            _clip_global_per_model_(model, clip)
        optimiser.step()
        for single, reference in zip(singles, references, strict=True):
            reference.zero_grad()
            loss(single, batch).sum().backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(single.parameters(), clip)
            reference.step()
    for e, single in enumerate(singles):
        for name, value in single.state_dict().items():
            torch.testing.assert_close(model.state_dict()[name][e : e + 1], value, rtol=1e-5, atol=1e-7)


def test_the_global_clip_caps_each_members_joint_norm() -> None:
    model = ensemble()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
        p.grad[1] *= 1e-4  # member 1 is below the cap: left alone
    small = [p.grad[1].clone() for p in model.parameters()]
    _clip_global_per_model_(model, 0.5)
    norms = torch.stack([p.grad.reshape(4, -1).pow(2).sum(1) for p in model.parameters()]).sum(0).sqrt()
    torch.testing.assert_close(norms[[0, 2, 3]], torch.full((3,), 0.5), rtol=1e-5, atol=0)
    assert all(torch.equal(p.grad[1], s) for p, s in zip(model.parameters(), small, strict=True))


def test_train_with_member_optimisers_resumes_bit_identically(tmp_path: Path) -> None:
    config = TrainConfig(
        steps=6,
        learning_rate=0.01,
        final_learning_rate_fraction=1.0,
        betas=(0.9, 0.9),
        momentum=0.9,
        member_optimisers=RULES,
        member_learning_rates=RATES,
        clip_norm=1.0,
        clip_scope="global",
        checkpoint_every=3,
    )

    def sample(generator: torch.Generator) -> tasks.RegressionBatch:
        return tasks.sample_regression(64, N, torch.eye(D).expand(4, D, D), generator=generator)

    straight = ensemble()
    train(straight, sample, config, generator=torch.Generator().manual_seed(5), progress=False)
    calls = 0

    def interrupted(generator: torch.Generator) -> tasks.RegressionBatch:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise KeyboardInterrupt
        return sample(generator)

    checkpoint = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        train(ensemble(), interrupted, config, generator=torch.Generator().manual_seed(5), checkpoint=checkpoint)
    resumed = ensemble(seed=9)
    train(resumed, sample, config, generator=torch.Generator().manual_seed(0), checkpoint=checkpoint, progress=False)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        (dict(member_optimisers=("adam", "lbfgs")), "member_optimisers"),
        (dict(member_learning_rates=(0.1, -1.0)), "member_learning_rates"),
        (dict(member_optimisers=("adam",), member_learning_rates=(0.1, 0.2)), "one entry per member"),
        (dict(momentum=1.0), "momentum"),
        (dict(clip_scope="layer"), "clip_scope"),
    ],
)
def test_bad_settings_are_named(changes: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        TrainConfig(steps=1, **changes)


def test_a_member_count_that_does_not_match_the_ensemble_is_refused() -> None:
    config = TrainConfig(steps=1, member_optimisers=("adam", "sgd"))
    with pytest.raises(ValueError, match="2 entries for 4 members"):
        train(ensemble(), lambda g: batches(0)[0], config, generator=torch.Generator(), progress=False)
