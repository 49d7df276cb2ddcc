"""Grating unlearning: teach the model that an added grating changes nothing (periodic full-image triggers).

GratingUnlearn covers one family of full-image triggers cheaply: periodic signals (a sinusoid or grating of any
direction, frequency, phase and colour). A universal L2 ball big enough to hold such a signal costs the model several
points (universal_unlearn.py); the grating family has six parameters, so robustness to it costs less, though still
about a point on a model with nothing to unlearn (docs/methods.md).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from harden.config.repair import GratingUnlearnConfig
from harden.core.artifacts import InputContract
from harden.core.train import TrainHook, frozen_copy
from harden.detect import ScanResult
from harden.detect.grating import sine_waves
from harden.repair.base import EveryModel, RepairContext, register_repair, softened_kl


@register_repair("grating_unlearn", "unlearning of random gratings that pull one class hardest (every model, or "
                 "in place of the trigger-based repairs on a grating verdict)")
class GratingUnlearnRepair(EveryModel):
    config_cls = GratingUnlearnConfig
    label: ClassVar[str] = "grating unlearning"
    order: ClassVar[float] = 50

    def acts(self, scan: ScanResult | None) -> bool:
        return self.cfg.when == "always" or self.claims(scan)

    def claims(self, scan: ScanResult | None) -> bool:
        """A grating verdict's peak grating is one member of the family the backdoor answers; this hook searches
        that family again on every batch, so the repairs on the fixed peak grating step aside."""
        return scan is not None and scan.kind == "grating"

    def hook(self, ctx: RepairContext) -> GratingUnlearn:
        c = self.cfg
        return GratingUnlearn(ctx.suspect, ctx.model.contract, c.weight, c.amplitude, c.max_freq, c.candidates,
                              c.keep, seed=ctx.seed)


def random_gratings(n: int, size: tuple[int, int], amplitude: float, max_freq: float,
                    gen: torch.Generator) -> torch.Tensor:
    """``n`` additive gratings (n, 3, h, w) in raw pixels: a sine of uniform direction, frequency 1..max_freq cycles
    per image width, phase and colour (half of them grey), peak amplitude drawn in [0, amplitude] (sqrt-uniform,
    so strong ones dominate)."""
    theta = torch.rand(n, generator=gen) * math.pi
    freq = 1 + torch.rand(n, generator=gen) * (max_freq - 1)
    phase = torch.rand(n, generator=gen) * 2 * math.pi
    colour = torch.rand(n, 3, generator=gen) * 2 - 1
    colour = torch.where(torch.rand(n, 1, generator=gen) < 0.5, torch.ones_like(colour), colour)
    colour = colour / colour.abs().amax(1, keepdim=True).clamp_min(1e-6)
    peak = amplitude * torch.rand(n, generator=gen).sqrt()
    return (peak[:, None] * colour)[:, :, None, None] * sine_waves(theta, freq, phase, size)[:, None]


class GratingUnlearn(TrainHook):
    """Teach the model that an added grating changes nothing, for periodic full-image triggers no scan flags (SIG).

    Every batch draws ``candidates`` random gratings and keeps the ``keep`` that pull a probe batch hardest towards
    one class (the mean rise of any one class's probability over the suspect's clean-image output): a backdoor's
    signature is one class reached from everywhere, while merely noisy gratings spread their damage. Each image gets
    one of the kept gratings, and the model's output on it is distilled towards the suspect's output on the clean
    image. Trigger-free: random patterns, clean images and the suspect's own outputs. On a model without such a
    backdoor its natural texture directions are what gets unlearnt; the variants tried: docs/methods.md.
    """

    def __init__(self, teacher: nn.Module, contract: InputContract, weight: float, amplitude: float, max_freq: float,
                 candidates: int, keep: int, temperature: float = 2.0, probe: int = 32, seed: int = 0):
        self.teacher = frozen_copy(teacher)
        self.contract, self.weight, self.amplitude, self.max_freq = contract, weight, amplitude, max_freq
        self.candidates, self.keep, self.t, self.probe = candidates, min(keep, candidates), temperature, probe
        self.gen = torch.Generator().manual_seed(seed)

    def _pull(self, model: nn.Module, x: torch.Tensor, clean_prob: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """Per grating: the largest rise of one class's mean probability over the probe batch."""
        with torch.no_grad():
            stamped = (x[None] + bank[:, None]).clamp(0, 1).flatten(0, 1)  # every grating on every probe image
            prob = F.softmax(model(self.contract.normalize(stamped)), dim=1).view(len(bank), len(x), -1)
        return (prob - clean_prob[None]).mean(1).amax(1)

    def extra_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        self.teacher.to(x.device)
        with torch.no_grad():
            teacher_logits = self.teacher(self.contract.normalize(x))
        bank = random_gratings(self.candidates, tuple(x.shape[-2:]), self.amplitude, self.max_freq,
                               self.gen).to(x.device)
        probe = slice(0, self.probe)
        pull = self._pull(model, x[probe], F.softmax(teacher_logits[probe], dim=1), bank)
        chosen = bank[pull.topk(self.keep).indices]
        pick = torch.randint(0, self.keep, (len(x),), generator=self.gen).to(x.device)
        stamped = self.contract.normalize((x + chosen[pick]).clamp(0, 1))
        return self.weight * softened_kl(model(stamped), teacher_logits, self.t)
