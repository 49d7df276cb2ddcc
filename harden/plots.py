"""PNG figures for users: per-layer score histograms (harden score). matplotlib runs headless (Agg)."""

from __future__ import annotations

import math
from pathlib import Path

from .artifacts import ChannelScores
from .lineage import atomic_write_bytes


def score_histograms(scores: ChannelScores, path: Path, title: str) -> None:
    """One small histogram per scored conv; channels flagged for pruning in red, the rest in grey."""
    import io

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
    """Neural Cleanse's best trigger per class (mask * pattern), with its norm and anomaly index; when the warp
    inversion ran, a row with each class's displacement field (arrows, in pixels) and its success rate; when the
    grating scan ran, a row with each class's peak grating and its success against the far gratings'."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    k = len(result.norms)
    extra = [r for r in ("warp", "grating") if getattr(result, r) is not None]
    rows = 1 + len(extra)
    fig, axes = plt.subplots(rows, k, figsize=(1.5 * k, 1.9 * rows), squeeze=False)
    for i, ax in enumerate(axes[0]):
        img = (result.masks[i][None] * result.patterns[i]).transpose(1, 2, 0)
        ax.imshow(img.clip(0, 1), interpolation="nearest")
        mark = " *" if result.patch_target == i else ""
        ax.set_title(f"{labels[i][:10]}{mark}\nL1 {result.norms[i]:.0f}  A {result.anomaly[i]:.1f}", fontsize=6)
        ax.axis("off")
    if result.warp is not None:
        g = result.warp.fields.shape[-1]
        yy, xx = np.mgrid[0:g, 0:g]
        for i, ax in enumerate(axes[1 + extra.index("warp")]):
            field = result.warp.fields[i]
            ax.quiver(xx, yy, field[0], -field[1], angles="xy", scale_units="xy", scale=result.warp.max_shift * 1.5)
            ax.set_xlim(-1, g)
            ax.set_ylim(g, -1)
            mark = " *" if result.kind == "warp" and result.target == i else ""
            ax.set_title(f"{labels[i][:10]}{mark}\nwarp {100 * result.warp.success[i]:.0f}%", fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
    if result.grating is not None:
        gr = result.grating
        for i, ax in enumerate(axes[1 + extra.index("grating")]):
            img = 0.5 + gr.pattern(i, result.masks.shape[-2:]).numpy().transpose(1, 2, 0) / (2 * gr.amplitude)
            ax.imshow(img.clip(0, 1), interpolation="nearest")
            mark = " *" if result.kind == "grating" and result.target == i else ""
            ax.set_title(f"{labels[i][:10]}{mark}\ngrating {100 * gr.success[i]:.0f}/{100 * gr.far_success[i]:.0f}%",
                         fontsize=6)
            ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
