"""Universal adversarial unlearning (after I-BAU, Zeng et al., ICLR 2022) as a repair: for triggers no scan finds.

Full-image triggers (SIG's sinusoid, WaNet's warp) leave no small patch for Neural Cleanse to find and spread over
too many channels to prune. What they share is that one input-independent change flips most images. UniversalUnlearn
keeps one such perturbation (L2 radius in raw pixels), re-fits it to the current model on every batch by signed ascent
on the clean cross-entropy (warm-started, so it tracks the strongest universal direction), and adds the loss of
the perturbed batch with its true labels. Nothing here reads a trigger, a target label or poisoned data. The radius
trades clean accuracy for reach (docs/methods.md).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from harden.config.repair import UniversalUnlearnConfig
from harden.core.artifacts import InputContract
from harden.core.train import TrainHook
from harden.repair.base import EveryModel, RepairContext, register_repair


@register_repair("universal_unlearn", "adversarial unlearning of a universal perturbation re-fitted every batch "
                 "(every model; full-image triggers no scan finds, at some clean accuracy)")
class UniversalUnlearnRepair(EveryModel):
    config_cls = UniversalUnlearnConfig
    label: ClassVar[str] = "universal adversarial unlearning"
    order: ClassVar[float] = 20

    def hook(self, ctx: RepairContext) -> UniversalUnlearn:
        return UniversalUnlearn(ctx.model.contract, self.cfg.weight, self.cfg.radius, self.cfg.steps)


class UniversalUnlearn(TrainHook):
    def __init__(self, contract: InputContract, weight: float, radius: float, steps: int):
        self.contract, self.weight, self.radius, self.steps = contract, weight, radius, steps
        self.delta: torch.Tensor | None = None

    def _project(self, d: torch.Tensor) -> torch.Tensor:
        return d * (self.radius / d.norm().clamp_min(1e-12)).clamp(max=1.0)

    def _input(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return self.contract.normalize((x + d).clamp(0, 1))

    def extra_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.delta is None or self.delta.shape != x.shape[1:] or self.delta.device != x.device:
            self.delta = torch.zeros(x.shape[1:], device=x.device)
        # sign steps sized so that `steps` of them can cross the ball (per-pixel step * sqrt(n) ~ 2.5 r / steps)
        step = 2.5 * self.radius / self.steps / math.sqrt(x[0].numel())
        for _ in range(self.steps):
            d = self.delta.clone().requires_grad_(True)
            loss = F.cross_entropy(model(self._input(x, d)), y)
            (grad,) = torch.autograd.grad(loss, d)  # never into the model's .grad
            self.delta = self._project(d.detach() + step * grad.sign())
        return self.weight * F.cross_entropy(model(self._input(x, self.delta)), y)
