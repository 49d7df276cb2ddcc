"""Neural Polarizer (NPD, algorithms.md §4): one learned 1x1 conv + BN on the full feature path, trained on clean
data with a targeted adversarial perturbation standing in for the unknown trigger; the backbone stays frozen.
After training it is folded into a single 1x1 conv with a bias, so the export adds no new op type.

Deviations from the reference, on purpose: the warm-up (5 epochs at lr 1e-4, to calibrate the polarizer's BN
statistics) is done as one exact pass of cumulative statistics, since SGD at that lr barely moves the weights, and
the BN affine is then set so the layer is still the identity (see ``calibrate``); the
learning rate follows the training loop's cosine schedule; the last epoch is kept, as the reference does (held-out
clean accuracy would favour the least filtering epoch).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harden.config.repair import PolarizeConfig
from harden.core.artifacts import InputContract, ModelArtifact
from harden.core.errors import StageError
from harden.core.train import TrainHook, TrainSettings, train
from harden.ingest.data.sources import ImageSet
from harden.prune.surgery import feature_producers


@dataclass(frozen=True)
class PolarizeResult:
    at: str
    channels: int
    heldout_acc_before: float
    heldout_acc_calibrated: float
    heldout_acc_after: float
    epochs_run: int
    history: list[dict[str, float]]
    diverged: bool  # held-out accuracy fell too far: the calibrated identity polarizer was kept instead


def default_site(model: nn.Module, classifier: str) -> str:
    """The smallest module that holds every conv feeding the classifier (a residual stage, or the last conv)."""
    producers = [p.split(".") for p in feature_producers(model, classifier)]
    common = []
    for parts in zip(*producers):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    if common:
        return ".".join(common)
    order = [n for n, _ in model.named_modules()]  # no shared parent: the input of the first producer
    return min((".".join(p) for p in producers), key=order.index)


def _polarizer(channels: int) -> nn.Sequential:
    conv = nn.Conv2d(channels, channels, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels)[:, :, None, None])
    return nn.Sequential(OrderedDict(conv=conv, bn=nn.BatchNorm2d(channels)))


def _polarized_forward(self, x, *args, **kwargs):
    x = self.polarizer(x)
    if isinstance(self, nn.Sequential):  # a Sequential would also run the polarizer as its last child
        for name, module in self._modules.items():
            if name != "polarizer":
                x = module(x)
        return x
    return type(self).__mro__[1].forward(self, x, *args, **kwargs)


def insert(model: nn.Module, at: str, example: torch.Tensor) -> int:
    """Insert an identity polarizer on the input of module ``at`` (in place; parameter names of the model stay the
    same, the polarizer's are ``<at>.polarizer.*``). Returns its channel count."""
    try:
        target = model.get_submodule(at)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n and n.count(".") <= 1]
        raise StageError("polarize", f"stages.polarize.at: no module {at!r} in the model "
                                     f"(some: {', '.join(names[:12])})") from None
    seen: list[torch.Size] = []
    handle = target.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape))
    with torch.no_grad():
        model.eval()(example)
    handle.remove()
    if not seen or len(seen[0]) != 4:
        raise StageError("polarize", f"stages.polarize.at: {at!r} does not take a 4-D feature map")
    channels = int(seen[0][1])
    base = type(target)
    target.__class__ = type(f"Polarized{base.__name__}", (base,), {"forward": _polarized_forward})
    target.add_module("polarizer", _polarizer(channels).to(example.device).eval())
    return channels


@torch.no_grad()
def calibrate(model: nn.Module, at: str, data: ImageSet, contract: InputContract, device: torch.device,
              batch_size: int = 256) -> None:
    """Set the polarizer BN's statistics to the exact mean/variance of its input over ``data``, and its affine to
    their inverse, so the layer stays the identity. (Calibrating alone, as the reference's warm-up does, normalises
    the features the next layer expects, which costs accuracy: docs/methods.md.)"""
    bn = model.get_submodule(at).polarizer.bn
    bn.reset_running_stats()
    bn.momentum = None  # cumulative average
    model.eval()
    bn.train()
    for start in range(0, len(data), batch_size):
        model(contract.normalize(data.batch01(slice(start, start + batch_size), device)))
    bn.eval()
    bn.momentum = 0.1
    bn.weight.copy_(torch.sqrt(bn.running_var + bn.eps))  # still the identity, now with meaningful statistics
    bn.bias.copy_(bn.running_mean)


class PolarizerLoss(TrainHook):
    """Training hook: the NPD outer loss terms L2..L4 on a targeted perturbation found with the polarizer fixed."""

    def __init__(self, cfg: PolarizeConfig, contract: InputContract):
        self.cfg, self.contract = cfg, contract

    def _perturb(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        delta = torch.zeros_like(x, requires_grad=True)
        for _ in range(cfg.steps):
            logits = model(self.contract.normalize((x + delta).clamp(0, 1)))
            if (logits.argmax(1) == target).float().mean() > cfg.early_stop:
                break
            loss = F.cross_entropy(logits, target, reduction="none").clamp(max=80).mean()
            (grad,) = torch.autograd.grad(loss, delta)  # never into the polarizer's .grad
            with torch.no_grad():
                delta -= cfg.step_size * grad.sign()
                norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
                delta *= (cfg.radius / norm).clamp(max=1.0)[:, None, None, None]
        return (x + delta.detach()).clamp(0, 1)

    def extra_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        w = self.cfg.loss_weights
        with torch.no_grad():
            masked = logits.detach().clone()
            y_hat = masked.argmax(1)
            masked[torch.arange(len(y)), y] = -10.0  # the reference's way of excluding the true class
            target = masked.argmax(1)
        x_adv = self._perturb(model, x, target)
        adv_logits = model(self.contract.normalize(x_adv))
        p = F.softmax(adv_logits, 1)
        other = p.detach().clone()
        other[torch.arange(len(y)), y] = -1.0
        wrong = other.argmax(1)
        rows = torch.arange(len(y))
        l2 = F.cross_entropy(adv_logits, y_hat)
        l3 = -torch.log(1.0001 - p[rows, wrong]).mean()
        l4 = -torch.log(1.0001 - p[rows, target]).mean()
        return (w[0] - 1.0) * F.cross_entropy(logits, y) + w[1] * l2 + w[2] * l3 + w[3] * l4


def fold(model: nn.Module, at: str) -> None:
    """Replace the polarizer's conv + BN by one 1x1 conv with a bias (exact)."""
    site = model.get_submodule(at)
    conv, bn = site.polarizer.conv, site.polarizer.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=True).to(conv.weight.device)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale[:, None, None, None])
        folded.bias.copy_(bn.bias - bn.running_mean * scale)
    site.polarizer = folded


def run(cfg: PolarizeConfig, art: ModelArtifact, tune: ImageSet, heldout: ImageSet, device: torch.device,
        seed: int, evaluate) -> tuple[ModelArtifact, PolarizeResult]:
    """``evaluate(model) -> held-out accuracy``. Returns a copy of the model with the folded polarizer."""
    model = copy.deepcopy(art.model).to(device).eval()
    at = cfg.at or default_site(model, art.classifier)
    example = torch.zeros(1, *art.contract.input_size, device=device)
    before = evaluate(model)
    channels = insert(model, at, example)
    calibrate(model, at, tune, art.contract, device)
    calibrated = evaluate(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(f"{at}.polarizer."))
    settings = TrainSettings(epochs=cfg.epochs, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                             batch_size=cfg.batch_size, patience=cfg.epochs, augment=False, max_steps=cfg.max_steps,
                             seed=seed, freeze_bn=True, clip_grad_norm=None, keep_last=True)
    outcome = train(model, tune, art.contract, settings, evaluate, device, [PolarizerLoss(cfg, art.contract)],
                    label="polarizer")
    trained = outcome.model
    for p in trained.parameters():
        p.requires_grad_(True)
    fold(trained, at)
    trained.eval()
    out = ModelArtifact(**{**art.__dict__, "model": trained})
    return out, PolarizeResult(at, channels, before, calibrated, evaluate(trained), outcome.epochs_run,
                               outcome.history, outcome.diverged)
