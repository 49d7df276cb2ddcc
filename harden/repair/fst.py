"""Feature Shift Tuning (FST; Min et al., NeurIPS 2023) as a training hook: a repair that needs no scan verdict.

Plain fine-tuning on a little clean data barely moves the features a backdoor lives in: the classifier head it starts
from is already perfect on clean data, so the gradients stay small. FST re-initialises the head and penalises its
alignment with the suspect's head, <w, w_suspect>, keeping ||w|| at the suspect's norm after every step, so the
features must shift for the new head to classify; the backdoor's feature direction loses its tie to the target.
Nothing here reads a trigger, a target or poisoned data. Cost: one extra dot product a step.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn

from harden.config.repair import FstConfig
from harden.core.train import TrainHook
from harden.repair.base import EveryModel, RepairContext, register_repair


@register_repair("fst", "Feature Shift Tuning: re-initialise the classifier head and penalise its alignment with "
                 "the suspect's (every model; untuned, off in the shipped pipelines)")
class FstRepair(EveryModel):
    config_cls = FstConfig
    label: ClassVar[str] = "feature shift tuning"
    order: ClassVar[float] = 30

    def hook(self, ctx: RepairContext) -> FeatureShift:
        return FeatureShift(ctx.model.classifier, self.cfg.weight, ctx.seed)


class FeatureShift(TrainHook):
    def __init__(self, classifier: str, weight: float, seed: int = 0):
        self.classifier, self.weight, self.seed = classifier, weight, seed
        self.original: torch.Tensor | None = None  # the suspect's head weight, kept to penalise alignment with it
        self.norm: torch.Tensor | None = None

    def _head(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.classifier)

    @torch.no_grad()
    def start(self, model: nn.Module) -> None:
        """Before the first step, in place (the optimizer already holds these parameters): a fresh seeded head."""
        head = self._head(model)
        self.original = head.weight.detach().clone()
        self.norm = self.original.norm()
        gen = torch.Generator().manual_seed(self.seed)
        fresh = torch.empty_like(head.weight, device="cpu")
        bound = 1 / fresh[0].numel() ** 0.5  # nn.Linear's default uniform range
        fresh.uniform_(-bound, bound, generator=gen)
        head.weight.copy_(fresh.to(head.weight.device) * self.norm / fresh.norm())
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()

    def extra_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        w = self._head(model).weight
        return self.weight * (w * self.original.to(w.device)).sum()

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        w = self._head(model).weight
        w.mul_(self.norm.to(w.device) / w.norm().clamp_min(1e-12))
