"""Adversarial unlearning as training hooks: of a universal perturbation (UniversalUnlearn, after I-BAU, Zeng et al.,
ICLR 2022), for triggers no scan finds; and of the scan's own inverted trigger (TriggerUnlearn), for a flagged model.

Full-image triggers (SIG's sinusoid, WaNet's warp) leave no small patch for Neural Cleanse to find and spread over
too many channels to prune. What they share is that one input-independent change flips most images. UniversalUnlearn
keeps one such perturbation (L2 radius in raw pixels), re-fits it to the current model on every batch by signed ascent
on the clean cross-entropy (warm-started, so it tracks the strongest universal direction), and adds the loss of
the perturbed batch with its true labels. Nothing here reads a trigger, a target label or poisoned data.

Zoo benchmark (pipelines/unlearn.yaml, radius 2, full test set): WaNet ASR 99.3 -> 2.2 % for 2.9 points of
accuracy, SIG 89.8 -> 43.2 % for 2.0, the clean model loses 2.6. A scratch run at radius 3 took SIG to 4.8 % for
6.3 points: the radius trades accuracy for reach, and a weak model (83 %) pays a lot for robustness.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .artifacts import InputContract
from .scan import ApplyTrigger, ScanResult


class UniversalUnlearn:
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


class TriggerUnlearn:
    """Adversarial unlearning of the scan's inverted trigger, for a model the scan flagged.

    The inverted trigger is a snapshot of the backdoor in the suspect model. Fine-tuning soon makes the model ignore
    that exact snapshot while the real trigger, which the inversion only approximates, still works (zoo BadNets after
    MCL on the fixed snapshot: ASR 4.4 %). So on every batch the trigger's free parameters (the pattern inside Neural
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


def trigger_unlearn(scan: ScanResult, contract: InputContract, weight: float, steps: int,
                    step_size: float) -> TriggerUnlearn:
    """The hook for the scan's verdict: re-fit the pattern inside the mask (patch) or the control points (warp)."""
    assert scan.target is not None, "trigger unlearning needs a flagged scan"
    params, apply, bounds = scan.trigger()
    return TriggerUnlearn(contract, params, apply, bounds, scan.target, weight, steps, step_size)
