"""PNG figures for users: per-layer score histograms (harden score). matplotlib runs headless (Agg)."""

from __future__ import annotations

import io
import math
from pathlib import Path

from harden.core.artifacts import ChannelScores
from harden.core.io import atomic_write_bytes


def score_histograms(scores: ChannelScores, path: Path, title: str) -> None:
    """One small histogram per scored conv; channels flagged for pruning in red, the rest in grey."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores.layers)
    cols = min(5, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        layer = scores.layers[name]
        s, f = layer.score.float().numpy(), layer.flag.numpy()
        bins = 20
        ax.hist([s[~f], s[f]], bins=bins, stacked=True, color=["0.6", "tab:red"])
        ax.set_title(f"{name} ({int(f.sum())}/{len(f)})", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"{title}: score per channel (red: would be pruned)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def inverted_triggers(result, labels: tuple[str, ...], path: Path) -> None:
    """One row per detector that ran, each drawn by its finding (Neural Cleanse's masked patterns, the warp fields,
    the peak gratings, ...), each with the class it flags marked *."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(labels)
    rows = max(1, len(result.findings))
    fig, axes = plt.subplots(rows, k, figsize=(1.5 * k, 1.9 * rows), squeeze=False)
    for row, finding in zip(axes, result.findings.values()):
        finding.plot_row(row, labels, finding.target)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
