"""Fuse several scorers' per-channel results into one (algorithms.md §7, step 1).

Each method's scores are first put on a common scale within each conv: ``zscore`` (robust: median and MAD, so one
huge outlier does not squash the rest) or ``rank`` (percentile, 1.0 = most suspect). The fused score of a channel is
the weighted mean over the methods that scored its conv. The fused flag is the union of the methods' own flags, and
every method's score is kept for the report (which evidence flagged what).
"""

from __future__ import annotations

import torch

from harden.config.prune import SCORERS, FusionConfig
from harden.core.artifacts import ChannelScores, LayerScores

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
THRESHOLDS = {"zscore": (3.0, 2.75, 2.5, 2.25, 2.0), "rank": (0.98, 0.96, 0.94, 0.92, 0.9)}


def standardise(score: torch.Tensor, how: str, min_scale: float = 0.0) -> torch.Tensor:
    """``min_scale``: floor on the robust spread, in score units, for scores on an absolute scale (ANP's 1 - mask)."""
    s = score.double()
    if how == "rank":
        order = torch.argsort(torch.argsort(s, stable=True), stable=True).double()
        return (order / max(len(s) - 1, 1)).float()
    med = s.median()
    mad = (s - med).abs().median() * MAD_TO_SIGMA
    if float(mad) < 1e-12:  # more than half the channels tie (e.g. ANP masks still at 1): fall back to the std
        mad = s.std().clamp_min(1e-12) if len(s) > 1 else torch.tensor(1.0, dtype=s.dtype)
    return ((s - med) / mad.clamp_min(min_scale)).float()


def _min_scale(name: str) -> float:

    return SCORERS.get(name).min_scale if name in SCORERS.names() else 0.0


def fuse(results: dict[str, ChannelScores], cfg: FusionConfig) -> ChannelScores:
    convs = dict.fromkeys(c for r in results.values() for c in r.layers)
    layers = {}
    for conv in convs:
        parts = [(cfg.weights.get(name, 1.0), r.layers[conv], _min_scale(name))
                 for name, r in results.items() if conv in r.layers]
        total = sum(w for w, _, _ in parts) or 1.0
        score = sum(w * standardise(ls.score, cfg.method, scale) for w, ls, scale in parts) / total
        flag = torch.stack([ls.flag for _, ls, _ in parts]).any(0)
        layers[conv] = LayerScores(score=score, flag=flag, raw=torch.stack([ls.score for _, ls, _ in parts]))
    names = "+".join(results)
    return ChannelScores(method=f"fused:{cfg.method}({names})", layers=layers, thresholds=THRESHOLDS[cfg.method])
