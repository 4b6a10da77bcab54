"""The book's one plotting style, and one colour per method, so a reader learns the legend once.

Use ``with plotting.style(): ...``; nothing is changed outside the block.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

COLORS: dict[str, str] = {
    "transformer": "#0072B2",  # trained transformer: blue
    "gd": "#E69F00",  # plain gradient descent: orange
    "preconditioned_gd": "#009E73",  # preconditioned GD (the theory's optimum): green
    "gd_plus_plus": "#CC79A7",  # GD++: purple
    "newton": "#56B4E9",  # iterative Newton: sky blue
    "conjugate_gradient": "#000000",  # conjugate gradients (L-BFGS and BFGS take its iterates on a quadratic): black
    "least_squares": "#D55E00",  # least squares: vermillion
    "zero": "#7F7F7F",  # the zero estimator: grey, dashed
    "naive": "#A0522D",  # a wrong answer the check must tell apart (e.g. Σ⁻¹ where theory says Γ*)
}
LINESTYLES: dict[str, str] = {"zero": "--", "naive": ":"}


@contextmanager
def style() -> Iterator[None]:
    """seaborn's ``whitegrid`` at a size readable at page width, scoped to the ``with`` block."""
    rc = {
        "figure.dpi": 110,
        "savefig.dpi": 150,
        "figure.figsize": (7.0, 3.6),
        "axes.titlesize": 11,
        "axes.labelsize": 10,
        "legend.fontsize": 9,
        "legend.frameon": False,
        "figure.constrained_layout.use": True,
    }
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9), mpl.rc_context(rc):
        yield


def heatmaps(
    matrices: Sequence[torch.Tensor | np.ndarray | None],
    titles: Sequence[str],
    *,
    rows: int = 1,
    shared_scale: bool = True,
) -> plt.Figure:
    """Matrices side by side (row-major in ``rows`` rows), annotated, on one colour scale per row.

    A ``None`` entry leaves its panel empty but keeps its title (to align rows)."""
    columns = -(-len(matrices) // rows)
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.4 * rows), squeeze=False)
    arrays = [None if m is None else np.asarray(torch.as_tensor(m).detach().cpu(), dtype=float) for m in matrices]
    for r in range(rows):
        group = [a for a in arrays[r * columns : (r + 1) * columns] if a is not None]
        bound = max(np.abs(a).max() for a in group) if shared_scale and group else None
        for c, ax in enumerate(axes[r]):
            index = r * columns + c
            if index >= len(arrays) or arrays[index] is None:
                ax.axis("off")
                if index < len(arrays):
                    ax.set_title(titles[index])
                continue
            limit = bound if bound is not None else np.abs(arrays[index]).max()
            sns.heatmap(
                arrays[index],
                ax=ax,
                cmap="RdBu_r",
                vmin=-limit,
                vmax=limit,
                annot=arrays[index].shape[0] <= 6,
                fmt=".2f",
                annot_kws={"size": 7},
                cbar=False,
                square=True,
                xticklabels=False,
                yticklabels=False,
            )
            ax.set_title(titles[index])
    return figure


def reference_line(ax: plt.Axes, value: float, method: str, label: str) -> None:
    """A horizontal line at ``value`` in the colour and line style of ``method``."""
    ax.axhline(value, color=COLORS[method], linestyle=LINESTYLES.get(method, "-"), linewidth=1.3, label=label)


def check_line(ax: plt.Axes, value: float, label: str | None = None) -> None:
    """A dashed grey horizontal line at a claim check's bar ``value``, labelled ``check: <value>`` by default."""
    ax.axhline(value, color=COLORS["zero"], linestyle="--", linewidth=1, label=label or f"check: {value:g}")


def layer_colors(n_layers: int) -> np.ndarray:
    """One colour per layer (or loop, or context length), dark to light along viridis: (n_layers, 4) RGBA."""
    return plt.get_cmap("viridis")(np.linspace(0.1, 0.8, n_layers))


def seed_lines(
    ax: plt.Axes,
    x: torch.Tensor | np.ndarray,
    values: torch.Tensor | np.ndarray,
    color: str | np.ndarray,
    label: str | None = None,
    *,
    linestyle: str = "-",
) -> None:
    """The book's "thin seed lines, thick mean" idiom: ``values`` (T, S) against ``x`` (T,), one thin line per seed
    and their mean over seeds as a thick line carrying ``label``."""
    x, values = _numpy(x), _numpy(values)
    ax.plot(x, values, color=color, linewidth=0.6, alpha=0.5, linestyle=linestyle)
    ax.plot(x, values.mean(-1), color=color, linewidth=1.8, linestyle=linestyle, label=label)


def log_panel(ax: plt.Axes, title: str, xlabel: str, ylabel: str | None = None, *, legend: str | None = "best") -> None:
    """Finish a panel of errors or distances: log y scale, title, axis labels, legend (``legend=None``: none)."""
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    if legend is not None:
        ax.legend(loc=legend)


def _numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
