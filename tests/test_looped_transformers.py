"""The looped-transformer experiment: test-time looping against GD and the divergence criterion, the floor that a
leftover u_P sets (``looping``), tiny runs (reproducible, cached, shapes), claim checks that can fail, the chapter's
quoted numbers, and bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from icl import baselines, presets, tasks, theory, train
from icl.experiments import looped_transformers
from icl.experiments.looped_transformers import looping
from icl.models import LinearTransformer

F64 = torch.float64
TINY = dict(
    dim=3,
    n_context=6,
    n_sweep=(12,),
    loops=(1, 2),
    looping_from=(2,),
    max_test_loops=6,
    n_seeds=2,
    train_steps=20,
    batch_size=64,
    n_test=2000,
    n_looping_test=500,
    n_divergence_samples=5000,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def looped_model(
    A: torch.Tensor, u_P: torch.Tensor | None = None, u_Q: torch.Tensor | None = None
) -> LinearTransformer:
    """A one-model looped sparse_u model in float64 with the given A (d, d) and u vectors (default 0)."""
    d = A.shape[-1]
    model = LinearTransformer(d, 1, parameterisation="sparse_u", looped=True, generator=gen(0), dtype=F64)
    with torch.no_grad():
        model.A.copy_(A.reshape(model.A.shape))
        model.u_P.copy_((torch.zeros(d, dtype=F64) if u_P is None else u_P).reshape(model.u_P.shape))
        model.u_Q.copy_((torch.zeros(d, dtype=F64) if u_Q is None else u_Q).reshape(model.u_Q.shape))
    return model


def prompts(B: int, n: int, d: int, seed: int) -> tasks.RegressionBatch:
    return tasks.sample_regression(B, n, torch.eye(d, dtype=F64).expand(1, d, d), generator=gen(seed), dtype=F64)


# --- test-time looping ------------------------------------------------------------------------------------------------


def test_loop_trajectory_is_gd_with_the_shared_preconditioner() -> None:
    d, n, loops = 4, 9, 7
    A = 0.5 * torch.eye(d, dtype=F64) + 0.05 * torch.randn(d, d, generator=gen(1), dtype=F64)
    batch = prompts(40, n, d, seed=2)
    trajectory = looping.loop_trajectory(looped_model(A), batch, loops)
    assert trajectory.squared_error.shape == (loops, 1, 40) and trajectory.diverging is None
    for k in (1, 3, loops):
        gd = baselines.preconditioned_gd(batch.X, batch.y, batch.x_query, A.mT.expand(1, d, d), n_steps=k)
        torch.testing.assert_close(trajectory.squared_error[k - 1], (gd - batch.y_query) ** 2, rtol=1e-10, atol=1e-12)


def test_divergence_is_detected_exactly_where_a_lambda_max_exceeds_two() -> None:
    """With A = aI and u = 0, looping diverges on a prompt iff a λ_max(Ŝ) > 2; the detector agrees on every prompt
    not within 0.5 % of the boundary."""
    d, n = 5, 10
    a = theory.optimal_looped_step_size(d, n, 2).step_sizes[0].item()
    batch = prompts(3000, n, d, seed=3)
    trajectory = looping.loop_trajectory(looped_model(a * torch.eye(d, dtype=F64)), batch, 3, detect=True)
    largest = torch.linalg.eigvalsh(batch.X.mT @ batch.X / n)[..., -1]  # (1, B)
    predicted = a * largest > 2
    clear = (a * largest - 2).abs() > 0.01
    assert 0.01 < predicted.double().mean() < 0.5  # both kinds of prompt are present
    assert torch.equal(trajectory.diverging[clear], predicted[clear])


def test_a_leftover_u_p_sets_the_floor_that_looping_converges_to() -> None:
    """Looping converges to w* + u_P when n > d: every prompt's error tends to (u_Pᵀ x_q)²."""
    d, n = 3, 12
    u_P = torch.tensor([0.03, -0.02, 0.01], dtype=F64)
    batch = prompts(200, n, d, seed=4)
    trajectory = looping.loop_trajectory(looped_model(0.5 * torch.eye(d, dtype=F64), u_P=u_P), batch, 400)
    eigenvalues = torch.linalg.eigvalsh(batch.X.mT @ batch.X / n)[0]
    stable = (0.5 * eigenvalues[:, -1] < 1.9) & ((1 - 0.5 * eigenvalues[:, 0]) ** 400 < 1e-8)  # converged by loop 400
    assert stable.double().mean() > 0.5
    floor = (batch.x_query @ u_P)[0] ** 2
    torch.testing.assert_close(trajectory.squared_error[-1, 0, stable], floor[stable], rtol=1e-6, atol=1e-16)


def test_the_gd_twin_has_the_model_scale_and_no_u() -> None:
    model = looped_model(0.3 * torch.eye(2, dtype=F64), u_P=torch.ones(2, dtype=F64), u_Q=torch.ones(2, dtype=F64))
    covariance = torch.tensor([[[2.0, 0.5], [0.5, 1.0]]], dtype=F64)
    twin = looping.gd_with_shared_step(model, torch.tensor([0.7], dtype=F64), covariance)
    torch.testing.assert_close(twin.A[0, 0], 0.7 * torch.linalg.inv(covariance[0]))
    assert (twin.u_P == 0).all() and (twin.u_Q == 0).all() and (model.u_P == 1).all()


def test_worst_rise_ignores_the_floor_and_counts_overflow() -> None:
    curve = torch.tensor([[1.0, 1.0], [0.5, 0.5], [0.25, 0.6], [0.26, float("inf")]], dtype=F64)
    assert looping.worst_rise(curve, torch.tensor([0.3, 0.0], dtype=F64)) == float("inf")
    assert looping.worst_rise(curve[:, :1], torch.tensor([0.3], dtype=F64)) == 0.5  # the rise to 0.26 is below
    assert looping.worst_rise(curve[:3, 1:], torch.tensor([0.0], dtype=F64)) == pytest.approx(1.2)


# --- a tiny run -------------------------------------------------------------------------------------------------------


def tiny_result(monkeypatch: pytest.MonkeyPatch, store: str, **changes) -> looped_transformers.LoopedResult:
    monkeypatch.setenv("ICL_STORE", store)
    config = presets.get("looped_transformers", "quick", device="cpu", **{**TINY, **changes})
    return looped_transformers.run(config, progress=False)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[looped_transformers.LoopedResult, str]:
    store = str(tmp_path_factory.mktemp("store"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        return tiny_result(monkeypatch, store), store


def assert_same(a: looped_transformers.LoopedResult, b: looped_transformers.LoopedResult) -> None:
    for name, value in a._asdict().items():
        if name == "elapsed_seconds":
            continue
        other = getattr(b, name)
        if isinstance(value, torch.Tensor):
            assert torch.equal(value.nan_to_num(), other.nan_to_num()), name
        else:
            assert value == other, name


def test_same_seed_gives_identical_numbers_and_another_seed_does_not(stored, monkeypatch, tmp_path) -> None:
    assert_same(stored[0], tiny_result(monkeypatch, str(tmp_path / "a")))
    other = tiny_result(monkeypatch, str(tmp_path / "b"), seed=1)
    assert not torch.equal(other.whitened, stored[0].whitened)


def test_second_run_comes_from_the_store(stored, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the store holds the result")

    monkeypatch.setattr(train, "train", no_training)
    assert_same(stored[0], tiny_result(monkeypatch, stored[1]))


def test_shapes_and_the_covariances(stored) -> None:
    r = stored[0]
    S, d, K, T = TINY["n_seeds"], TINY["dim"], len(TINY["loops"]), TINY["max_test_loops"]
    assert r.covariance.shape == (2 * S, d, d)
    torch.testing.assert_close(r.covariance[:S], torch.eye(d, dtype=F64).expand(S, d, d))
    for s in range(S, 2 * S):  # κ = 4 (quick) on a geometric grid, rotated
        eigenvalues = torch.linalg.eigvalsh(r.covariance[s])
        torch.testing.assert_close(eigenvalues.max() / eigenvalues.min(), torch.tensor(4.0, dtype=F64))
    assert r.whitened.shape == (K, 2 * S, d, d)
    for name in ("whitened_distance", "scale", "A_norm", "u_P_norm", "u_Q_norm", "test_loss", "test_loss_se"):
        assert getattr(r, name).shape == (K, 2 * S), name
    assert r.untied_loops.tolist() == [2] and r.untied_loss.shape == (1, S)
    assert r.sweep_scale.shape == (2, 1, S) and r.sweep_optimal_step_size.shape == (2, 1)
    for name in ("scale", "distance", "u_ratio", "loss", "loss_se"):
        assert getattr(r, f"underdetermined_{name}").shape == (K, S), name
    assert r.underdetermined_optimal_step_size.shape == r.underdetermined_optimal_loss.shape == (K,)
    assert (r.underdetermined_optimal_loss >= d - 1).all()  # n = 1 below d = 3: at least d − n
    assert r.looping_mean.shape == r.looping_gd_median.shape == (2, 1, 4, T, S)
    assert r.floor_median.shape == (2, 1, 4, S)
    assert r.diverging_fraction.shape == (2, 1, S) and r.diverging_fraction[1].isnan().all()
    assert r.snapshot_steps[-1] == TINY["train_steps"]
    torch.testing.assert_close(r.scale_history[-1], r.scale, rtol=1e-12, atol=0)
    # the sweep's entry at n_context is the main run's Σ = I models
    torch.testing.assert_close(r.sweep_scale[0, 0], r.scale[TINY["loops"].index(2), :S])
    # the theory's numbers
    torch.testing.assert_close(r.optimal_step_size[0], torch.tensor(6 / (6 + 3 + 1), dtype=F64))


def test_the_values_of_l_can_train_as_one_ensemble(stored, monkeypatch, tmp_path) -> None:
    """batch_loops=True (the GPU default) gives results of the same layout; the members differ only in their
    random streams, so the theory columns agree exactly."""
    joint = tiny_result(monkeypatch, str(tmp_path), batch_loops=True)
    for name, value in stored[0]._asdict().items():
        if isinstance(value, torch.Tensor):
            assert getattr(joint, name).shape == value.shape, name
    assert torch.equal(joint.optimal_step_size, stored[0].optimal_step_size)
    assert not torch.equal(joint.whitened, stored[0].whitened)
    assert presets.get("looped_transformers", "quick", device="cpu", **TINY).joint_loops is False
    with pytest.raises(ValueError, match="batch_loops"):
        presets.get("looped_transformers", "quick", device="cpu", **{**TINY, "batch_loops": "yes"})


def test_the_summary_holds_every_number_the_chapter_quotes(stored) -> None:
    """Every ``{glue:text}`` reference of chapter 06 is a key of :func:`summary` (with the chapter's prefix), and
    the numbers are the result's."""
    r = stored[0]
    config = presets.get("looped_transformers", "quick", device="cpu", **TINY)
    values = looped_transformers.summary(r, config)
    chapter = (Path(__file__).resolve().parents[1] / "book" / "06_looped_transformers.md").read_text()
    quoted = set(re.findall(r"\{glue:text\}`looped_transformers_(\w+)", chapter))
    assert len(quoted) > 30 and quoted <= set(values), sorted(quoted - set(values))
    assert values["l1_formula"] == pytest.approx(6 / 10) and values["n"] == 6 and values["d"] == 3
    assert values["minutes"] == r.elapsed_seconds / 60 and values["detection"] == looping.DETECTION_LOOPS
    assert values["dist_max"] == r.whitened_distance.max().item()
    assert values["untied_gain"].endswith("(L = 2)")
    assert 1 <= values["mean_best_loop"] <= TINY["max_test_loops"]
    assert values["median1_end"] == r.looping_median[1, 0, 0, -1, 0].item()
    assert values["threshold_n0"] == pytest.approx(2 / theory.optimal_looped_step_size(3, 6, 2).step_sizes[0].item())
    assert values["ood2"].split()[0] in ("falls", "rises", "overflows")
    no_untied = r._replace(untied_loops=torch.empty(0, dtype=torch.long), untied_loss=torch.empty(0, 2, dtype=F64))
    assert looped_transformers.summary(no_untied, config)["untied_gain"] == "(no untied run)"
    narrow = presets.get("looped_transformers", "quick", device="cpu", **{**TINY, "ood_ranges": (0.25, 1.0)})
    assert looped_transformers.summary(r, narrow)["ood4"] == "(not in this run's test families)"


def test_the_mean_story_says_whether_looping_keeps_helping(stored) -> None:
    r = stored[0]
    shape = r.looping_mean.shape  # (C, J, F, T, S)
    falling = torch.logspace(0, -6, shape[3], dtype=F64)[None, None, None, :, None].expand(shape).clone()
    floors = torch.full(r.floor_mean.shape, 1e-9, dtype=F64)
    assert looping.mean_story(r._replace(looping_mean=falling, floor_mean=floors), 0, 1).startswith("falls")
    rising = falling.clone()
    rising[0, 0, 1, 3:, 0] = float("inf")  # the first model's mean overflows after three loops
    story = looping.mean_story(r._replace(looping_mean=rising, floor_mean=floors), 0, 1)
    assert story.startswith("is lowest at L′ = 3") and story.endswith(f"to overflow at L′ = {shape[3]}")


def test_undertrained_models_fail_the_claim_checks(stored) -> None:
    config = presets.get("looped_transformers", "quick", device="cpu", **TINY)
    checks = looped_transformers.claim_checks(stored[0], config)
    assert not checks.passed
    assert checks.records() and any(not c["passed"] for c in checks.records())


# --- bad input --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(loops=(0, 2)), "loops"),
        (dict(looping_from=(3,)), "looping_from"),
        (dict(ood_ranges=(0.25, 1.0, 2.0)), "ood_ranges"),
        (dict(ood_ranges=(1.0, 0.25)), "ood_ranges"),
        (dict(condition_number=0.5), "condition_number"),
        (dict(max_test_loops=1), "max_test_loops"),
        (dict(u_init_std=-1.0), "u_init_std"),
        (dict(dim=-2), "dim"),
        (dict(dim=1), "dim"),
        (dict(n_underdetermined=3), "n_underdetermined"),
        (dict(n_underdetermined=0), "n_underdetermined"),
    ],
)
def test_bad_parameters_are_named(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        presets.get("looped_transformers", "quick", device="cpu", **{**TINY, **change})


def test_the_sweep_always_holds_the_main_context_length() -> None:
    config = presets.get("looped_transformers", "quick", device="cpu", **TINY)
    assert config.n_sweep == (6, 12) and config.looping_contexts == (6, 12)


def test_the_context_length_below_d_defaults_to_half_of_d() -> None:
    def config(**changes):
        return presets.get("looped_transformers", "quick", device="cpu", **changes)

    assert config(**TINY).n_underdetermined == 1 and config().n_underdetermined == 5
    assert config(**{**TINY, "n_underdetermined": 2}).n_underdetermined == 2
    assert config(**TINY).underdetermined_train_steps == 3 * TINY["train_steps"]
    assert config(**{**TINY, "underdetermined_train_steps": 7}).underdetermined_train_steps == 7
