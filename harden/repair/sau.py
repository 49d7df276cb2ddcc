"""Shared Adversarial Unlearning (SAU; Wei et al., NeurIPS 2023) as a training hook: a repair that needs no verdict.

A backdoor is an adversarial shortcut the suspect model shares with every model fine-tuned from it. SAU searches, on
each clean batch, for perturbations (L-inf ball of `eps`, raw pixels) on which the model being repaired and the
suspect agree on the same wrong class (shared adversarial examples; a trigger is one), then trains the model to give
them their true labels and to stop agreeing with the suspect there. Written from the paper's description: the inner
search maximises the shared-error probability sum_k!=y p(k|x') q(k|x') (p: the model, q: the frozen suspect) by
signed ascent; the outer term is -log(1 - p(q's wrong class | x')) where the suspect is wrong (optionally with the
cross-entropy on x', plain adversarial training, which on a small clean set costs accuracy). Nothing here reads a
trigger, a target or poisoned data.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from harden.config.repair import SauConfig
from harden.core.artifacts import InputContract
from harden.core.train import TrainHook, frozen_copy
from harden.repair.base import EveryModel, RepairContext, register_repair


@register_repair("sau", "Shared Adversarial Unlearning: unlearn perturbations on which the model and the suspect "
                 "agree on a wrong class (every model; untuned, off in the shipped pipelines)")
class SauRepair(EveryModel):
    config_cls = SauConfig
    label: ClassVar[str] = "shared adversarial unlearning"
    order: ClassVar[float] = 40

    def hook(self, ctx: RepairContext) -> SharedAdversarialUnlearn:
        c = self.cfg
        return SharedAdversarialUnlearn(ctx.suspect, ctx.model.contract, c.weight, c.eps, c.steps, c.adv_weight,
                                        ctx.seed)


def shared_error(p: torch.Tensor, q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image: the probability that both models give the same wrong class."""
    agree = p * q
    return agree.sum(1) - agree.gather(1, y[:, None]).squeeze(1)


class SharedAdversarialUnlearn(TrainHook):
    def __init__(self, suspect: nn.Module, contract: InputContract, weight: float, eps: float, steps: int,
                 adv_weight: float = 0.0, seed: int = 0):
        self.suspect = frozen_copy(suspect)
        self.contract, self.weight, self.eps, self.steps, self.adv_weight = contract, weight, eps, steps, adv_weight
        self.gen = torch.Generator().manual_seed(seed)

    def _probs(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(model(self.contract.normalize(x)), dim=1)

    def search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Shared adversarial examples for the batch: random start in the ball, `steps` signed-ascent steps."""
        step = 2.5 * self.eps / self.steps
        delta = ((torch.rand(x.shape, generator=self.gen) * 2 - 1) * self.eps).to(x.device)
        modes = [m.training for m in model.modules()]
        model.eval()  # the search must not move BN statistics
        for _ in range(self.steps):
            d = delta.clone().requires_grad_(True)
            xa = (x + d).clamp(0, 1)
            objective = -torch.log1p(-shared_error(self._probs(model, xa), self._probs(self.suspect, xa), y)
                                     .clamp(max=1 - 1e-6)).mean()
            (grad,) = torch.autograd.grad(objective, d)  # never into the model's .grad
            delta = (d.detach() + step * grad.sign()).clamp(-self.eps, self.eps)
        for m, mode in zip(model.modules(), modes):  # back to exactly the modes the loop set (frozen BN stays)
            m.training = mode
        return (x + delta).clamp(0, 1).detach()

    def extra_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        self.suspect.to(x.device)
        xa = self.search(model, x, y)
        out = model(self.contract.normalize(xa))
        with torch.no_grad():
            wrong = self._probs(self.suspect, xa).argmax(1)
        fooled = (wrong != y).float()  # where the suspect is fooled, the model must not give the suspect's answer
        p_wrong = F.softmax(out, dim=1).gather(1, wrong[:, None]).squeeze(1)
        # summed over the fooled images, divided by the whole batch: a batch with few of them weighs little
        share = -(torch.log1p(-p_wrong.clamp(max=1 - 1e-6)) * fooled).sum() / len(x)
        loss = self.weight * share
        if self.adv_weight > 0:  # plain adversarial training on the same examples (off by default)
            loss = loss + self.adv_weight * F.cross_entropy(out, y)
        return loss
