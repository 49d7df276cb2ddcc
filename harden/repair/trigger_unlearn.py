"""Trigger unlearning: adversarial unlearning of the scan verdict's inverted trigger, re-fitted every batch."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from harden.config.repair import TriggerUnlearnConfig
from harden.core.artifacts import InputContract
from harden.core.train import TrainHook
from harden.detect.base import ApplyTrigger
from harden.repair.base import OnVerdict, RepairContext, register_repair


@register_repair("trigger_unlearn", "adversarial unlearning of the verdict's inverted trigger (pattern inside its "
                 "mask, warp, ...), re-fitted to the model on every batch (models a detector flagged)")
class TriggerUnlearnRepair(OnVerdict):
    config_cls = TriggerUnlearnConfig
    label: ClassVar[str] = "trigger unlearning"
    order: ClassVar[float] = 70

    def hook(self, ctx: RepairContext) -> TriggerUnlearn:
        """Re-fits the verdict's trigger parameters: the pattern inside the mask (patch), the control points (warp)."""
        params, apply, bounds = ctx.scan.trigger()
        return TriggerUnlearn(ctx.model.contract, params, apply, bounds, ctx.scan.target, self.cfg.weight,
                              self.cfg.steps, self.cfg.step_size)


class TriggerUnlearn(TrainHook):
    """Adversarial unlearning of the scan's inverted trigger, for a model the scan flagged.

    The inverted trigger is a snapshot of the backdoor in the suspect model. Fine-tuning soon makes the model ignore
    that exact snapshot while the real trigger, which the inversion only approximates, still works (docs/methods.md).
    So on every batch the trigger's free parameters (the pattern inside Neural
    Cleanse's mask, or the warp's control points) are re-fitted to the model as it is now (signed descent on the
    cross-entropy to the suspected target, warm-started, kept in their range), and the model learns to classify the
    stamped batch by its true labels. The target comes from the scan, never from the attack.
    """

    def __init__(self, contract: InputContract, params: torch.Tensor, apply: ApplyTrigger, bounds: tuple[float, float],
                 target: int, weight: float, steps: int, step_size: float):
        """``apply(x, params)``: images in [0, 1] stamped; ``step_size``: a fraction of the parameters' range."""
        self.contract, self.apply, self.bounds, self.target = contract, apply, bounds, target
        self.params, self.weight, self.steps = params.float(), weight, steps
        self.step = step_size * (bounds[1] - bounds[0])

    def _stamped(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return self.contract.normalize(self.apply(x, params))

    def extra_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        p = self.params.to(x.device)
        aim = torch.full_like(y, self.target)
        for _ in range(self.steps):
            q = p.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(self._stamped(x, q)), aim), q)
            p = (q.detach() - self.step * grad.sign()).clamp(*self.bounds)
        self.params = p.detach()
        return self.weight * F.cross_entropy(model(self._stamped(x, self.params)), y)
