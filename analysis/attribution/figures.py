"""The figure of ``fastconv viz sanity``: how each attribution method's maps
decorrelate as the model's layers are randomized, and its deletion and
insertion areas under the curve."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fastconv.analysis.visualize.figures import new_figure
from fastconv.train.figures import save

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping

    from matplotlib.figure import Figure

    from fastconv.analysis.attribution.metrics import SanityCheck


def plot_sanity(checks: Mapping[str, SanityCheck], deletion: Mapping[str, float], insertion: Mapping[str, float],
                path: str | os.PathLike | None = None) -> Figure:
    """Left: the mean Spearman rank correlation of each method's maps with the
    trained model's as layers are randomized from the top; right: the mean
    deletion and insertion AUC of each method (and of a random map)."""
    fig = new_figure(12, 4.5)
    left, right = fig.subplots(1, 2, width_ratios=(3, 2))
    layers: list[str] = []
    for name, check in checks.items():
        layers = check.layers
        left.plot(np.arange(len(layers) + 1), np.concatenate([[1.0], check.mean]), marker="o", label=name)
    left.set_xticks(np.arange(len(layers) + 1), ["none"] + layers, rotation=60, ha="right", fontsize=8)
    left.set_xlabel("layers randomized, cumulatively from the output")
    left.set_ylabel("rank correlation with the trained model's map")
    left.axhline(0, color="grey", linewidth=0.8)
    left.set_title("Cascading parameter randomization (Adebayo et al.)")
    left.legend(fontsize=8)
    names = list(deletion)
    pos = np.arange(len(names))
    right.bar(pos - 0.2, [deletion[n] for n in names], 0.4, label="deletion AUC (lower is better)")
    right.bar(pos + 0.2, [insertion[n] for n in names], 0.4, label="insertion AUC (higher is better)")
    right.set_xticks(pos, names, rotation=45, ha="right", fontsize=8)
    right.set_ylabel("area under the class-probability curve")
    right.set_title("Deletion and insertion (Petsiuk et al.)")
    right.legend(fontsize=8)
    if path is not None:
        save(fig, path)
    return fig
