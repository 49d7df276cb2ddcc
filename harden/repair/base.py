"""Repair protocol and registry. A repair is a training hook of the one fine-tune loop (harden/core/train.py),
configured under `stages.finetune.repairs.<name>`, that says on which models it acts: every model (distillation,
FST, SAU, universal unlearning), or a model whose scan verdict gives it a trigger to work on (MCL, trigger unlearning).

A repair may also *claim* a verdict (grating unlearning on a grating verdict): the repairs that act on the verdict's
fixed inverted trigger then stand aside, since the claiming repair searches that trigger's whole family instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from harden.config.repair import REPAIRS, RepairConfig
from harden.core.artifacts import ModelArtifact
from harden.core.train import TrainHook
from harden.detect import ScanResult


@dataclass(frozen=True)
class RepairContext:
    model: ModelArtifact  # the model about to be fine-tuned (pruned, maybe polarized)
    suspect: nn.Module  # the model as received: teacher of distillation, reference of FST and SAU
    scan: ScanResult | None  # the scan's findings; None when no scan ran
    seed: int


class Repair(Protocol):
    config_cls: ClassVar[type[RepairConfig]]
    label: ClassVar[str]  # how the summary and the registry tags name it
    order: ClassVar[float]  # position among the hooks: the loss terms add up in this order
    uses_verdict: ClassVar[bool]  # acts on the verdict's inverted trigger (and steps aside when another claims it)

    def __init__(self, cfg: RepairConfig) -> None: ...

    def acts(self, scan: ScanResult | None) -> bool: ...  # whether it acts on this model, given the scan

    def claims(self, scan: ScanResult | None) -> bool: ...  # takes the verdict over from the trigger-based repairs

    def hook(self, ctx: RepairContext) -> TrainHook: ...


def register_repair(name: str, description: str) -> Callable[[type], type]:
    return REPAIRS.register(name, description)


class EveryModel:
    """Mixin: acts on every model, claims nothing."""

    uses_verdict: ClassVar[bool] = False

    def __init__(self, cfg: RepairConfig):
        self.cfg = cfg

    def acts(self, scan: ScanResult | None) -> bool:
        return True

    def claims(self, scan: ScanResult | None) -> bool:
        return False


class OnVerdict(EveryModel):
    """Mixin: acts when the scan flagged the model, on the verdict's inverted trigger."""

    uses_verdict: ClassVar[bool] = True

    def acts(self, scan: ScanResult | None) -> bool:
        return scan is not None and scan.flagged


def active(repairs: dict[str, Repair], scan: ScanResult | None) -> dict[str, Repair]:
    """The repairs that act on this model, by name, in hook order: a claimed verdict sets the trigger-based ones
    aside."""
    claimed = any(r.claims(scan) for r in repairs.values())
    acting = [(n, r) for n, r in repairs.items() if r.acts(scan) and not (r.uses_verdict and claimed)]
    return dict(sorted(acting, key=lambda item: item[1].order))


def softened_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at ``temperature``, scaled by t^2 so its gradient does not shrink as t grows."""
    target = F.softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), target, reduction="batchmean")
    return temperature * temperature * kl
