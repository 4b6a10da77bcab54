"""The plotting helpers: panels, titles and colour scales (rendered off-screen)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from icl import plotting  # noqa: E402


def test_heatmaps_share_one_scale_per_row_and_leave_none_empty() -> None:
    with plotting.style():
        figure = plotting.heatmaps(
            [torch.eye(2), 3 * torch.eye(2), None, -torch.eye(2)], ["a", "b", "empty", "d"], rows=2
        )
    axes = figure.axes
    assert [ax.get_title() for ax in axes] == ["a", "b", "empty", "d"]
    assert not axes[2].axison and axes[0].axison
    limits = [ax.collections[0].get_clim() for ax in (axes[0], axes[1], axes[3])]
    assert limits[0] == limits[1] == (-3.0, 3.0)  # the first row shares its largest magnitude
    assert limits[2] == (-1.0, 1.0)  # the second row has its own scale, ignoring the empty panel
    plt.close(figure)


def test_seed_lines_draw_every_seed_thin_and_the_mean_thick() -> None:
    figure, ax = plt.subplots()
    values = torch.tensor([[1.0, 3.0], [2.0, 4.0], [3.0, 5.0]])  # (T = 3, S = 2)
    plotting.seed_lines(ax, torch.arange(3), values, "C0", label="mean")
    lines = ax.get_lines()
    assert len(lines) == 3 and [line.get_linewidth() for line in lines] == [0.6, 0.6, 1.8]
    np.testing.assert_allclose(lines[-1].get_ydata(), [2.0, 3.0, 4.0])
    assert lines[-1].get_label() == "mean" and lines[0].get_label().startswith("_")
    plt.close(figure)


def test_log_panel_and_check_line() -> None:
    figure, ax = plt.subplots()
    ax.plot([1, 2], [0.1, 0.01], label="error")
    plotting.check_line(ax, 0.05)
    plotting.log_panel(ax, "Dist(A, I)", "Adam step", "distance")
    assert ax.get_yscale() == "log" and ax.get_title() == "Dist(A, I)" and ax.get_ylabel() == "distance"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["error", "check: 0.05"]
    assert plotting.layer_colors(3).shape == (3, 4)
    plt.close(figure)
