"""Distillation: match the suspect model's softened outputs on the same clean, augmented images (every model).

2,000 hard labels cannot re-teach what pruning removed; the suspect's clean-input behaviour is the richer signal and
is what we want to keep. The teacher only ever sees clean images, so it cannot hand the trigger response back
(what it saves: docs/methods.md).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn

from harden.config.repair import DistillConfig
from harden.core.artifacts import InputContract
from harden.core.train import TrainHook, frozen_copy
from harden.repair.base import EveryModel, RepairContext, register_repair, softened_kl


@register_repair("distill", "distillation from the suspect model on clean images (every model)")
class DistillRepair(EveryModel):
    config_cls = DistillConfig
    label: ClassVar[str] = "distillation"
    order: ClassVar[float] = 10

    def hook(self, ctx: RepairContext) -> Distill:
        c = self.cfg
        return Distill(ctx.suspect, ctx.model.contract, c.weight, c.temperature, c.mix, ctx.seed)


class Distill(TrainHook):
    """Training hook: the softened KL to a frozen copy of the suspect, on the batch (and its mixup blends)."""

    def __init__(self, teacher: nn.Module, contract: InputContract, weight: float, temperature: float,
                 mix: bool = False, seed: int = 0):
        self.teacher = frozen_copy(teacher)
        self.contract, self.weight, self.t, self.mix = contract, weight, temperature, mix
        self.gen = torch.Generator().manual_seed(seed)

    def _kl(self, student_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(self.contract.normalize(x))
        return softened_kl(student_logits, teacher_logits, self.t)

    def extra_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        self.teacher.to(x.device)
        kl = self._kl(logits, x)
        if self.mix:  # label-free extra inputs: blends of two clean images, matched to the teacher as well
            lam = torch.rand(len(x), 1, 1, 1, generator=self.gen).to(x.device)
            xm = lam * x + (1 - lam) * x[torch.randperm(len(x), generator=self.gen).to(x.device)]
            kl = (kl + self._kl(model(self.contract.normalize(xm)), xm)) / 2
        return self.weight * kl
