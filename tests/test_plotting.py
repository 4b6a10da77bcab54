"""The plotting helpers: panels, titles and colour scales (rendered off-screen)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
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
