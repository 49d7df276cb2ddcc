"""Dormant activations (Fine-Pruning, Liu et al., RAID 2018), algorithms.md §3. Needs clean data.

Mean post-activation value of each channel over the clean tune split, by default at the feature map that feeds the
classifier (BackdoorBench's choice: the pooled features), or at the modules the YAML names. Channels that clean
inputs leave dormant are the ones a trigger can use without hurting clean accuracy.

Score = dormancy percentile within the layer (1.0 = the most dormant channel, 0.0 = the most active), so a threshold
t prunes the most dormant (1 - t) share of the layer; raw = the mean activation.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harden.config.prune import DormantConfig
from harden.core.artifacts import ChannelScores, InputContract, LayerScores
from harden.core.errors import StageError
from harden.core.progress import track
from harden.ingest.data.sources import ImageSet
from harden.prune.scorers.base import register_scorer
from harden.prune.surgery import feature_producers, find_classifier, pair_convs_with_bns


def _producers(model: nn.Module, name: str) -> list[str]:
    module = dict(model.named_modules()).get(name)
    if isinstance(module, nn.Conv2d):
        return [name]
    if isinstance(module, nn.BatchNorm2d):
        return [c for c, p in pair_convs_with_bns(model).items() if p.bn == name]
    known = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    raise StageError("score", f"stages.score.methods.dormant.layers: {name!r} is not a Conv2d or BatchNorm2d of this "
                              f"model; it has: {', '.join(known[:12])}{', ...' if len(known) > 12 else ''}")


@register_scorer("dormant", "Fine-Pruning: channels that clean data leaves dormant at the last feature map", DormantConfig)
class DormantScorer:
    needs_data: ClassVar[bool] = True
    thresholds: ClassVar[list[float]] = [0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5]  # prune the 5% ... 50% most dormant

    def __init__(self, cfg: DormantConfig):
        self.cfg = cfg

    def score(self, model: nn.Module, data: ImageSet | None, contract: InputContract) -> ChannelScores:
        if data is None:
            raise ValueError("the dormant scorer needs clean data")
        if self.cfg.layers:
            targets = {name: _producers(model, name) for name in self.cfg.layers}
        else:  # the classifier's input: the pooled post-activation features (BackdoorBench's hook)
            classifier = find_classifier(model)
            targets = {classifier: feature_producers(model, classifier)}
        means = channel_means(model, data, contract, list(self.cfg.layers), self.cfg.batch_size)
        layers: dict[str, LayerScores] = {}
        for name, convs in targets.items():
            act = means[name]
            # percentile of dormancy: rank 0 = most active; ties keep index order (deterministic)
            order = np.argsort(-act.numpy(), kind="stable")
            pct = torch.empty(len(act))
            pct[torch.from_numpy(order.copy())] = torch.linspace(0, 1, len(act))
            flag = pct > 1 - self.cfg.fraction
            for conv in convs:
                layers[conv] = LayerScores(score=pct.clone(), flag=flag.clone(), raw=act.clone())
        return ChannelScores(method="dormant", layers=layers)


def channel_means(model: nn.Module, data: ImageSet, contract: InputContract, layers: list[str],
                  batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Mean post-ReLU activation per channel over ``data`` (spatial mean, then mean over images), at the output of
    each module in ``layers``; with no layers, at the classifier's input (keyed by the classifier's name).
    Fine-Pruning's dormancy measure, shared with the pruning-aware attack that plants decoys against it."""
    modules = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}

    def add(name: str, act: torch.Tensor) -> None:  # per-channel mean over space, summed over the batch
        act = act.flatten(2).mean(2) if act.dim() > 2 else act
        sums[name] = sums.get(name, 0) + act.sum(0).double().cpu()

    if layers:
        handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: add(n, F.relu(out))) for n in layers]
    else:
        classifier = find_classifier(model)
        handles = [modules[classifier].register_forward_pre_hook(lambda _m, args: add(classifier, args[0]))]
    try:
        with torch.inference_mode():
            for start in track(range(0, len(data), batch_size), "dormant activations"):
                model(contract.normalize(data.batch01(slice(start, start + batch_size))))
    finally:
        for h in handles:
            h.remove()
    return {name: (total / len(data)).float() for name, total in sums.items()}
