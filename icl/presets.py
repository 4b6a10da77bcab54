"""Per-experiment presets: ``quick`` (a 2-core CPU, minutes) and ``paper`` (the paper's own scale).

``get(experiment, preset, **overrides)`` returns the experiment's frozen, validated config. The
preset defaults to ``$ICL_PRESET`` and then to ``"quick"``, so that ``ICL_PRESET=paper make book``
builds the whole site at paper scale. Overrides of ``None`` mean "from the preset" (a chapter's
parameters cell passes ``n_context=None`` unless the reader sets it).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from icl.device import resolve_device
from icl.experiments import (
    distribution_shift,
    full_form_gdpp,
    gradient_flow,
    looped_gd,
    multi_step_pgd,
    one_step_pgd,
    prompt_length,
    softmax_shift,
    von_oswald_gd,
)

PRESET_NAMES: tuple[str, ...] = ("quick", "paper")


@dataclass(frozen=True)
class Preset:
    """What ``quick`` and ``paper`` set for one experiment, and why ``quick`` differs from the paper."""

    config: type
    paper: Mapping[str, Any]
    quick: Mapping[str, Any]
    why_quick: Mapping[str, str] = field(default_factory=dict)


REGISTRY: Mapping[str, Preset] = {
    "one_step_pgd": Preset(
        config=one_step_pgd.OneStepPGDConfig,
        paper=dict(train_steps=20_000, batch_size=8192, n_seeds=5, n_test=400_000),
        quick=dict(condition_number=4.0, train_steps=2000, batch_size=1024, n_seeds=3, n_test=200_000),
        why_quick=dict(
            condition_number=(
                "κ = 4: a smallest eigenvalue 4× larger, so the slowest direction of the loss converges in the budget"
            ),
            train_steps="10× fewer Adam steps; the 2 % checks hold at every n of the sweep",
            batch_size="8× smaller batches; the cosine learning-rate decay averages the extra noise",
            n_seeds="3 seeds, the fewest the book's checks accept",
            n_test="half the test set; the standard error is stated beside every loss",
        ),
    ),
    "multi_step_pgd": Preset(
        config=multi_step_pgd.MultiStepPGDConfig,
        paper=dict(train_steps=20_000, batch_size=8192, n_seeds=5, n_test=200_000),
        quick=dict(train_steps=8000, batch_size=512, n_seeds=3, n_test=100_000),
        why_quick=dict(
            train_steps="2.5× fewer Adam steps; the same checks hold",
            batch_size="16× smaller batches; the cosine learning-rate decay averages the extra noise",
            n_seeds="3 seeds, the fewest the book's checks accept",
            n_test="half the test set; the standard error is stated beside the loss",
        ),
    ),
    "von_oswald_gd": Preset(
        config=von_oswald_gd.VonOswaldGDConfig,
        paper=dict(train_steps=5000, batch_size=2048, n_seeds=5, n_test=100_000),
        quick=dict(train_steps=2000, batch_size=1024, n_seeds=3),
        why_quick=dict(
            train_steps="2.5× fewer Adam steps; the same checks hold",
            batch_size="half the authors' 2048 prompts per step (at 512 the recurrent model misses GD++)",
            n_seeds="3 seeds, the fewest the book's checks accept",
        ),
    ),
    "full_form_gdpp": Preset(
        config=full_form_gdpp.FullFormConfig,
        paper=dict(
            train_steps=100_000,
            batch_size=8192,
            n_seeds=5,
            depths=(1, 2, 3, 4),
            n_test=100_000,
            context_sweep=(2, 4, 6, 8, 10, 12, 14, 16, 18, 20),
            sweep_train_steps=20_000,
            sweep_batch_size=8192,
            clipped_contexts=(6, 10),
        ),
        quick=dict(
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
        ),
        why_quick=dict(
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
        ),
    ),
    "looped_gd": Preset(
        config=looped_gd.LoopedConfig,
        paper=dict(n_seeds=5, train_steps=3000, batch_size=4096, learning_rate=0.02),
        quick=dict(
            loops=(1, 2, 3),
            looping_from=(2,),
            n_seeds=3,
            train_steps=800,
            batch_size=1024,
            learning_rate=0.05,
            n_test=50_000,
            n_looping_test=8000,
            n_divergence_samples=200_000,
        ),
        why_quick=dict(
            loops="no 5-loop model: its heavy-tailed gradients need a lower learning rate and larger batches",
            looping_from="test-time looping of the 2-loop models only",
            n_seeds="3 seeds, the fewest the book's checks accept",
            train_steps="4× fewer Adam steps, enough for L ≤ 3 at the higher learning rate (600 are not)",
            batch_size="4× smaller batches",
            learning_rate="2.5× higher, stable for L ≤ 3",
            n_test="half the test set; standard errors are stated",
            n_looping_test="40 % of the prompts looped on: the divergence check's standard error is 1.6× larger",
            n_divergence_samples="half the Monte Carlo draws for the predicted share",
        ),
    ),
    "gradient_flow": Preset(
        config=gradient_flow.GradientFlowConfig,
        paper=dict(n_seeds=5, train_steps=4000, batch_size=4096, learning_rate=0.02, n_test=400_000),
        quick=dict(n_seeds=3, train_steps=2000, batch_size=1024, learning_rate=0.02, n_test=200_000),
        why_quick=dict(
            n_seeds="3 seeds, the fewest the book's checks accept",
            train_steps="half the Adam steps; the product still ends within 1 % of Γ⁻¹",
            batch_size="4× smaller batches; the cosine learning-rate decay averages the extra noise",
            n_test="half the test set; the standard error is in the check",
        ),
    ),
    "prompt_length": Preset(
        config=prompt_length.PromptLengthConfig,
        paper=dict(n_seeds=5, train_steps=4000, batch_size=4096, n_test=400_000),
        quick=dict(n_seeds=3, train_steps=2000, batch_size=1024, n_test=100_000),
        why_quick=dict(
            n_seeds="3 seeds, the fewest the book's checks accept",
            train_steps="half the Adam steps",
            batch_size="4× smaller batches; the cosine learning-rate decay averages the extra noise",
            n_test="a quarter of the test set: wider error bars, stated in every check",
        ),
    ),
    "distribution_shift": Preset(
        config=distribution_shift.DistributionShiftConfig,
        paper=dict(n_seeds=5, train_steps=4000, batch_size=4096, n_test=400_000),
        quick=dict(n_seeds=3, train_steps=2000, batch_size=1024, n_test=100_000),
        why_quick=dict(
            n_seeds="3 seeds, the fewest the book's checks accept",
            train_steps="half the Adam steps",
            batch_size="4× smaller batches; the cosine learning-rate decay averages the extra noise",
            n_test="a quarter of the test set: wider error bars, stated in every check",
        ),
    ),
    "softmax_shift": Preset(
        config=softmax_shift.SoftmaxShiftConfig,
        paper=dict(),
        quick=dict(
            dim=5,
            n_context=10,
            max_context=20,
            width=32,
            n_layers=3,
            n_heads=2,
            scales=(1.0, 4.0),
            train_steps=5000,
            learning_rate=3e-3,
            curriculum_start_dim=1,
            curriculum_every=100,
            n_test=2048,
        ),
        why_quick=dict(
            dim="d = 5 instead of 20: the paper note's CPU scale",
            n_context="N = 10 instead of the paper's 40, 70, 100 (one training length)",
            max_context="tested up to 2N = 20",
            width="a 39k-parameter model (width 32, 3 layers, 2 heads) instead of GPT-2's 9.5M (256, 12, 8)",
            n_layers="3 layers instead of 12",
            n_heads="2 heads instead of 8",
            scales="c = 1 and 4; the paper adds 9",
            train_steps="5000 Adam steps instead of 500,000 (4000 leave one seed of three without the jump past N)",
            learning_rate="3·10⁻³ instead of 10⁻⁴, for the short budget",
            curriculum_start_dim="from 1 coordinate (Garg et al.: 5 of 20); without it the models stay on the plateau",
            curriculum_every="one more coordinate every 100 steps (all 5 from step 400), not every 2000",
            n_test="2048 test prompts per condition; the standard errors are in the checks",
        ),
    ),
}


def resolve_preset(preset: str | None) -> str:
    """``None`` -> ``$ICL_PRESET`` if set, else ``"quick"``; anything else must be a known preset name."""
    if preset is None:
        preset = os.environ.get("ICL_PRESET") or "quick"
    if preset not in PRESET_NAMES:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESET_NAMES)}")
    return preset


def _entry(experiment: str) -> Preset:
    if experiment not in REGISTRY:
        raise ValueError(f"unknown experiment {experiment!r}; choose one of {sorted(REGISTRY)}")
    return REGISTRY[experiment]


def parameter_names(experiment: str) -> tuple[str, ...]:
    """The config fields of ``experiment``, in order."""
    return tuple(f.name for f in dataclasses.fields(_entry(experiment).config))


def get(experiment: str, preset: str | None = None, **overrides: Any) -> Any:
    """The validated, frozen config of ``experiment`` at ``preset`` with ``overrides`` applied.

    The device is resolved here (``"auto"`` becomes ``"cpu"`` or ``"cuda:0"``), so a config names
    where it runs and a request for a missing GPU fails before any work.
    """
    entry = _entry(experiment)
    name = resolve_preset(preset)
    allowed = parameter_names(experiment)
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r} for {experiment}; choose from {sorted(allowed)}")
    values: dict[str, Any] = dict(entry.paper if name == "paper" else {**entry.paper, **entry.quick})
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "device" in allowed:
        values["device"] = str(resolve_device(values.get("device", "auto")))
    return entry.config(**values)


@dataclass(frozen=True)
class ChangesTable:
    """Parameter | this run | paper | why ``quick`` differs; renders as a table in a notebook."""

    rows: tuple[tuple[str, str, str, str], ...]

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in ("parameter", "this run", "paper", "why quick differs"))
        body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __repr__(self) -> str:
        return "\n".join(" | ".join(row) for row in self.rows)


def changes(experiment: str, config: Any) -> ChangesTable:
    """Every parameter of ``config`` beside the paper preset's value, with the reason ``quick`` differs."""
    entry = _entry(experiment)
    paper = get(experiment, "paper", device="cpu")
    rows = []
    for name in parameter_names(experiment):
        if name in ("device", "seed"):
            continue
        this, reference = getattr(config, name), getattr(paper, name)
        why = entry.why_quick.get(name, "") if this != reference else ""
        rows.append((name, _show(this), _show(reference), why))
    return ChangesTable(tuple(rows))


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(_show(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
