"""Adversarial unlearning as training hooks: of a universal perturbation (UniversalUnlearn, after I-BAU, Zeng et al.,
ICLR 2022), for triggers no scan finds; and of the scan's own inverted trigger (TriggerUnlearn), for a flagged model.

Full-image triggers (SIG's sinusoid, WaNet's warp) leave no small patch for Neural Cleanse to find and spread over
too many channels to prune. What they share is that one input-independent change flips most images. UniversalUnlearn
keeps one such perturbation (L2 radius in raw pixels), re-fits it to the current model on every batch by signed ascent
on the clean cross-entropy (warm-started, so it tracks the strongest universal direction), and adds the loss of
the perturbed batch with its true labels. Nothing here reads a trigger, a target label or poisoned data.

GratingUnlearn covers one family of full-image triggers cheaply: periodic signals (a sinusoid or grating of any
direction, frequency, phase and colour). A universal L2 ball big enough to hold such a signal costs the model several
points (below); the grating family has six parameters, so robustness to it costs less (pipelines/grating.yaml: SIG
89.8 -> 1.1 % for 1.2 points), though still about a point on a model with nothing to unlearn (clean model: 1.0).

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
from .detect import ScanResult
from .detect.base import ApplyTrigger
from .detect.grating import sine_waves
from .train import frozen_copy


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


def softened_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at ``temperature``, scaled by t^2 so its gradient does not shrink as t grows."""
    target = F.softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), target, reduction="batchmean")
    return temperature * temperature * kl


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


class GratingUnlearn:
    """Teach the model that an added grating changes nothing, for periodic full-image triggers no scan flags (SIG).

    Every batch draws ``candidates`` random gratings and keeps the ``keep`` that pull a probe batch hardest towards
    one class (the mean rise of any one class's probability over the suspect's clean-image output): a backdoor's
    signature is one class reached from everywhere, while merely noisy gratings spread their damage. Each image gets
    one of the kept gratings, and the model's output on it is distilled towards the suspect's output on the clean
    image. Trigger-free: random patterns, clean images and the suspect's own outputs.

    Scratch runs on the zoo (15 epochs, full test set): random gratings without the pick took SIG from 89.8 to
    12.8 % ASR; picking the gratings that change the output most, to 0.96 % for 2.2 points of accuracy; the one-class
    pick at weight 0.5, to 1.2 % for 0.6. It is not free on a model without such a backdoor: the zoo clean model lost
    1.3 points (0.3 with distillation alone), its natural texture directions (gratings reach "frog" from most images)
    being what gets unlearnt. Unlearning in the first epochs only and letting the rest recover was tried and dropped:
    the clean model then lost 0.4, but SIG came back to anywhere between 1.6 and 11 %.
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
        chosen = bank[self._pull(model, x[probe], F.softmax(teacher_logits[probe], dim=1), bank).topk(self.keep).indices]
        pick = torch.randint(0, self.keep, (len(x),), generator=self.gen).to(x.device)
        stamped = self.contract.normalize((x + chosen[pick]).clamp(0, 1))
        return self.weight * softened_kl(model(stamped), teacher_logits, self.t)
