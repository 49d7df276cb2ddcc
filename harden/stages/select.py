"""Choose how much to prune from the defender's clean data alone (never the test set, triggers or target label).

``accuracy_guard`` re-thresholds the scorer's scores at each candidate (least pruning first) and keeps the most
aggressive candidate whose masked model keeps at least ``1 - max_relative_drop`` of the unpruned model's accuracy
on the *tune* split (the held-out split stays untouched for early stopping and the final check). The masked model
is exactly what physical pruning will produce, so no candidate needs pruning or training to be judged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..artifacts import ChannelScores, ModelArtifact
from ..config import PruneStage
from ..data import ImageSet
from ..evaluate import accuracy, torch_predictor
from ..scorers import SCORERS
from .prune import Prepared, masked_model


@dataclass(frozen=True)
class Selection:
    scores: ChannelScores  # flags set by the chosen threshold
    threshold: float | None  # None: the scorer's own flags (policy flags), or nothing pruned (guard)
    trace: list[dict[str, float]]  # every candidate tried: threshold, flagged, tune accuracy, relative drop


def rethreshold(scores: ChannelScores, t: float) -> ChannelScores:
    layers = {n: replace(s, flag=s.score > t) for n, s in scores.layers.items()}
    return ChannelScores(scores.method, layers, scores.thresholds)


def top_fraction(scores: ChannelScores, fraction: float) -> Selection:
    """Flag the highest-scoring share of all scored channels (the threshold is that share's score quantile)."""
    everything = torch.cat([s.score.flatten() for s in scores.layers.values()])
    k = max(1, int(round(fraction * everything.numel())))
    t = float(torch.topk(everything, k).values[-1])
    chosen = ChannelScores(scores.method, {n: replace(s, flag=s.score >= t) for n, s in scores.layers.items()},
                           scores.thresholds)
    return Selection(chosen, t, [{"threshold": t, "flagged": chosen.num_flagged(), "fraction": fraction}])


def run(cfg: PruneStage, art: ModelArtifact, scores: ChannelScores, tune: ImageSet, prep: Prepared,
        device: torch.device, scan_flagged: bool | None = None) -> Selection:
    """``scan_flagged``: the Neural Cleanse verdict when a scan ran (None: no scan)."""
    sel = cfg.select
    budget = sel.max_relative_drop
    if scan_flagged is False and sel.unflagged_relative_drop is not None:
        budget = sel.unflagged_relative_drop
    if sel.policy == "flags":
        return Selection(scores, None, [])
    if sel.policy == "top_fraction":
        return top_fraction(scores, sel.fraction)
    contract = art.contract
    base = accuracy(torch_predictor(prep.original, contract, device), tune, label="tune accuracy (unpruned)")
    trace: list[dict[str, float]] = []
    chosen = None
    candidates = sel.thresholds or scores.thresholds or SCORERS.get(scores.method).thresholds
    for t in sorted(candidates, reverse=True):  # least pruning first
        candidate = rethreshold(scores, t)
        masked, *_ = masked_model(prep, candidate, cfg)
        acc = accuracy(torch_predictor(masked, contract, device), tune, label=f"tune accuracy (threshold {t:g})")
        drop = (base - acc) / max(base, 1e-12)
        trace.append({"threshold": t, "flagged": candidate.num_flagged(), "tune_acc": acc, "relative_drop": drop})
        if drop <= budget:
            chosen = (t, candidate)
    if chosen is None:  # even the mildest candidate costs too much accuracy: prune nothing rather than break the model
        return Selection(rethreshold(scores, math.inf), None, trace)
    return Selection(chosen[1], chosen[0], trace)
