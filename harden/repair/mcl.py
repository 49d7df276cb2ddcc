"""MCL (model-contrastive learning, algorithms.md §6) as a hook on the one training loop.

For each clean batch x, stamp the scan's inverted trigger of the suspected target: Neural Cleanse's
x~ = (1 - m) x + m p, or the inverted warp. The model's penultimate features of x~ are pulled toward the frozen
suspect's features of the clean x (positive) and pushed from the suspect's features of x~ (negative):
L = softplus((cos(z, z-) - cos(z, z+)) / tau). The loop's clean cross-entropy is the MOON-style CE term the spec
recommends. Features are the classifier's input; when pruning removed some of them, the suspect's are index-selected
to the kept ones.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from harden.config.repair import MclConfig
from harden.core.artifacts import InputContract
from harden.core.errors import StageError
from harden.core.train import TrainHook, frozen_copy
from harden.repair.base import OnVerdict, RepairContext, register_repair


@register_repair("mcl", "MCL: pull the features of inputs stamped with the verdict's inverted trigger toward the "
                 "suspect's clean features and away from its stamped ones (models a detector flagged)")
class MclRepair(OnVerdict):
    config_cls = MclConfig
    label: ClassVar[str] = "MCL"
    order: ClassVar[float] = 60

    def hook(self, ctx: RepairContext) -> ContrastiveHook:
        art = ctx.model
        return ContrastiveHook(ctx.suspect, art.classifier, ctx.scan.stamp, art.contract, self.cfg.weight,
                               self.cfg.temperature, kept_features(art.model, ctx.suspect, art.classifier))


def _features(model: nn.Module, classifier: str, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(classifier).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[0].flatten(1)


def kept_features(student: nn.Module, teacher: nn.Module, classifier: str) -> list[int] | None:
    """Which of the teacher's classifier inputs the (pruned, not yet trained) student kept: pruning copies the
    classifier's weight columns, so each kept column equals exactly one of the teacher's. None: nothing removed."""
    ws = student.get_submodule(classifier).weight.detach().flatten(1).cpu()
    wt = teacher.get_submodule(classifier).weight.detach().flatten(1).cpu()
    if ws.shape == wt.shape:
        return None
    kept = []
    for col in ws.T:
        hits = torch.nonzero((wt.T == col).all(1)).flatten()
        if len(hits) != 1:
            raise StageError("finetune", "cannot match the pruned classifier's inputs to the source model's; "
                                         "turn stages.finetune.contrastive_weight off for this model")
        kept.append(int(hits[0]))
    return kept


class ContrastiveHook(TrainHook):
    """Training hook: the MCL term on inverted-trigger inputs, against a frozen copy of the suspect model."""

    def __init__(self, teacher: nn.Module, classifier: str, stamp: Callable[[torch.Tensor], torch.Tensor],
                 contract: InputContract, weight: float, temperature: float, kept: list[int] | None):
        """``stamp``: images in [0, 1] -> the same images with the inverted trigger (ScanResult.stamp)."""
        self.teacher = frozen_copy(teacher)
        self.classifier, self.contract = classifier, contract
        self.stamp = stamp
        self.weight, self.tau = weight, temperature
        self.kept = None if kept is None else torch.tensor(kept)

    def extra_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        self.teacher.to(x.device)
        stamped = self.stamp(x)
        z = _features(model, self.classifier, self.contract.normalize(stamped))
        with torch.no_grad():
            pos = _features(self.teacher, self.classifier, self.contract.normalize(x))
            neg = _features(self.teacher, self.classifier, self.contract.normalize(stamped))
            if self.kept is not None:
                pos, neg = pos[:, self.kept.to(x.device)], neg[:, self.kept.to(x.device)]
        s_pos, s_neg = F.cosine_similarity(z, pos, dim=1), F.cosine_similarity(z, neg, dim=1)
        return self.weight * F.softplus((s_neg - s_pos) / self.tau).mean()
