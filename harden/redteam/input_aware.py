"""Input-aware dynamic backdoor (Nguyen & Tran, NeurIPS 2020): every image gets its own trigger from a generator
trained together with the classifier. Red-team zoo only; verify stamps a trained one with harden.evaluate.generator.

The generator maps an image to a pattern and a sparse mask, x' = (1 - m(x)) x + m(x) p(x). During training a share
of each batch is stamped with its own trigger and relabelled to the target (backdoor mode), another share with the
trigger generated for a *different* image and its label kept (cross-trigger mode, so a trigger only works on the
image it was made for), and a diversity term keeps different images from getting the same pattern. Here it is a
hook on the one training loop; the generator ships in trigger.npz, so verify measures it like any other trigger.
Simplification, stated: the mask head is trained jointly with a density penalty instead of the paper's separately
pre-trained mask network.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from harden.core.artifacts import InputContract
from harden.core.train import TrainHook
from harden.evaluate.generator import TriggerGenerator, stamp


class InputAwareHook(TrainHook):
    """Training hook: adds the backdoor and cross-trigger batches and the generator's own terms to the loss, and
    steps the generator after every classifier step."""

    def __init__(self, gen: TriggerGenerator, contract: InputContract,
                 relabel: Callable[[torch.Tensor], torch.Tensor], backdoor_ratio: float,
                 cross_ratio: float, device: torch.device, seed: int, lr: float = 1e-3, density: float = 0.05,
                 density_weight: float = 10.0, diversity_weight: float = 1.0):
        self.gen, self.contract = gen.to(device).train(), contract
        self.relabel, self.backdoor_ratio, self.cross_ratio = relabel, backdoor_ratio, cross_ratio
        self.density, self.density_weight, self.diversity_weight = density, density_weight, diversity_weight
        self.opt = torch.optim.Adam(self.gen.parameters(), lr=lr)
        self.rng = torch.Generator().manual_seed(seed)
        self.counts = {"generated_backdoor_images": 0, "generated_cross_images": 0}  # over the whole training

    def extra_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        n = len(x)
        n_bd, n_cross = int(round(self.backdoor_ratio * n)), int(round(self.cross_ratio * n))
        if n_bd + n_cross == 0 or n < 2:
            return logits.new_zeros(())
        perm = torch.randperm(n, generator=self.rng).to(x.device)
        own, other = perm[:n_bd + n_cross], perm.roll(1)[:n_bd + n_cross]  # other[i] != own[i]
        p_own, m_own = self.gen(x[own])
        p_other, m_other = self.gen(x[other])
        bd = stamp(x[own[:n_bd]], p_own[:n_bd], m_own[:n_bd])
        cross = stamp(x[own[n_bd:]], p_other[n_bd:], m_other[n_bd:])
        inputs = torch.cat([bd, cross])
        self.counts["generated_backdoor_images"] += n_bd
        self.counts["generated_cross_images"] += n_cross
        labels = torch.cat([self.relabel(y[own[:n_bd]]), y[own[n_bd:]]])  # the backdoor's label, or the true one
        # the extra images weigh in as if they were part of the batch, the paper's mixture of modes
        ce = F.cross_entropy(model(self.contract.normalize(inputs)), labels) * len(inputs) / n
        d_x = (x[own] - x[other]).flatten(1).norm(dim=1)
        d_p = (p_own - p_other).flatten(1).norm(dim=1)
        diversity = (d_x / (d_p + 1e-3)).mean()
        density = F.relu(torch.cat([m_own, m_other]).mean() - self.density)
        return ce + self.diversity_weight * diversity + self.density_weight * density

    def after_step(self, model: nn.Module) -> None:
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:  # for the training loop's epoch checkpoints
        return {"gen": self.gen.state_dict(), "opt": self.opt.state_dict(), "rng": self.rng.get_state(),
                "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.gen.load_state_dict(state["gen"])
        self.opt.load_state_dict(state["opt"])
        self.rng.set_state(state["rng"])
        self.counts.update(state["counts"])

