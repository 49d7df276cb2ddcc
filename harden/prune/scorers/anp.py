"""ANP: Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021), algorithms.md §2. Needs clean data.

A mask m in [0, 1] per channel is learnt under the worst-case multiplicative perturbation of each channel's scale
(delta) and shift (xi). Channels whose masks shrink are the ones a backdoor leans on. Score = 1 - m, flag = m <= tau.

The perturbation sits on each conv's paired BatchNorm (the Conv<->BN pairing from the traced graph, shared with CLP),
or on the conv's own output where no BN follows it. Writing the site's output as y = s + b, with b its shift (BN beta
or conv bias) and s the rest, the perturbed output is (m + delta) * s + (1 + xi) * b and the clean one m * s + b:
the reference's BN formula, applied through a forward hook so any architecture works without rewriting modules.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harden.config.prune import AnpConfig
from harden.core.artifacts import ChannelScores, InputContract, LayerScores
from harden.core.progress import track
from harden.core.train import augment_batch
from harden.ingest.data.sources import ImageSet
from harden.prune.scorers.base import register_scorer
from harden.prune.surgery import pair_convs_with_bns


class _Site:
    """One perturbation site: the mask and noise of a module's output channels."""

    def __init__(self, module: nn.Module, channels: int):
        self.mask = torch.ones(channels, requires_grad=True)
        self.d_scale = torch.zeros(channels, requires_grad=True)
        self.d_shift = torch.zeros(channels, requires_grad=True)
        bias = getattr(module, "bias", None)
        self.shift = bias.detach() if isinstance(bias, torch.Tensor) else torch.zeros(channels)
        self.perturb = False

    def hook(self, _module: nn.Module, _inputs, out: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (out.dim() - 2)
        b = self.shift.view(view)
        scale = self.mask + self.d_scale if self.perturb else self.mask
        shift = (1 + self.d_shift) if self.perturb else torch.ones_like(self.d_shift)
        return scale.view(view) * (out - b) + shift.view(view) * b


def _sites(model: nn.Module) -> tuple[dict[str, _Site], dict[str, str]]:
    """Perturbation sites keyed by module name, and conv name -> site name."""
    modules = dict(model.named_modules())
    sites: dict[str, _Site] = {}
    conv_site: dict[str, str] = {}
    for conv, pair in pair_convs_with_bns(model).items():
        site = pair.bn or conv
        if site not in sites:
            mod = modules[site]
            sites[site] = _Site(mod, mod.num_features if pair.bn else mod.out_channels)
        conv_site[conv] = site
    return sites, conv_site


@register_scorer("anp", "Adversarial Neuron Pruning: masks learnt under adversarial channel perturbation", AnpConfig)
class AnpScorer:
    needs_data: ClassVar[bool] = True
    thresholds: ClassVar[list[float]] = [0.9, 0.8, 0.7, 0.6, 0.5]  # 1 - mask: flag masks below 0.1 ... 0.5
    # 1 - mask is on an absolute scale: in a layer where ANP found nothing, masks of 0.96-1.0 have a tiny spread that a
    # robust z-score would blow up (docs/methods.md). Fusion divides by at least 0.1.
    min_scale: ClassVar[float] = 0.1

    def __init__(self, cfg: AnpConfig):
        self.cfg = cfg

    def score(self, model: nn.Module, data: ImageSet | None, contract: InputContract) -> ChannelScores:
        cfg = self.cfg
        if data is None:
            raise ValueError("ANP needs clean data")  # the score stage always passes it (needs_data)
        sites, conv_site = _sites(model)
        modules = dict(model.named_modules())
        handles = [modules[name].register_forward_hook(site.hook) for name, site in sites.items()]
        for p in model.parameters():
            p.requires_grad_(False)
        masks = [s.mask for s in sites.values()]
        noise = [t for s in sites.values() for t in (s.d_scale, s.d_shift)]
        opt = torch.optim.SGD(masks, lr=cfg.mask_lr, momentum=0.9)
        rng = np.random.default_rng(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        model.train()  # batch statistics, as the reference; the caller passes a copy
        try:
            for _ in track(range(cfg.iterations), "ANP masks"):
                idx = np.sort(rng.integers(0, len(data), cfg.batch_size))
                x = data.batch01(idx)
                if cfg.augment:
                    x = augment_batch(x, gen)
                x, y = contract.normalize(x), torch.from_numpy(data.y[idx])
                self._step(model, sites, masks, noise, opt, x, y, gen)
        finally:
            for h in handles:
                h.remove()
        layers = {}
        for conv, site in conv_site.items():
            m = sites[site].mask.detach().float()
            layers[conv] = LayerScores(score=1 - m, flag=m <= cfg.tau, raw=m.clone())
        return ChannelScores(method="anp", layers=layers)

    def _step(self, model, sites, masks, noise, opt, x, y, gen: torch.Generator) -> None:
        cfg = self.cfg
        with torch.no_grad():
            for t in noise:
                t.uniform_(-cfg.eps, cfg.eps, generator=gen)
        for s in sites.values():
            s.perturb = True
        for _ in range(cfg.steps):  # inner maximisation: signed ascent on the noise
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), noise)
            with torch.no_grad():
                for t, g in zip(noise, grads):
                    t.add_(cfg.eps / cfg.steps * g.sign())
                    if cfg.project_noise:
                        t.clamp_(-cfg.eps, cfg.eps)
        opt.zero_grad(set_to_none=True)
        loss_adv = F.cross_entropy(model(x), y)
        for s in sites.values():
            s.perturb = False
        loss_nat = F.cross_entropy(model(x), y)
        (cfg.alpha * loss_nat + (1 - cfg.alpha) * loss_adv).backward()
        opt.step()
        with torch.no_grad():
            for m in masks:
                m.clamp_(0, 1)
