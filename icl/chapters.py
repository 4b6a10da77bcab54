"""The book's chapters: their files, titles, the experiment each runs, and their parameters cells.

What a chapter leaves behind when it runs (claim checks, config, key arrays, run statistics) is :mod:`icl.record`.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icl.config import did_you_mean


@dataclass(frozen=True)
class Chapter:
    """A chapter: its file's stem, title, the experiment it runs (a module of :mod:`icl.experiments`, named after
    the chapter), the paper result it reproduces and its claim in one line (the intro page's table shows both)."""

    slug: str
    title: str
    experiment: str | None
    paper: str
    claim: str
    sizes: tuple[str, ...] = ()  # parameters that must be integers >= 1 (for chapters without an experiment config)


CHAPTERS: dict[str, Chapter] = {
    c.slug: c
    for c in (
        Chapter(
            "01_setup_and_notation",
            "Setup and notation",
            None,
            "all",
            "the token layout, the layer, and one sparse layer as one GD step, executed",
            sizes=("dim", "n_context"),
        ),
        Chapter(
            "02_one_step_pgd",
            "One layer of linear attention is one step of preconditioned GD",
            "one_step_pgd",
            "Ahn et al. Thm 1; Zhang, Frei, Bartlett Thm 4.1",
            "a trained layer is one step of GD preconditioned by Γ*, not Σ⁻¹",
        ),
        Chapter(
            "03_multi_step_pgd",
            "L layers of linear attention are L steps of preconditioned GD",
            "multi_step_pgd",
            "Ahn et al. Thm 3, Figs 1–2",
            "L sparse layers are L steps preconditioned by a_ℓ Σ⁻¹, with exactly computable a_ℓ",
        ),
        Chapter(
            "04_trained_transformers_do_gd",
            "Trained transformers do gradient descent, and GD++",
            "trained_transformers_do_gd",
            "von Oswald et al. Prop. 1, Figs 2, 3a",
            "a hand-built layer is GD; a trained one finds it; two tied layers learn GD++",
        ),
        Chapter(
            "05_full_form_gd_plus_plus",
            "With the covariates trainable, L layers learn GD++",
            "full_form_gd_plus_plus",
            "Ahn et al. Thm 4, Figs 3–7",
            "with covariates trainable, L layers learn GD++ (a_ℓ Σ⁻¹, b_ℓ I), far below preconditioned GD at every "
            "context length",
        ),
        Chapter(
            "06_looped_transformers",
            "A looped layer learns multi-step GD with one preconditioner",
            "looped_transformers",
            "Gatmiry et al. 2024",
            "one layer looped L times learns L GD steps with one preconditioner a*Σ⁻¹ (a* < 1, exact); test-time "
            "looping helps the median, not the mean at small n/d",
        ),
        Chapter(
            "07_gradient_flow",
            "Gradient flow from a small balanced start reaches the global minimum",
            "gradient_flow",
            "Zhang, Frei, Bartlett Thm 4.1",
            "exact gradient flow reaches uU = Γ⁻¹ linearly with u² − ‖U‖²_F conserved; SGD finds the product, "
            "not the factors",
        ),
        Chapter(
            "08_prompt_length",
            "Prediction error against prompt length",
            "prompt_length",
            "Zhang, Frei, Bartlett Thm 4.2, Cor. 4.3",
            "a trained layer's error on prompts of length M is exactly a(N)/M + b(N)/N²: longer test prompts never "
            "remove what a short training length N left",
        ),
        Chapter(
            "09_distribution_shift",
            "Distribution shift: what a trained linear transformer tolerates, and what breaks it",
            "distribution_shift",
            "Zhang, Frei, Bartlett Sec. 4.2–4.3, Thm 4.5",
            "noisy labels and orthogonal queries are tolerated, scaled covariates are not (least squares is); random "
            "covariances lead to a different limit",
        ),
        Chapter(
            "10_gpt_least_squares",
            "A GPT learns least squares in context",
            "gpt_least_squares",
            "Garg, Tsipras, Liang, Valiant Fig. 2, Sec. 4, App. B",
            "a small GPT-2 trained on in-context linear regression tracks least squares at every number of examples, "
            "far below 3-nearest-neighbours and averaging; scaled inputs break it, where least squares does not care",
        ),
        Chapter(
            "11_softmax_covariate_shift",
            "A softmax transformer under covariate shift",
            "softmax_covariate_shift",
            "Zhang, Frei, Bartlett Fig. 1 (Garg et al.'s setup)",
            "a small GPT-2 beats the best linear layer in distribution; at this scale its jump past the training "
            "length is seed-dependent and random covariances do not help (both shown, not checked)",
        ),
        Chapter(
            "12_iterative_newton",
            "The GPT's layers progress like iterative Newton",
            "iterative_newton",
            "Fu, Chen, Jia, Sharan Figs. 2-5, 26, Table 1",
            "read out layer by layer, chapter 10's GPT matches a linearly growing number of Newton steps and an "
            "exponentially growing number of GD steps; an LSTM forgets, the GPT does not; at this scale the level of "
            "similarity does not separate Newton from GD, nor does training on κ = 100",
        ),
        Chapter(
            "13_adam_beats_sgd",
            "Adam against SGD on a linear transformer",
            "adam_beats_sgd",
            "Ahn, Cheng, Song, Yun, Jadbabaie, Sra 2024 Fig. 2, Fig. 6",
            "from the same start on the same prompts, Adam ends far below SGD with momentum; heavy-tailed gradient "
            "noise, better conditioning and less curvature along Adam's path, curvature growing with the gradient",
        ),
        Chapter(
            "14_attention_data_depth",
            "Softmax, heavy tails and depth",
            "attention_data_depth",
            "Ahn, Cheng, Song, Yun, Jadbabaie, Sra 2024 Fig. 4, Fig. 7, Fig. 8",
            "linear attention trains where the authors' softmax attention barely moves; Adam leads on spheres and on "
            "heavy-tailed inputs, which make the heavier gradient noise; more depth widens Adam's lead",
        ),
        Chapter(
            "15_precgd_matrix_sensing",
            "Damped preconditioning: PrecGD on matrix sensing",
            "precgd_matrix_sensing",
            "Zhang, Fattahi, Zhang 2021 (the book's own setting)",
            "over-parameterised, gradient descent turns sublinear while PrecGD, damped by √f, stays linear; every "
            "fixed damping stalls; with noise all methods stop at the statistical error; Γ*'s ridge is such a damping",
        ),
    )
}


def chapter_file(name: str | os.PathLike[str]) -> Path:
    """The file of a chapter named by its path (``book/02_one_step_pgd.md``) or by its bare name
    (``02_one_step_pgd``, then the ``book/`` folder beside this package in a source checkout)."""
    path = Path(name)
    if path.suffix == "" and path.parent == Path(".") and path.name in CHAPTERS:
        return Path(__file__).resolve().parents[1] / "book" / f"{path.name}.md"
    return path


def chapter_of(path: str | os.PathLike[str]) -> Chapter:
    """The chapter a file path (or a bare chapter name, :func:`chapter_file`) names; raises ``ValueError`` for a missing
    file or an unknown chapter."""
    path = chapter_file(path)
    if path.suffix != ".md" or path.stem not in CHAPTERS:
        hint = did_you_mean(f"book/{path.stem}.md", [f"book/{s}.md" for s in CHAPTERS])
        raise ValueError(f"unknown chapter {str(path)!r}; choose one of {[f'book/{s}.md' for s in CHAPTERS]}{hint}")
    if not path.is_file():
        raise ValueError(f"chapter file {str(path)!r} does not exist")
    return CHAPTERS[path.stem]


def read_notebook(path: str | os.PathLike[str]) -> Any:
    """The chapter as an nbformat notebook (jupytext reads MyST text; papermill cannot)."""
    import jupytext

    return jupytext.read(str(path))


def parameters_of(notebook: Any) -> dict[str, Any]:
    """Names and default values of the cell tagged ``parameters`` (literals only, by design)."""
    for cell in notebook.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            values = {}
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    values[node.targets[0].id] = ast.literal_eval(node.value)
            return values
    raise ValueError("the chapter has no cell tagged 'parameters'")
