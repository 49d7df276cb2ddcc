"""Choose how much to prune from the defender's clean data alone (never the test set, triggers or target label).

``accuracy_guard`` re-thresholds the scorer's scores at each candidate (least pruning first) and keeps the most
aggressive candidate whose masked model keeps at least ``1 - max_relative_drop`` of the unpruned model's accuracy
on the *tune* split (the held-out split stays untouched for early stopping and the final check). The masked model
is exactly what physical pruning will produce, so no candidate needs pruning or training to be judged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn as nn

from harden.config.prune import SCORERS, PruneStage
from harden.core.artifacts import ChannelScores, ModelArtifact
from harden.evaluate.metrics import accuracy, torch_predictor
from harden.ingest.data.sources import ImageSet
from harden.prune.remove import Prepared, masked_model


@dataclass(frozen=True)
class _Candidate:
    threshold: float
    scores: ChannelScores
    masked: nn.Module
    row: dict[str, float]  # its trace row

    def still_flagged(self, reinverted: Callable[[nn.Module], tuple[float, bool]]) -> bool:
        norm, flagged = reinverted(self.masked)
        self.row.update(reinverted_norm=norm, reinverted_flagged=float(flagged))  # the trace holds floats only
        return flagged


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
        device: torch.device, scan_flagged: bool | None = None,
        inverted: Callable[[nn.Module], float] | None = None,
        reinverted: Callable[[nn.Module], tuple[float, bool]] | None = None) -> Selection:
    """``scan_flagged``: the Neural Cleanse verdict when a scan ran (None: no scan). ``inverted``: a model's
    inverted-trigger ASR on the tune split, when the scan flagged the model (the trigger-free tie-break).
    ``reinverted``: a fresh inversion of the suspected target on a model, (mask norm, still flagged), when the patch
    verdict stands and ``select.reinvert`` is on: the tie-break then also asks that the candidate no longer flags."""
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
    within: list[_Candidate] = []  # within budget, least pruning first
    tie_break = sel.itasr_tolerance is not None and inverted is not None and bool(scan_flagged)
    candidates = sel.thresholds or scores.thresholds or SCORERS.get(scores.method).thresholds
    for t in sorted(candidates, reverse=True):  # least pruning first
        candidate = rethreshold(scores, t)
        masked, *_ = masked_model(prep, candidate, cfg)
        acc = accuracy(torch_predictor(masked, contract, device), tune, label=f"tune accuracy (threshold {t:g})")
        drop = (base - acc) / max(base, 1e-12)
        row = {"threshold": t, "flagged": candidate.num_flagged(), "tune_acc": acc, "relative_drop": drop}
        if drop <= budget and tie_break:
            row["itasr"] = inverted(masked)
        trace.append(row)
        if drop <= budget:
            within.append(_Candidate(t, candidate, masked, row))
    if not within:  # even the mildest candidate costs too much accuracy: prune nothing rather than break the model
        return Selection(rethreshold(scores, math.inf), None, trace)
    chosen = within[-1]  # the most pruning candidate within budget
    if tie_break:
        lowest = min(c.row["itasr"] for c in within)
        defeated = [c for c in within if c.row["itasr"] <= lowest + sel.itasr_tolerance]
        chosen = defeated[0]
        if reinverted is not None:  # the least pruning of those that a fresh inversion no longer flags, else the most
            chosen = next((c for c in defeated if not c.still_flagged(reinverted)), within[-1])
    return Selection(chosen.scores, chosen.threshold, trace)


