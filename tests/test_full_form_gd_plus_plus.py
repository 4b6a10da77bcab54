"""The (11)-form experiment at tiny sizes: reproducible, cached, baselines consistent, checks can fail."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from icl import presets, rng, theory, train
from icl.checks import ClaimChecks
from icl.experiments import full_form_gd_plus_plus
from icl.experiments.full_form_gd_plus_plus import depths, shared
from icl.tasks import AHN_SPECTRUM

CHAPTER = Path(__file__).resolve().parents[1] / "book" / "05_full_form_gd_plus_plus.md"

TINY = dict(
    spectrum=(1.0, 0.5),
    n_context=6,
    n_layers=2,
    depths=(1, 2),
    n_seeds=2,
    train_steps=20,
    batch_size=64,
    n_validation=500,
    n_test=1000,
    context_sweep=(3, 6),
    sweep_train_steps=20,
    sweep_batch_size=32,
    clipped_contexts=(3,),
)


def tiny_config(**changes) -> full_form_gd_plus_plus.FullFormConfig:
    return presets.get("full_form_gd_plus_plus", "quick", device="cpu", **{**TINY, **changes})


def tiny_result(monkeypatch: pytest.MonkeyPatch, store: str, **changes) -> full_form_gd_plus_plus.FullFormResult:
    monkeypatch.setenv("ICL_STORE", store)
    return full_form_gd_plus_plus.run(tiny_config(**changes), progress=False)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[full_form_gd_plus_plus.FullFormResult, str]:
    store = str(tmp_path_factory.mktemp("store"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        return tiny_result(monkeypatch, store), store


def test_reproducible_and_cached(stored, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    again = tiny_result(monkeypatch, str(tmp_path))
    for name, value in stored[0]._asdict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, getattr(again, name)), name
        elif name != "elapsed_seconds":
            assert value == getattr(again, name), name

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the store holds the result")

    monkeypatch.setattr(train, "train", no_training)
    assert torch.equal(tiny_result(monkeypatch, stored[1]).loss, stored[0].loss)


def test_shapes_and_baselines(stored) -> None:
    r = stored[0]
    S, L, d, D = TINY["n_seeds"], TINY["n_layers"], len(TINY["spectrum"]), len(TINY["depths"])
    assert r.whitened.shape == r.B.shape == (S, L, d, d)
    assert r.a.shape == r.b.shape == r.B_distance.shape == (S, L)
    assert r.loss.shape == r.gd_loss.shape == r.pgd_loss.shape == r.median_loss.shape == (D, S)
    assert r.whitened_distance_history.shape == (r.snapshot_steps.shape[0], S, L)
    # At one step, the sparse optimum and the shared-step PGD are the same thing.
    assert abs(r.sparse_loss[0].item() - r.pgd_exact_loss[0].item()) < 1e-12
    # More freedom, lower loss: a step per layer ≤ one shared step (exact).
    assert (r.sparse_loss <= r.pgd_exact_loss + 1e-12).all()
    # The context-length sweep (Fig. 6): one trained ensemble per n, the baselines on the same prompts.
    N = len(TINY["context_sweep"])
    assert r.sweep_contexts.tolist() == list(TINY["context_sweep"])
    names = ("sweep_loss", "sweep_loss_se", "sweep_median", "sweep_gd_loss", "sweep_pgd_loss", "sweep_least_squares")
    for name in names:
        assert getattr(r, name).shape == (N, S), name
    assert r.clipped_loss.shape == r.clipped_median.shape == (1, S)
    for i, n in enumerate(TINY["context_sweep"]):
        assert abs(r.sweep_pgd_exact[i].item() - theory.optimal_looped_step_size(d, n, L).loss.item()) < 1e-12
    assert (r.sweep_least_squares < 1e-6).all()  # noiseless labels and n > d: least squares is exact


def test_undertrained_run_fails(stored) -> None:
    assert not full_form_gd_plus_plus.claim_checks(stored[0]).passed


def test_checks_pass_on_ideal_numbers_and_fail_without_the_covariate_update(stored) -> None:
    r = stored[0]
    S, L = r.a.shape
    small = torch.exp(torch.tensor(-7.0, dtype=torch.float64))
    loss = r.sparse_loss[:, None].expand(-1, S).clone()
    loss[1:] = small
    ideal = r._replace(
        whitened_distance=torch.zeros(S, L, dtype=torch.float64),
        B_distance=torch.zeros(S, L, dtype=torch.float64),
        loss=loss,
        projected_loss=torch.full((S,), small.item(), dtype=torch.float64),
        condition_number=torch.tensor([[5.0] * S] + [[1.5] * S] * (L - 1), dtype=torch.float64),
        sweep_loss=0.5 * r.sweep_pgd_exact[:, None].expand(-1, S),
        sweep_median=torch.full_like(r.sweep_median, 1e-2),
        clipped_loss=torch.full_like(r.clipped_loss, 1e3),
        clipped_median=torch.full_like(r.clipped_median, 1e-4),
    )
    full_form_gd_plus_plus.claim_checks(ideal).verify()
    # A model that learned only preconditioned GD (B = 0) has the sparse loss and leaves the data's
    # conditioning alone: four checks fail.
    sparse = ideal._replace(
        condition_number=torch.full((L, S), 5.0, dtype=torch.float64),
        loss=r.sparse_loss[:, None].expand(-1, S).clone(),
        projected_loss=r.sparse_loss[-1].expand(S).clone(),
        B_distance=torch.ones(S, L, dtype=torch.float64),
    )
    failed = [c.name for c in full_form_gd_plus_plus.claim_checks(sparse).checks if not c.passed]
    failed = [name for name in failed if not name.startswith("n ")]  # the context sweep is checked above
    assert len(failed) == 4, failed


@pytest.mark.parametrize(
    ("change", "name"),
    [
        (dict(depths=(1, 2), n_layers=3), "depths"),
        (dict(clip_norm=0.0), "clip_norm"),
        (dict(spectrum=(1, 0)), "spectrum"),
        (dict(sweep_batch_size=0), "sweep_batch_size"),
    ],
)
def test_bad_input_names_the_parameter(change: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        presets.get("full_form_gd_plus_plus", "quick", device="cpu", **change)


def test_the_clip_contrast_and_the_figure_6_ordering_can_fail(stored) -> None:
    r = stored[0]
    S = r.a.shape[0]
    base = dict(
        sweep_loss=0.5 * r.sweep_pgd_exact[:, None].expand(-1, S),
        sweep_loss_se=0.01 * r.sweep_pgd_exact[:, None].expand(-1, S),
        sweep_median=torch.full_like(r.sweep_median, 1e-2),
        clipped_loss=torch.full_like(r.clipped_loss, 1e3),
        clipped_median=torch.full_like(r.clipped_median, 1e-4),
    )

    def failed(**changes) -> list[str]:
        checks = full_form_gd_plus_plus.claim_checks(r._replace(**{**base, **changes}))
        return [c.name for c in checks.checks if not c.passed and c.name.startswith("n ")]

    exact = r.sweep_pgd_exact[:, None].expand(-1, S)
    assert failed() == []
    # reliably above GD with a*Σ⁻¹ (a small s.e.): both Figure 6 checks fail
    assert len(failed(sweep_loss=2.0 * exact, sweep_loss_se=0.01 * exact)) == 2
    # one pair's mean above it on a test set that cannot tell (a rare prompt's s.e.): not a failure
    heavy = base["sweep_loss"].clone()
    heavy[0, 0] = 1.5 * exact[0, 0]
    assert failed(sweep_loss=heavy, sweep_loss_se=torch.where(heavy > exact, 1.0 * exact, 0.01 * exact)) == []
    # the typical pair above it, each within its error bars: the median check fails
    assert len(failed(sweep_loss=1.1 * exact, sweep_loss_se=0.5 * exact)) == 1
    assert len(failed(clipped_loss=torch.full_like(r.clipped_loss, 1e-2))) == 1  # the clip costs nothing
    assert len(failed(clipped_median=torch.full_like(r.clipped_median, 1.0))) == 1  # nor helps the median


def test_the_paper_note_baselines_pass_on_its_values_and_fail_off_them(stored) -> None:
    r = stored[0]
    S = r.a.shape[0]
    contexts, depths = torch.tensor([6, 10, 20]), torch.tensor([1, 2, 3])

    def result(scale: float = 1.0, ln_shift: float = 0.0, spectrum=AHN_SPECTRUM):
        def fig6(table):
            values = scale * torch.tensor([table[n] for n in contexts.tolist()], dtype=torch.float64)
            return values[:, None].expand(-1, S)

        def fig7(table):
            lns = torch.tensor([table[m] for m in depths.tolist()], dtype=torch.float64) + ln_shift
            return lns.exp()[:, None].expand(-1, S)

        return r._replace(
            whitened=torch.zeros(S, 3, 5, 5, dtype=torch.float64),
            sweep_contexts=contexts,
            depths=depths,
            n_context=20,
            spectrum=spectrum,
            sweep_pgd_exact=fig6(full_form_gd_plus_plus.NOTE_FIG6_PGD)[:, 0],  # checked exactly, not by Monte Carlo
            sweep_pgd_loss=torch.full((len(contexts), S), 9.0, dtype=torch.float64),  # heavy-tailed: not compared
            sweep_gd_loss=fig6(full_form_gd_plus_plus.NOTE_FIG6_GD),
            pgd_loss=fig7(full_form_gd_plus_plus.NOTE_FIG7_LN_PGD),
            gd_loss=fig7(full_form_gd_plus_plus.NOTE_FIG7_LN_GD),
        )

    def note_checks(result) -> list[bool]:
        checks = ClaimChecks()
        full_form_gd_plus_plus._paper_note_baselines(result, checks)
        return [c.passed for c in checks.checks]

    assert note_checks(result()) == [True] * 4  # Fig. 6 and Fig. 7, preconditioned GD then GD
    assert note_checks(result(spectrum=(1.0, 1.0, 0.5, 0.25, 1.0))) == [True] * 2  # GD only on the paper's spectrum
    assert note_checks(result(scale=1.06)) == [False, True, False, True]
    assert note_checks(result(scale=0.94)) == [False, True, False, True]
    assert note_checks(result(ln_shift=0.06)) == [True, False, True, False]
    assert note_checks(r) == []  # d = 2: the note's values do not apply


def test_test_prompts_have_streams_of_their_own() -> None:
    """A run's test prompts come from the run's own seed, not from the next seed's streams (they once did)."""
    config = tiny_config(n_test=10)
    covariance = shared.covariances(config)
    seen = []
    shared.squared_errors({"record": lambda X, y, q: seen.append(X) or y[..., 0]}, config, covariance, part=1)
    draw = lambda generator: shared.sample(config, covariance, 10, generator, torch.float32).X  # noqa: E731
    assert torch.equal(seen[0], draw(rng.streams(config.seed, "cpu", part=shared.TEST_PART + 1).eval))
    others = [rng.streams(config.seed + 1, "cpu", part=1), rng.streams(config.seed, "cpu", part=1)]
    others += [rng.streams(seed, "cpu") for seed in (config.seed, config.seed + 1, config.seed + 2)]
    for streams in others:
        for generator in streams:
            assert not torch.equal(seen[0], draw(generator))


def test_summary_gives_every_number_the_chapter_states(stored) -> None:
    r, config = stored[0], tiny_config()
    values = full_form_gd_plus_plus.summary(r, config)
    glued = set(re.findall(r"full_form_gd_plus_plus_(\w+)", CHAPTER.read_text()))
    assert glued and glued <= set(values), glued - set(values)
    assert values["dist_max"] == r.whitened_distance.max().item()
    assert values["ln_loss"] == r.loss[1].log().mean().item()  # depths (1, 2): the main run is the second
    assert values["clip_n"] == 3 and values["sweep_ln_loss_at_n"] == r.sweep_loss[1].log().mean().item()
    assert all(math.isfinite(v) for v in values.values() if not isinstance(v, str))
    assert values["a_means"] == ", ".join(f"{v:.3g}" for v in r.a.mean(0).tolist())
    assert len(values["b_means"].split(", ")) == TINY["n_layers"] - 1  # the B_ℓ that act


def test_the_paper_scalars_pass_near_figures_4_and_5_and_fail_off_them(stored) -> None:
    r = stored[0]
    S = r.a.shape[0]
    a = torch.tensor(depths.PAPER_FIG5_A, dtype=torch.float64).expand(S, 3)
    b = torch.tensor((*depths.PAPER_FIG4_B, 0.0), dtype=torch.float64).expand(S, 3)  # the last B has no effect

    def passed(scale_a: float = 1.0, scale_b: float = 1.0, **changes) -> list[bool]:
        checks = ClaimChecks()
        at_paper = dict(whitened=torch.zeros(S, 3, 5, 5), n_context=20, spectrum=AHN_SPECTRUM)
        depths.paper_scalars(r._replace(a=scale_a * a, b=scale_b * b, **{**at_paper, **changes}), checks)
        return [c.passed for c in checks.checks]

    assert passed() == [True] and passed(scale_a=1.09) == [True]
    assert passed(scale_a=1.12) == [False] and passed(scale_b=0.88) == [False]
    assert passed(n_context=10) == [] and passed(whitened=torch.zeros(S, 2, 5, 5)) == []  # not the paper's setup
